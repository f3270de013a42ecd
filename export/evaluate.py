"""Stage `evaluate`: measure what the site shows — the published rankings, over every image.

    imgsearch evaluate --out OUT [--ground-truth GT.jsonl]

`rank` runs it after writing rankings/ and before the site's manifest; it also runs alone. It
reads OUT/rankings/ (every published row with its score's components) and, with ground truth,
measures within-tag ROC-AUC, P@10 and R-precision of:

- the published ranking (the `score` column, ties and unscored tags in index order, as the site);
- each ranker replayed from the published components with model/scoring.py (its RANKERS), so the
  ablation is measured on exactly the same images;
- the baselines: index order, cosine to the tag's mean feature, and the in-sample matcher (the
  member trained on every fold, scoring images it trained on: what the site showed before
  cross-fitting). They fall back as the published rankers do: a tag without a word vector is
  ranked by the mean feature, a tag without any signal in index order, so every row of the table
  ranks the same tags the same way wherever its own signal is missing.

Each figure is reported over all images, over the images some member trained on (each scored
by the member that held it out) and over the held-out ones (no member trained on them: the test
split, and images added since training). Tags that have no AUC (one image, every image wrongly
tagged, none wrongly tagged) are counted and listed with the reason.

Without ground truth it still finds what a curator needs: *suspect tags*, whose images mostly
look like another tag (from OUT/neighbours: model/metrics.suspect_tags), most suspect first, with
the other tag and example images; with ground truth the list's precision is measured. And it
flags the tags whose within-tag scores say nothing (one image, or every score tied).

Writes OUT/report/metrics.json and the report page (export/report.py) into OUT/report/ and, from
rank, into the version of the site it publishes. Without ground truth the page still shows score
distributions, the suspect tags and each large tag's bottom images.

No torch and no Beam here: rank's workers and driver need neither.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model import metrics, schema, scoring, storage
from model.report import StageReport

log = logging.getLogger(__name__)

STAGE = "evaluate"

PUBLISHED = "published"
COMBINED = scoring.COMBINED
MATCHER = scoring.MATCHER
NEIGHBOURS = scoring.NEIGHBOURS
MEAN_FEATURE = scoring.MEAN_FEATURE
INDEX_ORDER = metrics.INDEX_ORDER
IN_SAMPLE = "matcher_in_sample"
RANKER_LABELS = {
    PUBLISHED: "published ranking",
    **{name: ranker.label for name, ranker in scoring.REGISTRY.items()},
    INDEX_ORDER: "index order (baseline)",
    IN_SAMPLE: "in-sample matcher (baseline, before cross-fitting)",
}
# What the baselines fall back to, as the published rankers do (the table and README say so)
BASELINE_FALLBACK = (
    "Baselines fall back as the published rankers do: the in-sample matcher ranks a tag without a word vector by "
    + " + ".join(s.replace("_", " ") for s in scoring.REGISTRY[scoring.MATCHER].fallback)
    + " as the matcher ranker does, and every ranker ranks a tag without any signal in index order."
)
# The neighbours stage's training-free class signal, where it has been computed (absent: not used)
CENTROID_MARGIN = schema.CENTROID_MARGIN
# Why a tag's within-tag scores say nothing
ONE_IMAGE = metrics.ONE_IMAGE
ALL_TIED = "all_tied"
UNINFORMATIVE_REASONS = {
    ONE_IMAGE: "one image: its score compares it with nothing",
    ALL_TIED: "every image has the same score: the order is index order",
}
MOSTLY_WRONG = 0.5  # with ground truth, a tag is mostly wrong above this share of wrongly tagged images
SUBSET_ALL = "all"
SUBSET_IN_TRAINING = "in_training"
SUBSET_HELD_OUT = "held_out"
SUBSET_LABELS = {
    SUBSET_ALL: "all published images",
    SUBSET_IN_TRAINING: "images the matcher trained on (each scored by the member that held it out)",
    SUBSET_HELD_OUT: "images no member trained on (held-out split and later additions)",
}

SCORE_DESCRIPTION = {name: ranker.description for name, ranker in scoring.REGISTRY.items()}


@dataclasses.dataclass
class EvaluateResult(StageReport):
    """rows_in: published ranking rows; rows_out: rows with ground truth (evaluated)."""

    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    table: str = ""

    def summary_line(self) -> str:
        line = super().summary_line()
        published = (self.metrics.get("subsets", {}).get(SUBSET_ALL, {}).get("rankers") or {}).get(PUBLISHED)
        if published and published.get(metrics.AUC) is not None:
            line += (
                f"; published AUC {published[metrics.AUC]:.3f}, P@10 {published[metrics.P_AT_10]:.3f}, "
                f"R-precision {published[metrics.R_PRECISION]:.3f} over all images"
            )
        else:
            line += "; no AUC (needs --ground-truth)"
        suspects = self.metrics.get("suspect_tags") or {}
        if suspects.get("tags"):
            line += f"; {suspects['count']} suspect tags, first {suspects['tags'][0]['tag']!r}"
        return line

    def report(self) -> str:
        return "evaluation of the published rankings (mean over tags):\n" + self.table

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("metrics")
        d.pop("table")
        return d


# ---------------------------------------------------------------------------
# Scores of every ranker, replayed from the published components
# ---------------------------------------------------------------------------
def _floats(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)


def _as_published_matcher(values: np.ndarray, columns: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray | None:
    """One tag's baseline scores ranked as the published matcher ranker ranks the matcher's: the
    baseline's values in the matcher's place (one model, so one group), and the ranker's own
    fallback where the tag has none of them. None: no signal at all (index order)."""
    signals = {c: columns[c][idx] for c in scoring.SIGNAL_COLUMNS}
    signals[scoring.MATCHER_SIGNAL] = values
    s, _ = scoring.tag_scores(scoring.MATCHER, fold=np.zeros(idx.size, dtype=np.int64), **signals)
    return s


def ranker_scores(rankings: pa.Table) -> dict[str, np.ndarray]:
    """ranker -> float64 scores aligned with the rankings rows (higher ranks first, NaN: none).

    Where a tag has no score at all, the site shows index order, and so does the score here.
    """
    n = rankings.num_rows
    tags = rankings.column(schema.TAG).to_numpy(zero_copy_only=False)
    ordinal = rankings.column(schema.ORDINAL).to_numpy(zero_copy_only=False).astype(np.float64)
    fold = rankings.column(schema.FOLD).to_numpy(zero_copy_only=False)
    columns = {c: _floats(rankings, c) for c in (schema.SCORE, schema.MATCHER_IN_SAMPLE, *scoring.SIGNAL_COLUMNS)}
    index_order = metrics.index_order_scores(ordinal)
    out = {name: np.full(n, np.nan) for name in (PUBLISHED, *scoring.RANKERS, IN_SAMPLE)}
    out[INDEX_ORDER] = index_order
    order = np.argsort(tags, kind="stable")
    boundaries = np.flatnonzero(tags[order][1:] != tags[order][:-1]) + 1
    for idx in np.split(order, boundaries) if n else []:
        # a rank-preserving map of index order below every real score keeps "no score" tags in index order
        fallback = index_order[idx]
        published = columns[schema.SCORE][idx]
        out[PUBLISHED][idx] = published if np.isfinite(published).all() else fallback
        z = scoring.standardised_signals({c: columns[c][idx] for c in scoring.SIGNAL_COLUMNS}, fold[idx])
        for ranker in scoring.RANKERS:
            s, _ = scoring.scores_from_z(ranker, z)
            out[ranker][idx] = fallback if s is None else s
        in_sample = _as_published_matcher(columns[schema.MATCHER_IN_SAMPLE][idx], columns, idx)
        out[IN_SAMPLE][idx] = fallback if in_sample is None else in_sample
    return out


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------
def _subset_metrics(
    tags: np.ndarray, labels: np.ndarray, ordinals: np.ndarray, scores: dict[str, np.ndarray], keep: np.ndarray
) -> dict[str, Any]:
    result = metrics.evaluate_rankings(tags[keep], labels[keep], ordinals[keep], {r: s[keep] for r, s in scores.items()})
    return {"images": int(keep.sum()), **result}


def evaluate_rankings_table(rankings: pa.Table, truth: dict[str, str] | None, published_ranker: str) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray | None]:
    """(metrics dict, ranker scores, labels or None) for the published rankings."""
    # the published ranking is measured from its own column; replaying its ranker would repeat it
    scores = {r: v for r, v in ranker_scores(rankings).items() if r != published_ranker}
    fold = rankings.column(schema.FOLD).to_numpy(zero_copy_only=False)
    counts = {
        "rows": rankings.num_rows,
        "images": pc.count_distinct(rankings.column(schema.IMAGE_ID)).as_py() if rankings.num_rows else 0,
        "tags": pc.count_distinct(rankings.column(schema.TAG)).as_py() if rankings.num_rows else 0,
        "rows_in_training": int((fold != schema.NO_FOLD).sum()),
        "rows_held_out": int((fold == schema.NO_FOLD).sum()),
    }
    labels = {r: RANKER_LABELS.get(r, r) for r in scores}
    labels[PUBLISHED] = f"{RANKER_LABELS[PUBLISHED]}: {RANKER_LABELS.get(published_ranker, published_ranker)}"
    result: dict[str, Any] = {
        "published_ranker": published_ranker,
        "description": SCORE_DESCRIPTION.get(published_ranker, ""),
        "rankers": labels,
        "baseline_fallback": BASELINE_FALLBACK,
        "counts": counts,
        "uninformative_scores": uninformative_scores(rankings),
        "subsets": {},
    }
    if truth is None:
        result["ground_truth"] = None
        result["note"] = metrics.NEEDS_GROUND_TRUTH
        result["subsets"] = {s: {"images": 0, "rankers": {}, "per_tag": []} for s in SUBSET_LABELS}
        return result, scores, None

    tags = rankings.column(schema.TAG).to_numpy(zero_copy_only=False)
    ids = rankings.column(schema.IMAGE_ID).to_numpy(zero_copy_only=False)
    ordinals = rankings.column(schema.ORDINAL).to_numpy(zero_copy_only=False)
    known = np.fromiter((i in truth for i in ids), dtype=bool, count=len(ids))
    labels = np.fromiter((truth.get(i) == t for i, t in zip(ids, tags)), dtype=bool, count=len(ids))
    counts["rows_with_ground_truth"] = int(known.sum())
    subsets = {
        SUBSET_ALL: known,
        SUBSET_IN_TRAINING: known & (fold != schema.NO_FOLD),
        SUBSET_HELD_OUT: known & (fold == schema.NO_FOLD),
    }
    for name, keep in subsets.items():
        sub = _subset_metrics(tags, labels, ordinals, scores, keep)
        counts[f"tags_evaluated_{name}"] = sub.pop("tags_evaluated")
        counts[f"tags_single_class_{name}"] = sub.pop("tags_single_class")
        counts[f"tags_not_evaluated_{name}"] = sub["tags_not_evaluated"]["count"]
        result["subsets"][name] = sub
    return result, scores, np.where(known, labels, False)


def _tag_codes(rankings: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(tag names, each row's tag code into them)."""
    encoded = rankings.column(schema.TAG).combine_chunks().dictionary_encode()
    return np.asarray(encoded.dictionary.to_pylist(), dtype=object), encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def uninformative_scores(rankings: pa.Table) -> dict[str, Any]:
    """The tags whose published within-tag scores say nothing: one image (its z-score compares it
    with nothing), or several whose scores are all equal (the order is index order). Needs no
    ground truth; a tag without any score (index order, no score shown) is not listed."""
    listed: list[dict[str, Any]] = []
    if rankings.num_rows:
        names, codes = _tag_codes(rankings)
        score = _floats(rankings, schema.SCORE)
        finite = np.isfinite(score)
        n_tags = names.size
        images = np.bincount(codes, minlength=n_tags)
        scored = np.bincount(codes, weights=finite, minlength=n_tags)
        high = np.full(n_tags, -np.inf)
        low = np.full(n_tags, np.inf)
        np.maximum.at(high, codes[finite], score[finite])
        np.minimum.at(low, codes[finite], score[finite])
        one = (images == 1) & (scored > 0)
        tied = (images > 1) & (scored > 0) & (high == low)
        for code in sorted(np.flatnonzero(one | tied).tolist(), key=lambda c: str(names[c])):
            listed.append({"tag": str(names[code]), "images": int(images[code]), "reason": ONE_IMAGE if one[code] else ALL_TIED})
    return {
        "count": len(listed),
        "by_reason": {reason: sum(e["reason"] == reason for e in listed) for reason in UNINFORMATIVE_REASONS},
        "reasons": UNINFORMATIVE_REASONS,
        "tags": listed,
    }


