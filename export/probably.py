"""Images that belong under a tag but were crawled under another: the "Probably 'cat'" strips.

Found from the neighbour lists, never by scoring every image against every tag:

1. candidates: an image whose nearest neighbours mostly (share >= `min_share`, copies of the
   image left out) carry a tag the image does not carry;
2. the matcher then scores each candidate for that one tag, with a member that never trained on
   the image (the fold that held it out, the members' mean where none trained on it), through
   the same ONNX towers rank publishes with;
3. both are put on the tag's own scale, as rank's combined score is: the matcher's cosine and the
   similarity-weighted neighbour share, each standardised over the tag's own published images,
   summed. A candidate at or above `min_score` (0: the tag's typical image) goes in the strip.

Each tag's strip (best first, at most `per_tag`) is published after the tag's own images,
labelled "Probably 'cat', crawled under another tag", each item with the fields the page turns
into one sentence of evidence (site/js/probably.js): how many neighbours carry the tag, and the
matcher's standard deviations for the tag (named only when above the tag's typical image); the
image's score under its crawled tag rides along. A tag's first ranking page says how many the
strip holds (export/discovery.mark_strips). Strips are cut into files by a hash of the tag's key
(export/hashed_shards.py).

`evaluate_strips` measures them against ground truth (the demo's): precision of the first 10 of
each strip, and the share of wrongly tagged images that their true tag's strip recovers.

No Beam and no torch: onnxruntime, pyarrow and numpy on rank's driver.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Iterable

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc

from export import hashed_shards, similar
from model import schema, scoring, storage
from model.contrast import TagTable, matcher_scores, scoring_members
from model.tags import tag_key

log = logging.getLogger(__name__)

DEFAULT_MIN_SHARE = 0.5
DEFAULT_MIN_SCORE = 0.0
PER_TAG = 24
PRECISION_AT = 10
TARGET_BYTES = 6 * 1024
BUDGET_BYTES = 20 * 1024
KIND = "probably"
BATCH = 256
PROVIDERS = ["CPUExecutionProvider"]


@dataclasses.dataclass(frozen=True)
class Candidate:
    image_id: str
    tag: str  # the tag it probably belongs under
    neighbours_with_tag: int
    neighbours: int
    weighted_share: float


def candidates(
    neighbours: similar.Neighbours,
    image_tags: dict[str, set[str]],
    group_of: dict[str, str],
    min_share: float = DEFAULT_MIN_SHARE,
) -> list[Candidate]:
    """For each published image, the tag (not its own) most of its neighbours carry, if any."""
    found = []
    for image_id, own in image_tags.items():
        group = group_of.get(image_id)
        counts: dict[str, int] = {}
        weights: dict[str, float] = {}
        total_w = 0.0
        n = 0
        for nid, sim in zip(neighbours.ids.get(image_id, ()), neighbours.sims.get(image_id, ())):
            if group is not None and group_of.get(nid) == group:
                continue  # a copy carries the same (wrong) tag: it is no evidence
            tags = image_tags.get(nid)
            if not tags:
                continue
            n += 1
            w = max(float(sim), 0.0)
            total_w += w
            for t in tags:
                counts[t] = counts.get(t, 0) + 1
                weights[t] = weights.get(t, 0.0) + w
        if not n:
            continue
        best = min((t for t in counts if t not in own), key=lambda t: (-counts[t], -weights[t], t), default=None)
        if best is None or counts[best] / n < min_share:
            continue
        found.append(Candidate(image_id, best, counts[best], n, weights[best] / total_w if total_w else 0.0))
    return found


# ---------------------------------------------------------------------------
# The matcher, for the candidates only
# ---------------------------------------------------------------------------
def _session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(storage.read_bytes(path), providers=PROVIDERS)


def _project(session: ort.InferenceSession, vectors: np.ndarray) -> np.ndarray:
    parts = [
        session.run([schema.TOWER_OUTPUT], {schema.TOWER_INPUT: vectors[i : i + BATCH]})[0]
        for i in range(0, len(vectors), BATCH)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0, 0), dtype=np.float32)


def _features(out: str, wanted: set[str]) -> dict[str, np.ndarray]:
    """Image features of the wanted ids, streamed shard by shard (never the whole table)."""
    found: dict[str, np.ndarray] = {}
    wanted_arr = pa.array(sorted(wanted), type=pa.string())
    for path in similar._shards(out, schema.IMAGE_FEATURES_DIR, schema.IMAGE_FEATURES_PREFIX):
        for batch in storage.open_parquet(path).iter_batches(columns=[schema.IMAGE_ID, schema.EMBEDDING]):
            table = pa.Table.from_batches([batch])
            table = table.filter(pc.is_in(table[schema.IMAGE_ID], value_set=wanted_arr))
            for image_id, vec in zip(table[schema.IMAGE_ID].to_pylist(), table[schema.EMBEDDING].to_pylist()):
                found[image_id] = np.asarray(vec, dtype=np.float32)
    return found


def _folds(out: str) -> dict[str, int]:
    folds: dict[str, int] = {}
    for path in similar._shards(out, schema.FOLDS_DIR, schema.FOLDS_PREFIX):
        table = storage.open_parquet(path).read()
        folds.update(zip(table[schema.IMAGE_ID].to_pylist(), table[schema.FOLD].to_pylist()))
    return folds


def _text_features(out: str, wanted: set[str] | None) -> dict[str, np.ndarray]:
    """tag -> word vector, for the wanted tags (None: every tag with a vector)."""
    found: dict[str, np.ndarray] = {}
    for path in similar._shards(out, schema.TEXT_FEATURES_DIR, schema.TEXT_FEATURES_PREFIX):
        table = storage.open_parquet(path).read(columns=[schema.TAG, schema.EMBEDDING, schema.STATUS])
        for tag, vec, status in zip(*(table[c].to_pylist() for c in (schema.TAG, schema.EMBEDDING, schema.STATUS))):
            if (wanted is None or tag in wanted) and vec is not None and status != schema.TEXT_OOV:
                found[tag] = np.asarray(vec, dtype=np.float32)
    return found


def matcher_cosines(out: str, pairs: list[tuple[str, str]], folds_count: int) -> dict[tuple[str, str], float]:
    """(image id, tag) -> the out-of-sample matcher score for the given pairs only, on the scale
    rank publishes: class-contrastive (the tag against the best other tag, model/contrast.py)."""
    if not pairs:
        return {}
    features = _features(out, {i for i, _ in pairs})
    text = _text_features(out, None)
    pairs = [(i, t) for i, t in pairs if i in features and t in text]
    if not pairs:
        return {}
    image_ids = sorted({i for i, _ in pairs})
    tags = sorted(text)
    image_emb = _project(_session(schema.out_path(out, schema.IMAGE_TOWER_ONNX)), np.stack([features[i] for i in image_ids]))
    text_emb = _project(_session(schema.out_path(out, schema.TEXT_TOWER_ONNX)), np.stack([text[t] for t in tags]))
    table = TagTable(dict(zip(tags, text_emb)))
    row = {i: r for r, i in enumerate(image_ids)}
    folds = _folds(out)
    scores: dict[tuple[str, str], float] = {}
    for image_id, tag in pairs:
        # the probable tag against every other, the crawled one included
        emb = image_emb[row[image_id]]
        fold = int(folds.get(image_id, schema.NO_FOLD))
        best = table.best_other(emb, {tag}, scoring_members(fold, folds_count))
        scores[(image_id, tag)] = matcher_scores(emb, text_emb[table.code[tag]], fold, folds_count, best)[0]
    return scores


# ---------------------------------------------------------------------------
# Strips
# ---------------------------------------------------------------------------
def _stats(values: np.ndarray) -> tuple[float, float] | None:
    values = values[np.isfinite(values)]
    if values.size < 2:
        return None
    std = float(values.std())
    return float(values.mean()), std if std > 1e-9 else 1.0


def tag_stats(rankings: pa.Table) -> dict[str, dict[str, tuple[float, float] | None]]:
    """Per tag: (mean, std) of the matcher cosine and of the neighbour agreement over its own images."""
    table = rankings.select([schema.TAG, schema.MATCHER, scoring.AGREEMENT_SIGNAL]).sort_by(schema.TAG)
    tags = table[schema.TAG].to_numpy(zero_copy_only=False)
    matcher = table[schema.MATCHER].to_numpy(zero_copy_only=False).astype(np.float64)
    agreement = table[scoring.AGREEMENT_SIGNAL].to_numpy(zero_copy_only=False).astype(np.float64)
    stats: dict[str, dict[str, Any]] = {}
    if not len(tags):
        return stats
    bounds = np.flatnonzero(tags[1:] != tags[:-1]) + 1
    for start, end in zip(np.r_[0, bounds], np.r_[bounds, len(tags)]):
        stats[str(tags[start])] = {"matcher": _stats(matcher[start:end]), "agreement": _stats(agreement[start:end])}
    return stats


def _z(value: float | None, stats: tuple[float, float] | None) -> float | None:
    if value is None or stats is None or not np.isfinite(value):
        return None
    return (value - stats[0]) / stats[1]


@dataclasses.dataclass
class Strips:
    by_tag: dict[str, list[dict[str, Any]]]  # tag -> strip items, best first
    facts: dict[str, Any]


def build_strips(
    found: Iterable[Candidate],
    cosines: dict[tuple[str, str], float],
    stats: dict[str, dict[str, Any]],
    published: dict[str, tuple[str, str]],
    own_scores: dict[str, float | None],
    *,
    min_score: float = DEFAULT_MIN_SCORE,
    per_tag: int = PER_TAG,
) -> Strips:
    """Score each candidate on its probable tag's scale; keep those at or above min_score."""
    by_tag: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    considered = kept = 0
    for c in found:
        considered += 1
        tag_stat = stats.get(c.tag) or {}
        zm = _z(cosines.get((c.image_id, c.tag)), tag_stat.get("matcher"))
        za = _z(c.weighted_share, tag_stat.get("agreement"))
        parts = [z for z in (zm, za) if z is not None]
        if not parts:
            continue
        score = float(sum(parts))
        if score < min_score:
            continue
        kept += 1
        crawled, uri = published[c.image_id]
        own = own_scores.get(c.image_id)
        item = {
            "image_id": c.image_id,
            "tag": crawled,
            "uri": uri,
            "score": round(score, 3),
            "neighbours": [c.neighbours_with_tag, c.neighbours],
            "matcher": None if zm is None else round(zm, 2),
            "own_score": None if own is None else round(float(own), 2),
        }
        by_tag.setdefault(c.tag, []).append((score, item))
    strips = {
        tag: [item for _, item in sorted(items, key=lambda x: (-x[0], x[1]["image_id"]))[:per_tag]]
        for tag, items in by_tag.items()
    }
    facts = {
        "candidates": considered,
        "above_min_score": kept,
        "tags_with_strip": len(strips),
        "published": sum(len(s) for s in strips.values()),
        "min_score": min_score,
        "per_tag": per_tag,
    }
    return Strips(strips, facts)


