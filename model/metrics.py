"""The measures behind the evaluation of the published rankings (export/evaluate.py).

For every tag with at least one truly-tagged and one mislabelled image (ground truth, e.g. the
demo corpus's), each ranker orders that tag's images and we measure

- ROC-AUC: the chance that a true image is ranked above a mislabelled one (ties count 0.5);
- precision@10: the fraction of the first min(10, n) images that truly show the tag;

then average over tags. The rankers themselves (published, matcher, neighbours, baselines) are
export/evaluate.py's; index order, the prototype's ranking without its model, is defined here.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

import numpy as np
from scipy.stats import rankdata

from model import schema, storage
from model.tags import image_id_for, normalize_tag

INDEX_ORDER = "index_order"
MEAN_FEATURE = "mean_feature"
AUC = "auc"
P_AT_10 = "p_at_10"
TOP_K = 10
NEEDS_GROUND_TRUTH = "AUC and P@10 need ground truth (--ground-truth): not computed"


# ---------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------
def load_ground_truth(path: str, keep_ids: set[str] | None = None) -> dict[str, str]:
    """image_id -> normalised true tag, from JSON lines {"uri", "tag", "true_tag"}."""
    truth: dict[str, str] = {}
    for line in storage.read_bytes(path).decode("utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        image_id = image_id_for(row[schema.URI])
        if keep_ids is None or image_id in keep_ids:
            truth[image_id] = normalize_tag(row[schema.TRUE_TAG])
    return truth


# ---------------------------------------------------------------------------
# Per-tag measures
# ---------------------------------------------------------------------------
def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC from average ranks, so tied scores count one half."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative")
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ranking_order(scores: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Indices by descending score; equal scores in ascending tiebreak (e.g. ordinal) order."""
    scores = np.asarray(scores, dtype=np.float64)
    secondary = np.arange(scores.size) if tiebreak is None else np.asarray(tiebreak)
    return np.lexsort((secondary, -scores))


def precision_at_k(scores: np.ndarray, labels: np.ndarray, k: int = TOP_K, tiebreak: np.ndarray | None = None) -> float:
    labels = np.asarray(labels, dtype=bool)
    if labels.size == 0:
        raise ValueError("precision@k of an empty ranking")
    top = ranking_order(scores, tiebreak)[: min(k, labels.size)]
    return float(labels[top].mean())


# ---------------------------------------------------------------------------
# Baseline scores
# ---------------------------------------------------------------------------
def index_order_scores(ordinals: np.ndarray) -> np.ndarray:
    """Earlier in the index ranks higher."""
    return -np.asarray(ordinals, dtype=np.float64)


# ---------------------------------------------------------------------------
# Over tags
# ---------------------------------------------------------------------------
def evaluate_rankings(
    tags: np.ndarray,
    labels: np.ndarray,
    ordinals: np.ndarray,
    scores: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    """Per-tag AUC and P@10 for every ranker, and their means over tags.

    tags, labels (true_tag == tag), ordinals and each ranker's scores are aligned per test image.
    A tag is evaluated when it has at least one true and one mislabelled image; a ranker whose
    score is nan for some image of the tag (e.g. no training image to average) skips that tag.
    Ties in a ranking are broken by index order, for P@10 as for the site.
    """
    tags = np.asarray(tags)
    labels = np.asarray(labels, dtype=bool)
    ordinals = np.asarray(ordinals)
    per_tag: list[dict[str, Any]] = []
    skipped_single_class = 0
    for tag in sorted(set(tags.tolist())):
        idx = np.flatnonzero(tags == tag)
        y = labels[idx]
        if y.all() or not y.any():
            skipped_single_class += 1
            continue
        entry: dict[str, Any] = {"tag": tag, "images": int(idx.size), "true": int(y.sum())}
        for ranker, ranker_scores in scores.items():
            s = np.asarray(ranker_scores, dtype=np.float64)[idx]
            if np.isnan(s).any():
                entry[ranker] = None
                continue
            entry[ranker] = {AUC: roc_auc(s, y), P_AT_10: precision_at_k(s, y, TOP_K, ordinals[idx])}
        per_tag.append(entry)
    return {
        "rankers": {ranker: _mean_over_tags(per_tag, ranker) for ranker in scores},
        "per_tag": per_tag,
        "tags_evaluated": len(per_tag),
        "tags_single_class": skipped_single_class,
    }


def _mean_over_tags(per_tag: Iterable[dict[str, Any]], ranker: str) -> dict[str, Any]:
    values = [e[ranker] for e in per_tag if e.get(ranker) is not None]
    if not values:
        return {AUC: None, P_AT_10: None, "tags": 0}
    return {
        AUC: float(np.mean([v[AUC] for v in values])),
        P_AT_10: float(np.mean([v[P_AT_10] for v in values])),
        "tags": len(values),
    }
