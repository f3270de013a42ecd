"""Stage `evaluate`: measure what the site shows — the published rankings, over every image.

    imgsearch evaluate --out OUT [--ground-truth GT.jsonl]

`rank` runs it after writing rankings/ and before the site's manifest; it also runs alone. It
reads OUT/rankings/ (every published row with its score's components) and, with ground truth,
measures within-tag ROC-AUC and P@10 of:

- the published ranking (the `score` column, ties and unscored tags in index order, as the site);
- each ranker replayed from the published components with model/scoring.py (combined, matcher
  alone, neighbour agreement alone), so the ablation is measured on exactly the same images;
- the baselines: index order, cosine to the tag's mean feature, and the in-sample matcher (the
  member trained on every fold, scoring images it trained on: what the site showed before
  cross-fitting, with oov tags in index order as then).

Each figure is reported over all images, over the images some member trained on (each scored
by the member that held it out) and over the held-out ones (no member trained on them: the test
split, and images added since training). Writes OUT/report/metrics.json and the report page
(export/report.py) into OUT/report/ and, from rank, into the version of the site it publishes. Without ground truth the page still
shows score distributions and each large tag's bottom images: what a curator needs to find bad tags.

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
    IN_SAMPLE: "in-sample matcher (before cross-fitting)",
}
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
            line += f"; published AUC {published[metrics.AUC]:.3f}, P@10 {published[metrics.P_AT_10]:.3f} over all images"
        else:
            line += "; no AUC (needs --ground-truth)"
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
        in_sample = columns[schema.MATCHER_IN_SAMPLE][idx]
        out[IN_SAMPLE][idx] = in_sample if np.isfinite(in_sample).all() else fallback
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
    labels = {r: RANKER_LABELS[r] for r in scores}
    labels[PUBLISHED] = f"{RANKER_LABELS[PUBLISHED]}: {RANKER_LABELS.get(published_ranker, published_ranker)}"
    result: dict[str, Any] = {
        "published_ranker": published_ranker,
        "description": SCORE_DESCRIPTION.get(published_ranker, ""),
        "rankers": labels,
        "counts": counts,
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
        result["subsets"][name] = sub
    return result, scores, np.where(known, labels, False)


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def format_table(result: dict[str, Any]) -> str:
    """One line per ranker, the published ranking first: AUC and P@10 over all published images,
    then AUC over the images the matcher trained on and over the held-out ones."""
    subsets = result.get("subsets") or {}
    all_rankers = (subsets.get(SUBSET_ALL) or {}).get("rankers") or {}
    if not all_rankers:
        return result.get("note") or metrics.NEEDS_GROUND_TRUTH
    labels = dict(result["rankers"])
    width = max(len("ranker"), *(len(v) for v in labels.values()))
    header = f"{'ranker':<{width}} | all AUC | all P@10 | trained-on AUC | held-out AUC | tags"
    lines = [header, "-" * len(header)]
    for ranker in all_rankers:
        a = all_rankers[ranker]
        t = ((subsets.get(SUBSET_IN_TRAINING) or {}).get("rankers") or {}).get(ranker) or {}
        h = ((subsets.get(SUBSET_HELD_OUT) or {}).get("rankers") or {}).get(ranker) or {}
        lines.append(
            f"{labels.get(ranker, ranker):<{width}} | {_fmt(a.get(metrics.AUC)):>7} | {_fmt(a.get(metrics.P_AT_10)):>8} | "
            f"{_fmt(t.get(metrics.AUC)):>14} | {_fmt(h.get(metrics.AUC)):>12} | {a.get('tags', 0):>4}"
        )
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
    training = schema.out_path(out, schema.TRAINING_JSON)
    if storage.exists(training):
        members = storage.read_json(training).get("members", [])
        result["training"] = {"members": members}
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
    table = format_table(result)
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


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output root holding rankings/ (local path or gs://...)")
    parser.add_argument("--ground-truth", default=None, help="JSON lines {uri, tag, true_tag}: enables AUC and P@10")
    return parser


def run(argv: list[str] | None = None) -> EvaluateResult:
    args = get_args_parser().parse_args(argv)
    return evaluate(args.out, args.ground_truth)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    _result = run()
    print(_result.report())
    print(_result.summary_line())