def image_tags_and_scores(rankings: pa.Table) -> tuple[dict[str, set[str]], dict[str, float | None]]:
    """Every published image's tags, and its published score under its best-ranked tag."""
    tags: dict[str, set[str]] = {}
    scores: dict[str, float | None] = {}
    table = rankings.select([schema.TAG, schema.RANK, schema.IMAGE_ID, schema.SCORE]).sort_by([(schema.RANK, "ascending")])
    for tag, image_id, score in zip(
        table[schema.TAG].to_pylist(), table[schema.IMAGE_ID].to_pylist(), table[schema.SCORE].to_pylist()
    ):
        tags.setdefault(image_id, set()).add(tag)
        scores.setdefault(image_id, score)
    return tags, scores


def publish_strips(write_bytes: Callable[[str, bytes], None], data_root: str, strips: Strips) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the strips, keyed by each tag's key; returns (the manifest object, report facts)."""
    entries = {tag_key(tag): items for tag, items in strips.by_tag.items()}
    shards, bodies = hashed_shards.cut(entries, field="tags", target_bytes=TARGET_BYTES, budget_bytes=BUDGET_BYTES)
    sizes = hashed_shards.write(write_bytes, data_root, KIND, bodies)
    return {"shards": shards}, {**strips.facts, **hashed_shards.size_facts(sizes)}