# ---------------------------------------------------------------------------
# Suspect tags: whose images mostly look like another tag (no ground truth needed)
# ---------------------------------------------------------------------------
SUSPECT_RULE = (
    "An image looks like another tag when more of its nearest neighbours carry that tag than carry its own "
    "(the own tag's share taken of what the tag could fill: a tag of n images fills at most n - 1 neighbours), "
    f"at least {metrics.SUSPECT_MIN_VOTES} of them carry it, and they carry it at least "
    f"{metrics.SUSPECT_ENRICHMENT:g} times as often as all images do. A tag of at least {metrics.SUSPECT_MIN_IMAGES} "
    f"images is suspect when more than {metrics.SUSPECT_SHARE:.0%} of its images look like one other tag; "
    "most suspect first. Two tags that look like each other are listed once, under the more suspect one."
)


def _shards(out: str, directory: str, prefix: str) -> list[str]:
    return [f for f in storage.list_files(schema.out_path(out, directory), schema.PARQUET_SUFFIX) if f.rsplit("/", 1)[-1].startswith(prefix + "-")]


def _neighbour_edges(out: str, ids: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """(image code, neighbour code) per edge of OUT/neighbours, codes into `ids` (-1: not
    published); None without neighbour lists."""
    files = _shards(out, schema.NEIGHBOURS_DIR, schema.NEIGHBOURS_PREFIX)
    if not files:
        return None
    src, dst = [], []
    for path in files:
        table = storage.open_parquet(path).read(columns=[schema.IMAGE_ID, schema.NEIGHBOUR_IDS])
        lists = table.column(schema.NEIGHBOUR_IDS).combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
        own = pc.fill_null(pc.index_in(table.column(schema.IMAGE_ID), value_set=ids), -1).to_numpy(zero_copy_only=False)
        src.append(np.repeat(own.astype(np.int64), lengths))
        dst.append(pc.fill_null(pc.index_in(pc.list_flatten(lists), value_set=ids), -1).to_numpy(zero_copy_only=False).astype(np.int64))
    return np.concatenate(src), np.concatenate(dst)


def _centroid_margins(out: str, ids: pa.Array, names: np.ndarray, pair_image: np.ndarray, pair_tag: np.ndarray) -> np.ndarray | None:
    """Each pair's centroid margin from OUT/signals (NaN: none), or None where signals lack it."""
    files = [f for f in _shards(out, schema.SIGNALS_DIR, schema.SIGNALS_PREFIX) if CENTROID_MARGIN in storage.open_parquet(f).schema_arrow.names]
    if not files:
        return None
    n_tags = max(names.size, 1)
    tag_set = pa.array(names.tolist(), pa.string())
    keys, values = [], []
    for path in files:
        table = storage.open_parquet(path).read(columns=[schema.IMAGE_ID, schema.TAG, CENTROID_MARGIN])
        image = pc.fill_null(pc.index_in(table.column(schema.IMAGE_ID), value_set=ids), -1).to_numpy(zero_copy_only=False)
        tag = pc.fill_null(pc.index_in(table.column(schema.TAG), value_set=tag_set), -1).to_numpy(zero_copy_only=False)
        ok = (image >= 0) & (tag >= 0)
        keys.append(image[ok].astype(np.int64) * n_tags + tag[ok])
        values.append(_floats(table, CENTROID_MARGIN)[ok])
    key, value = np.concatenate(keys), np.concatenate(values)
    order = np.argsort(key, kind="stable")
    key, value = key[order], value[order]
    margins = np.full(pair_image.size, np.nan)
    if key.size:
        want = pair_image * n_tags + pair_tag
        at = np.minimum(np.searchsorted(key, want), key.size - 1)
        hit = key[at] == want
        margins[hit] = value[at[hit]]
    return margins


def suspect_tags_section(out: str, rankings: pa.Table, labels: np.ndarray | None = None, known: np.ndarray | None = None) -> dict[str, Any]:
    """The suspect tags of the published rankings, from OUT/neighbours; with labels (True: the
    image truly shows its tag) and known (the row has ground truth), the list's precision: the
    share of listed tags whose images are mostly (over MOSTLY_WRONG) wrongly tagged."""
    section: dict[str, Any] = {
        "rule": SUSPECT_RULE,
        "threshold": metrics.SUSPECT_SHARE,
        "min_images": metrics.SUSPECT_MIN_IMAGES,
        "count": 0,
        "tags_scored": 0,
        "tags": [],
    }
    if rankings.num_rows == 0:
        section["note"] = "nothing was ranked"
        return section
    id_codes = rankings.column(schema.IMAGE_ID).combine_chunks().dictionary_encode()
    ids = id_codes.dictionary
    pair_image = id_codes.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    names, pair_tag = _tag_codes(rankings)
    edges = _neighbour_edges(out, ids)
    if edges is None:
        section["note"] = f"no neighbour lists under {schema.NEIGHBOURS_DIR}/ (run neighbours): no suspect tags"
        return section
    looks = metrics.looks_like_other_tag(pair_image, pair_tag, *edges)
    image_ids = rankings.column(schema.IMAGE_ID).to_numpy(zero_copy_only=False)
    ordinals = rankings.column(schema.ORDINAL).to_numpy(zero_copy_only=False)
    listed, scored = metrics.suspect_tags(names, pair_tag, image_ids, looks, ordinals)
    section.update(count=len(listed), tags_scored=scored, tags=listed)
    margins = _centroid_margins(out, ids, names, pair_image, pair_tag)
    section["centroid_margin"] = margins is not None and bool(np.isfinite(margins).any())
    if section["centroid_margin"]:
        # the training-free class signal, where neighbours computed it: the share of a tag's images
        # nearer another tag's mean feature than their own tag's
        finite = np.isfinite(margins)
        with_margin = np.bincount(pair_tag, weights=finite, minlength=names.size)
        negative = np.bincount(pair_tag, weights=finite & (np.nan_to_num(margins, nan=0.0) < 0), minlength=names.size)
        code = {str(n): c for c, n in enumerate(names)}
        for entry in listed:
            c = code[entry["tag"]]
            entry["negative_centroid_margin_share"] = float(negative[c] / with_margin[c]) if with_margin[c] else None
    if labels is not None and known is not None:
        section["ground_truth"] = _suspect_precision(listed, names, pair_tag, np.asarray(labels, bool), np.asarray(known, bool))
    return section


def _suspect_precision(listed: list[dict[str, Any]], names: np.ndarray, pair_tag: np.ndarray, labels: np.ndarray, known: np.ndarray) -> dict[str, Any]:
    n_tags = names.size
    with_truth = np.bincount(pair_tag, weights=known, minlength=n_tags)
    wrong = np.bincount(pair_tag, weights=known & ~labels, minlength=n_tags)
    images = np.bincount(pair_tag, minlength=n_tags)
    with np.errstate(invalid="ignore", divide="ignore"):
        wrong_share = np.where(with_truth > 0, wrong / np.maximum(with_truth, 1), np.nan)
    code = {str(n): c for c, n in enumerate(names)}
    hits = []
    for entry in listed:
        share = wrong_share[code[entry["tag"]]]
        entry["wrong_share"] = None if np.isnan(share) else float(share)
        if not np.isnan(share):
            hits.append(bool(share > MOSTLY_WRONG))
    rank_of = {e["tag"]: i + 1 for i, e in enumerate(listed)}
    mostly_wrong = [
        {"tag": str(names[c]), "images": int(images[c]), "wrong_share": float(wrong_share[c]), "suspect_rank": rank_of.get(str(names[c]))}
        for c in np.flatnonzero(wrong_share > MOSTLY_WRONG)
    ]
    mostly_wrong.sort(key=lambda e: (-e["wrong_share"], e["tag"]))
    listable = [e for e in mostly_wrong if e["images"] >= metrics.SUSPECT_MIN_IMAGES]
    return {
        "mostly_wrong_above": MOSTLY_WRONG,
        "listed_with_ground_truth": len(hits),
        "listed_mostly_wrong": int(sum(hits)),
        "precision": float(np.mean(hits)) if hits else None,
        "mostly_wrong_tags": mostly_wrong,
        "recall": float(np.mean([e["suspect_rank"] is not None for e in listable])) if listable else None,
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def format_table(result: dict[str, Any]) -> str:
    """One line per ranker, the published ranking first: AUC, P@10 and R-precision over all
    published images, then AUC over the images the matcher trained on and over the held-out ones."""
    subsets = result.get("subsets") or {}
    all_rankers = (subsets.get(SUBSET_ALL) or {}).get("rankers") or {}
    if not all_rankers:
        return result.get("note") or metrics.NEEDS_GROUND_TRUTH
    labels = dict(result["rankers"])
    width = max(len("ranker"), *(len(v) for v in labels.values()))
    header = f"{'ranker':<{width}} | all AUC | all P@10 | all R-prec | trained-on AUC | held-out AUC | tags"
    lines = [header, "-" * len(header)]
    for ranker in all_rankers:
        a = all_rankers[ranker]
        t = ((subsets.get(SUBSET_IN_TRAINING) or {}).get("rankers") or {}).get(ranker) or {}
        h = ((subsets.get(SUBSET_HELD_OUT) or {}).get("rankers") or {}).get(ranker) or {}
        lines.append(
            f"{labels.get(ranker, ranker):<{width}} | {_fmt(a.get(metrics.AUC)):>7} | {_fmt(a.get(metrics.P_AT_10)):>8} | "
            f"{_fmt(a.get(metrics.R_PRECISION)):>10} | {_fmt(t.get(metrics.AUC)):>14} | {_fmt(h.get(metrics.AUC)):>12} | {a.get('tags', 0):>4}"
        )
    if result.get("baseline_fallback"):
        lines.append(result["baseline_fallback"])
    return "\n".join(lines)


def format_not_evaluated(result: dict[str, Any], show: int = 10) -> str:
    """The tags the means leave out (over all images) and the tags whose scores say nothing."""
    lines = []
    missing = ((result.get("subsets") or {}).get(SUBSET_ALL) or {}).get("tags_not_evaluated")
    if missing:
        reasons = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in missing["by_reason"].items() if n)
        lines.append(f"tags without an AUC: {missing['count']}" + (f" ({reasons})" if reasons else ""))
        for e in missing["tags"][:show]:
            lines.append(f"  {e['tag']}: {e['images']} images, {e['true']} truly tagged: {metrics.NOT_EVALUATED_REASONS[e['reason']]}")
        if missing["count"] > show:
            lines.append(f"  ... and {missing['count'] - show} more in metrics.json")
    flat = result.get("uninformative_scores")
    if flat and flat["count"]:
        reasons = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in flat["by_reason"].items() if n)
        lines.append(f"tags whose scores say nothing: {flat['count']} ({reasons})")
    return "\n".join(lines)


