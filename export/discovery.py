"""What rank publishes beyond the rankings, so a person finds more than the exact tag they typed:
copies folded in the rankings, the home page's data, related words, more like this and the
"probably" strips. Two calls from rank's driver, both before the pointer switch, both writing
only under the version being published:

- `fold_duplicates` right after the ranking job: groups copies (export/similar.py), rewrites the
  rankings and pages of the tags that hold two copies of one picture so each picture appears
  once, at its best rank, with its copies listed on the item;
- `publish_extras` after the health gates: writes home.json, the related-words, more-like-this
  and "probably" shards, and returns what the manifest must say about them (`extra`) and what
  the report should (`facts`).

Every part that lacks its input (no neighbour lists, no word vectors) is skipped and says why.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from export import home, probably, related_words, similar, site_data
from model import metrics, schema, storage
from model.tags import tag_key

log = logging.getLogger(__name__)


def _writer(site_root: str):
    def write(relpath: str, body: bytes) -> None:
        storage.write_bytes(schema.out_path(site_root, relpath), body, content_type="application/json")

    return write


def _reader(site_root: str):
    return lambda relpath: storage.read_bytes(schema.out_path(site_root, relpath))


# ---------------------------------------------------------------------------
# Copies folded
# ---------------------------------------------------------------------------
def _rankings_files(rankings_dir: str) -> list[str]:
    return [
        f
        for f in storage.list_files(rankings_dir, schema.PARQUET_SUFFIX)
        if f.rsplit("/", 1)[-1].startswith(schema.RANKINGS_PREFIX + "-")
    ]


def _fold_tag_pages(
    site_root: str, data_root: str, tag: str, rows: int, kept: list[int], copies: dict[int, list[int]], page_size: int
) -> None:
    """Rewrite one tag's ranking pages with its copies folded into the kept items."""
    read, write = _reader(site_root), _writer(site_root)
    key = tag_key(tag)
    old_pages = site_data.page_count(rows, page_size)
    items: list[dict[str, Any]] = []
    ranked_by = site_data.RANKED_BY_MATCHER
    for page in range(old_pages):
        body = json.loads(read(site_data.ranking_page_path(key, page, data_root)))
        ranked_by = body.get("ranked_by", ranked_by)
        items.extend(body.get("items", []))
    folded = []
    for new_rank, pos in enumerate(kept, start=1):
        item = dict(items[pos], **{site_data.ITEM_RANK: new_rank})
        if pos in copies:
            item["copies"] = [
                {k: items[c][k] for k in (site_data.ITEM_IMAGE_ID, site_data.ITEM_THUMB, site_data.ITEM_VIEW, site_data.ITEM_URI) if k in items[c]}
                for c in copies[pos]
            ]
        folded.append(item)
    pages = list(site_data.ranking_pages(tag, folded, ranked_by=ranked_by, page_size=page_size, data_root=data_root))
    for relpath, page in pages:
        write(relpath, site_data.encode_json(page))
    for page in range(len(pages), old_pages):
        fs, path = storage.fs_and_path(schema.out_path(site_root, site_data.ranking_page_path(key, page, data_root)))
        fs.rm(path)


def fold_duplicates(
    out: str,
    *,
    site_root: str,
    data_root: str,
    rankings_dir: str,
    page_size: int,
    near_threshold: float = similar.DEFAULT_NEAR_THRESHOLD,
) -> dict[str, Any]:
    """Fold copies in the staged rankings and their pages; returns the report's facts."""
    if not similar.neighbours_exist(out):
        return {"skipped": "no neighbour lists (run neighbours)"}
    started = time.monotonic()
    dups = similar.duplicate_groups(similar.read_neighbours(out), similar.read_content_hashes(out), near_threshold)
    similar.write_duplicates(out, dups)
    facts: dict[str, Any] = {**dups.facts, "tags_folded": 0, "rows_folded": 0}
    files = _rankings_files(rankings_dir)
    tables = [storage.open_parquet(f).read() for f in files]
    tables = [t for t in tables if t.num_rows]
    if not dups.group_of or not tables:
        return facts
    table = pa.concat_tables(tables).sort_by([(schema.TAG, "ascending"), (schema.RANK, "ascending")])
    tags = table[schema.TAG].to_pylist()
    ids = table[schema.IMAGE_ID].to_pylist()
    keep_mask = [True] * len(ids)
    ranks = table[schema.RANK].to_pylist()
    start = 0
    while start < len(tags):
        end = start
        while end < len(tags) and tags[end] == tags[start]:
            end += 1
        tag_ids = ids[start:end]
        kept, copies = similar.fold_copies(tag_ids, dups.group_of)
        if copies:
            _fold_tag_pages(site_root, data_root, tags[start], end - start, kept, copies, page_size)
            kept_set = set(kept)
            for pos in range(end - start):
                keep_mask[start + pos] = pos in kept_set
            for new_rank, pos in enumerate(kept, start=1):
                ranks[start + pos] = new_rank
            facts["tags_folded"] += 1
            facts["rows_folded"] += end - start - len(kept)
        start = end
    if not facts["rows_folded"]:
        return facts
    table = table.set_column(table.schema.get_field_index(schema.RANK), schema.RANK, pa.array(ranks, type=pa.int32()))
    table = table.filter(pa.array(keep_mask)).cast(schema.RANKINGS_SCHEMA)
    target = schema.out_path(rankings_dir, f"{schema.RANKINGS_PREFIX}-folded-00000-of-00001{schema.PARQUET_SUFFIX}")
    fs, path = storage.fs_and_path(target)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)
    for old in files:
        fs_old, old_path = storage.fs_and_path(old)
        fs_old.rm(old_path)
    facts["seconds"] = round(time.monotonic() - started, 2)
    log.info("duplicates: %s", facts)
    return facts