def evaluate_strips(strips: dict[str, list[dict[str, Any]]], truth: dict[str, str], rankings: pa.Table) -> dict[str, Any]:
    """Precision of each strip's first 10 (mean over tags with a strip, and pooled), and the share
    of wrongly tagged published images that their true tag's strip shows."""
    per_tag = []
    hits_total = shown_total = 0
    for tag, items in strips.items():
        top = [it["image_id"] for it in items[:PRECISION_AT] if it["image_id"] in truth]
        if not top:
            continue
        hits = sum(truth[i] == tag for i in top)
        per_tag.append(hits / len(top))
        hits_total += hits
        shown_total += len(top)
    in_strip = {(it["image_id"], tag) for tag, items in strips.items() for it in items}
    wrong = set()
    for tag, image_id in zip(rankings[schema.TAG].to_pylist(), rankings[schema.IMAGE_ID].to_pylist()):
        true = truth.get(image_id)
        if true is not None and true != tag:
            wrong.add((image_id, true))
    recovered = sum(pair in in_strip for pair in wrong)
    return {
        f"precision_at_{PRECISION_AT}": round(float(np.mean(per_tag)), 4) if per_tag else None,
        f"precision_at_{PRECISION_AT}_pooled": round(hits_total / shown_total, 4) if shown_total else None,
        "tags_evaluated": len(per_tag),
        "wrongly_tagged": len(wrong),
        "recovered": recovered,
        "recovered_share": round(recovered / len(wrong), 4) if wrong else None,
    }