def format_suspects(section: dict[str, Any] | None, show: int = 10) -> str:
    """The suspect tags, most suspect first, and the list's precision where ground truth exists."""
    if not section:
        return ""
    if section.get("note"):
        return f"suspect tags: {section['note']}"
    lines = [f"suspect tags (images mostly like another tag): {section['count']} of {section['tags_scored']} tags scored"]
    truth = section.get("ground_truth")
    for i, e in enumerate(section["tags"][:show], 1):
        line = (
            f"  {i}. {e['tag']} ({e['images']} images): {e['share']:.0%} look like {e['other_tag']} "
            f"({e['share_any_other']:.0%} like any other tag; {e['share_back']:.0%} of {e['other_tag']}'s look like it)"
        )
        if e.get("negative_centroid_margin_share") is not None:
            line += f"; {e['negative_centroid_margin_share']:.0%} nearer another tag's mean"
        if truth is not None and e.get("wrong_share") is not None:
            line += f"; truly wrong {e['wrong_share']:.0%}"
        lines.append(line)
    if section["count"] > show:
        lines.append(f"  ... and {section['count'] - show} more in metrics.json")
    if truth is not None:
        precision = "-" if truth["precision"] is None else f"{truth['precision']:.2f}"
        lines.append(
            f"  precision against ground truth: {precision} ({truth['listed_mostly_wrong']} of {truth['listed_with_ground_truth']} "
            f"listed tags mostly wrongly tagged)"
        )
        for e in truth["mostly_wrong_tags"]:
            where = f"listed #{e['suspect_rank']}" if e["suspect_rank"] else "not listed"
            lines.append(f"  mostly wrong in truth: {e['tag']} ({e['images']} images, {e['wrong_share']:.0%} wrong): {where}")
    return "\n".join(lines)


