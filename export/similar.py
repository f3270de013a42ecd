"""Copies folded and "more like this", both read from the neighbour lists (`imgsearch neighbours`).

Duplicates: images with the same content hash, or whose cosine in the neighbour lists reaches
`near_threshold`, form one group (transitively: a union-find over those pairs). `rank` shows a
group once in a tag's ranking, at its best-ranked copy, with the other copies listed on the item
(`fold_copies`), so the site shows "3 copies" instead of the same picture three times in a row.
The groups are written to OUT/duplicates/ (schema.DUPLICATES_SCHEMA) for rank's workers.

More like this: for every published image, its nearest published neighbours (copies left out,
they are listed as copies), cut into files by a hash of the image id (export/hashed_shards.py):
the viewer fetches one small file per image it opens. Each image's record carries its own tag,
source and copies, so a neighbour opened in the viewer needs nothing else.

No Beam and no torch here: pyarrow and numpy on rank's driver.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from export import hashed_shards
from model import schema, storage

log = logging.getLogger(__name__)

DEFAULT_NEAR_THRESHOLD = schema.COPY_THRESHOLD  # cosine in the neighbour lists' space: a re-encoded or resized copy
SIMILAR_PER_IMAGE = 12
SIMILAR_TARGET_BYTES = 3 * 1024
SIMILAR_BUDGET_BYTES = 10 * 1024
SIMILAR_KIND = "similar"
DUPLICATES_FILE = f"{schema.DUPLICATES_PREFIX}-00000-of-00001{schema.PARQUET_SUFFIX}"


# ---------------------------------------------------------------------------
# Reading the shared lists
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Neighbours:
    """Every image's neighbour ids and cosines, most similar first."""

    ids: dict[str, list[str]]
    sims: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)


def neighbours_exist(out: str) -> bool:
    return bool(storage.list_files(schema.out_path(out, schema.NEIGHBOURS_DIR), schema.PARQUET_SUFFIX))


def _shards(out: str, directory: str, prefix: str) -> list[str]:
    return [
        f
        for f in storage.list_files(schema.out_path(out, directory), schema.PARQUET_SUFFIX)
        if f.rsplit("/", 1)[-1].startswith(prefix + "-")
    ]


def read_neighbours(out: str) -> Neighbours:
    ids: dict[str, list[str]] = {}
    sims: dict[str, np.ndarray] = {}
    for path in _shards(out, schema.NEIGHBOURS_DIR, schema.NEIGHBOURS_PREFIX):
        table = storage.open_parquet(path).read()
        for image_id, nids, nsims in zip(
            table[schema.IMAGE_ID].to_pylist(), table[schema.NEIGHBOUR_IDS].to_pylist(), table[schema.SIMILARITIES].to_pylist()
        ):
            ids[image_id] = nids
            sims[image_id] = np.asarray(nsims, dtype=np.float32)
    return Neighbours(ids, sims)


def read_content_hashes(out: str) -> dict[str, str]:
    hashes: dict[str, str] = {}
    for path in _shards(out, schema.IMAGE_FEATURES_DIR, schema.IMAGE_FEATURES_PREFIX):
        table = storage.open_parquet(path).read(columns=[schema.IMAGE_ID, schema.CONTENT_HASH])
        hashes.update(zip(table[schema.IMAGE_ID].to_pylist(), table[schema.CONTENT_HASH].to_pylist()))
    return hashes


# ---------------------------------------------------------------------------
# Duplicate groups
# ---------------------------------------------------------------------------
class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(x, x) != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the smaller id leads: groups come out the same whatever the order of the pairs
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra


@dataclasses.dataclass
class Duplicates:
    """image id -> its group's representative (only images that have a copy)."""

    group_of: dict[str, str]
    facts: dict[str, Any]

    def members(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for image_id, rep in sorted(self.group_of.items()):
            groups.setdefault(rep, []).append(image_id)
        return groups


def duplicate_groups(
    neighbours: Neighbours, content_hashes: dict[str, str], near_threshold: float = DEFAULT_NEAR_THRESHOLD
) -> Duplicates:
    """Group exact copies (same content hash) and near-duplicates (cosine >= near_threshold)."""
    uf = _UnionFind()
    by_hash: dict[str, str] = {}
    exact_pairs = 0
    for image_id, digest in sorted(content_hashes.items()):
        if not digest:
            continue
        if digest in by_hash:
            uf.union(by_hash[digest], image_id)
            exact_pairs += 1
        else:
            by_hash[digest] = image_id
    near_pairs = 0
    for image_id, nids in neighbours.ids.items():
        sims = neighbours.sims[image_id]
        for nid, sim in zip(nids, sims):
            if sim < near_threshold:
                break  # most similar first
            if content_hashes.get(nid) is not None and content_hashes.get(nid) == content_hashes.get(image_id):
                continue
            if uf.find(image_id) != uf.find(nid):
                near_pairs += 1
            uf.union(image_id, nid)
    group_of = {x: uf.find(x) for x in list(uf.parent)}
    group_of.update({rep: rep for rep in set(group_of.values())})
    groups = len(set(group_of.values()))
    facts = {
        "near_threshold": near_threshold,
        "exact_copies": exact_pairs,
        "near_duplicate_links": near_pairs,
        "groups": groups,
        "images_in_groups": len(group_of),
        "images_folded": len(group_of) - groups,
    }
    return Duplicates(group_of, facts)


def write_duplicates(out: str, duplicates: Duplicates) -> str:
    """OUT/duplicates/duplicates-00000-of-00001.parquet: (image_id, duplicate_of); replaced each run."""
    path = schema.out_path(out, schema.DUPLICATES_DIR, DUPLICATES_FILE)
    rows = sorted(duplicates.group_of.items())
    table = pa.table(
        {schema.IMAGE_ID: [r[0] for r in rows], schema.DUPLICATE_OF: [r[1] for r in rows]}, schema=schema.DUPLICATES_SCHEMA
    )
    fs, local = storage.fs_and_path(path)
    fs.makedirs(local.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(local, "wb") as f:
        pq.write_table(table, f)
    return path


def read_duplicates(out: str) -> dict[str, str] | None:
    """The groups fold_duplicates wrote this run (image id -> representative), or None."""
    path = schema.out_path(out, schema.DUPLICATES_DIR, DUPLICATES_FILE)
    if not storage.exists(path):
        return None
    table = storage.open_parquet(path).read()
    return dict(zip(table[schema.IMAGE_ID].to_pylist(), table[schema.DUPLICATE_OF].to_pylist()))


def fold_copies(image_ids: Sequence[str], group_of: dict[str, str]) -> tuple[list[int], dict[int, list[int]]]:
    """Positions kept from a ranked list of image ids (the first of each group) and, for each
    kept position, the positions of its copies further down."""
    kept: list[int] = []
    first: dict[str, int] = {}
    copies: dict[int, list[int]] = {}
    for pos, image_id in enumerate(image_ids):
        group = group_of.get(image_id)
        if group is None:
            kept.append(pos)
            continue
        if group in first:
            copies.setdefault(first[group], []).append(pos)
            continue
        first[group] = pos
        kept.append(pos)
    return kept, copies


# ---------------------------------------------------------------------------
# More like this
# ---------------------------------------------------------------------------
def similar_entries(
    neighbours: Neighbours,
    published: dict[str, tuple[str, str]],
    group_of: dict[str, str],
    per_image: int = SIMILAR_PER_IMAGE,
) -> dict[str, dict[str, Any]]:
    """image id -> {"tag", "uri", "similar": [[id, tag, cosine]], "copies": [[id, uri]]} for every
    published image (published: image id -> (its tag, its public uri)); neighbours that are not
    published or are copies of the image are left out."""
    members: dict[str, list[str]] = {}
    for image_id, rep in group_of.items():
        members.setdefault(rep, []).append(image_id)
    entries: dict[str, dict[str, Any]] = {}
    for image_id, (tag, uri) in published.items():
        group = group_of.get(image_id)
        similar = []
        for nid, sim in zip(neighbours.ids.get(image_id, ()), neighbours.sims.get(image_id, ())):
            if nid not in published or (group is not None and group_of.get(nid) == group):
                continue
            similar.append([nid, published[nid][0], round(float(sim), 3)])
            if len(similar) >= per_image:
                break
        entry: dict[str, Any] = {"tag": tag, "uri": uri, "similar": similar}
        if group is not None:
            entry["copies"] = [[c, published[c][1]] for c in sorted(members[group]) if c != image_id and c in published]
        entries[image_id] = entry
    return entries


def published_images(rankings: pa.Table) -> dict[str, tuple[str, str]]:
    """image id -> (the tag it ranks best under, its public uri), from the rankings table."""
    table = rankings.select([schema.TAG, schema.RANK, schema.IMAGE_ID, schema.PUBLIC_URI]).sort_by(
        [(schema.RANK, "ascending"), (schema.TAG, "ascending")]
    )
    out: dict[str, tuple[str, str]] = {}
    for tag, image_id, uri in zip(
        table[schema.TAG].to_pylist(), table[schema.IMAGE_ID].to_pylist(), table[schema.PUBLIC_URI].to_pylist()
    ):
        out.setdefault(image_id, (tag, uri))
    return out


def publish_similar(
    write_bytes: Callable[[str, bytes], None],
    data_root: str,
    entries: dict[str, dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the more-like-this shards; returns (the manifest's "similar" object, report facts)."""
    shards, bodies = hashed_shards.cut(
        entries, field="images", target_bytes=SIMILAR_TARGET_BYTES, budget_bytes=SIMILAR_BUDGET_BYTES
    )
    sizes = hashed_shards.write(write_bytes, data_root, SIMILAR_KIND, bodies)
    return {"shards": shards}, {"images": len(entries), **hashed_shards.size_facts(sizes)}


def copies_in_pages(items: Iterable[dict[str, Any]]) -> int:
    return sum(len(it.get("copies", ())) for it in items)