# ---------------------------------------------------------------------------
# Home, related words, more like this, "probably" strips
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Extras:
    manifest: dict[str, Any]  # merged into the manifest: home, lookup, similar, probably
    facts: dict[str, Any]  # rank's report details
    strip_metrics: dict[str, Any] | None = None  # with ground truth: the strips measured


def _related(out: str, vocab: int, word_vectors: str | None) -> tuple[dict[str, list[list[Any]]], dict, float, int]:
    """(word -> related tags, facts when skipped, seconds, vocabulary size)."""
    if vocab <= 0:
        return {}, {"skipped": "--related-vocab 0"}, 0.0, 0
    path = word_vectors or related_words.word_vectors_path(out)
    if not path or not storage.exists(path):
        return {}, {"skipped": f"word vectors not found ({path or 'not named by the text features'}): pass --word-vectors"}, 0.0, 0
    from model import text_vectors  # gensim: loaded only when related words are made

    started = time.monotonic()
    kv = text_vectors.load_keyed_vectors(path)
    tags, tag_vectors = related_words.read_tag_vectors(out)
    related = related_words.build(kv, tags, tag_vectors, vocab=vocab)
    return related, {}, time.monotonic() - started, min(vocab, len(kv.index_to_key))


def _lookup(out: str, write, data_root: str, entries, vocab: int, word_vectors: str | None) -> tuple[dict, dict]:
    """The lookup index: every tag, and related words where there are word vectors."""
    related, skipped, seconds, size = _related(out, vocab, word_vectors)
    result = related_words.publish(write, data_root, related, entries=entries, vocab=size, seconds=seconds)
    return result.manifest, {**result.facts, **skipped}


STRIP_COUNT = "probably"  # on a tag's first ranking page: how many images its "probably" strip holds


def mark_strips(site_root: str, data_root: str, counts: dict[str, int]) -> None:
    """Write each strip's size on its tag's first ranking page, so the page can say at once that
    the strip exists and link to it, however many pages the tag has."""
    read, write = _reader(site_root), _writer(site_root)
    for tag, count in counts.items():
        relpath = site_data.ranking_page_path(tag_key(tag), 0, data_root)
        try:
            page = json.loads(read(relpath))
        except (OSError, ValueError):
            continue  # a strip for a tag without pages: the page never opens it
        if count:
            page[STRIP_COUNT] = count
            write(relpath, site_data.encode_json(page))


def publish_extras(
    out: str,
    *,
    site_root: str,
    data_root: str,
    rankings: pa.Table,
    entries: Sequence[tuple[str, int, int]],
    folds: int,
    related_vocab: int = related_words.DEFAULT_VOCAB,
    word_vectors: str | None = None,
    ground_truth: str | None = None,
) -> Extras:
    write = _writer(site_root)
    manifest: dict[str, Any] = {}
    facts: dict[str, Any] = {}

    manifest["home"], facts["home"] = home.publish_home(write, _reader(site_root), data_root, entries)
    manifest["az"], facts["az"] = home.publish_az(write, data_root, entries)

    manifest[related_words.KIND], facts["related_words"] = _lookup(out, write, data_root, entries, related_vocab, word_vectors)

    strip_metrics = None
    if not similar.neighbours_exist(out):
        facts["more_like_this"] = facts["probably"] = {"skipped": "no neighbour lists (run neighbours)"}
        return Extras(manifest, facts)
    neighbours = similar.read_neighbours(out)
    group_of = similar.read_duplicates(out)
    if group_of is None:
        group_of = similar.duplicate_groups(neighbours, similar.read_content_hashes(out)).group_of
    published = similar.published_images(rankings)
    manifest["similar"], facts["more_like_this"] = similar.publish_similar(
        write, data_root, similar.similar_entries(neighbours, published, group_of)
    )

    started = time.monotonic()
    image_tags, own_scores = probably.image_tags_and_scores(rankings)
    found = probably.candidates(neighbours, image_tags, group_of)
    cosines = probably.matcher_cosines(out, [(c.image_id, c.tag) for c in found], folds)
    strips = probably.build_strips(found, cosines, probably.tag_stats(rankings), published, own_scores)
    manifest["probably"], facts["probably"] = probably.publish_strips(write, data_root, strips)
    mark_strips(site_root, data_root, {tag: len(items) for tag, items in strips.by_tag.items()})
    facts["probably"]["seconds"] = round(time.monotonic() - started, 2)
    if ground_truth:
        strip_metrics = probably.evaluate_strips(strips.by_tag, metrics.load_ground_truth(ground_truth), rankings)
        facts["probably"]["evaluation"] = strip_metrics
    return Extras(manifest, facts, strip_metrics)