def read_rankings(out: str, directory: str | None = None) -> pa.Table:
    """The published rankings (or, from rank, the ones it is about to publish, in `directory`)."""
    directory = directory or schema.out_path(out, schema.RANKINGS_DIR)
    files = [f for f in storage.list_files(directory, schema.PARQUET_SUFFIX) if f.rsplit("/", 1)[-1].startswith(schema.RANKINGS_PREFIX + "-")]
    if not files:
        raise FileNotFoundError(f"no rankings under {directory} (run rank)")
    tables = [storage.open_parquet(f).read() for f in files]
    return pa.concat_tables([t.select(schema.RANKINGS_SCHEMA.names) for t in tables]).cast(schema.RANKINGS_SCHEMA)


def evaluate(
    out: str,
    ground_truth: str | None,
    published_ranker: str | None = None,
    *,
    site_report_dir: str | None = None,
    site_thumb_prefix: str = "../",
    rankings_dir: str | None = None,
) -> EvaluateResult:
    """Evaluate OUT/rankings and write OUT/report/ (metrics.json, the page); with site_report_dir,
    the page again there (rank puts it in the version it publishes; site_thumb_prefix leads from
    there to the site's root)."""
    from export import report  # matplotlib: imported only when a report is written

    started = time.monotonic()
    rankings = read_rankings(out, rankings_dir)
    if published_ranker is None:
        published_ranker = _published_ranker(out)
    truth = metrics.load_ground_truth(ground_truth) if ground_truth else None
    result, scores, labels = evaluate_rankings_table(rankings, truth, published_ranker)
    result["ground_truth"] = ground_truth.rstrip("/").rsplit("/", 1)[-1] if ground_truth else None
    known = None
    if truth is not None:
        ids = rankings.column(schema.IMAGE_ID).to_numpy(zero_copy_only=False)
        known = np.fromiter((i in truth for i in ids), dtype=bool, count=len(ids))
    result["suspect_tags"] = suspect_tags_section(out, rankings, labels, known)
    training = schema.out_path(out, schema.TRAINING_JSON)
    if storage.exists(training):
        trained = storage.read_json(training)
        result["training"] = {"members": trained.get("members", [])}
        result["models"] = models_used(trained)
    storage.write_json(schema.out_path(out, schema.METRICS_JSON), result)
    pages = [(schema.out_path(out, schema.REPORT_DIR), "../site/")]
    if site_report_dir:
        pages.append((site_report_dir, site_thumb_prefix))
    for report_dir, thumb_prefix in pages:
        report.write_report(
            report_dir,
            rankings=rankings,
            ranker_scores=scores,
            ranker_labels=result["rankers"],
            labels=labels,
            # the page highlights the row it names: the published ranking's own
            metrics={**result, "published_ranker": PUBLISHED},
            thumb_prefix=thumb_prefix,
        )
    table = "\n".join(p for p in (format_table(result), format_not_evaluated(result), format_suspects(result["suspect_tags"])) if p)
    evaluated = result["counts"].get("rows_with_ground_truth", 0)
    outcome = EvaluateResult(
        stage=STAGE,
        rows_in=rankings.num_rows,
        rows_out=evaluated,
        rows_skipped=rankings.num_rows - evaluated,
        seconds=time.monotonic() - started,
        details={"skipped_no_ground_truth": rankings.num_rows - evaluated} if truth is not None else {"skipped_no_ground_truth": rankings.num_rows},
        metrics=result,
        table=table,
    )
    outcome.save(out)
    return outcome


def record_metrics(out: str, section: str, values: dict[str, Any]) -> None:
    """Add one section to OUT/report/metrics.json (rank's "probably" strips measured, for one)."""
    path = schema.out_path(out, schema.METRICS_JSON)
    result = storage.read_json(path) if storage.exists(path) else {}
    result[section] = values
    storage.write_json(path, result)


def _published_ranker(out: str) -> str:
    """The ranker rank used, from its report (evaluate run alone)."""
    path = schema.out_path(out, schema.REPORTS_DIR, "rank.json")
    if storage.exists(path):
        ranker = (storage.read_json(path).get("details") or {}).get("ranker")
        if ranker in scoring.RANKERS:
            return ranker
    return scoring.DEFAULT_RANKER


def models_used(training: dict[str, Any]) -> str:
    """One sentence naming what made the scores (the site's header no longer does; this page does)."""
    inputs = training.get("inputs") or {}
    features = inputs.get("image_features") or {}
    encoder = features.get(schema.META_ENCODER.decode()) or "an unnamed encoder"
    weights = features.get(schema.META_WEIGHTS.decode())
    members = len(training.get("members", [])) - 1
    return (
        f"Image features: {encoder}" + (f" ({weights} weights" if weights else " (")
        + f", {inputs.get('image_dim', '?')}-d). Tag vectors: {inputs.get('word_vectors') or 'unnamed'} "
        f"({inputs.get('text_dim', '?')}-d). Matcher: {max(members, 0)} cross-fitted two-tower members."
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output root holding rankings/ (local path or gs://...)")
    parser.add_argument("--ground-truth", default=None, help="JSON lines {uri, tag, true_tag}: enables AUC, P@10, R-precision and the suspect list's precision")
    return parser


def run(argv: list[str] | None = None) -> EvaluateResult:
    args = get_args_parser().parse_args(argv)
    return evaluate(args.out, args.ground_truth)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    _result = run()
    print(_result.report())
    print(_result.summary_line())
