from __future__ import annotations

import itertools

import numpy as np
import pytest

from model import metrics

ORACLE = "oracle"  # a ranker that knows the truth


def brute_force_auc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_perfect_inverted_and_all_tied():
    y = np.array([1, 1, 0, 0], bool)
    assert metrics.roc_auc(np.array([4, 3, 2, 1]), y) == 1.0
    assert metrics.roc_auc(np.array([1, 2, 3, 4]), y) == 0.0
    assert metrics.roc_auc(np.zeros(4), y) == 0.5


@pytest.mark.parametrize("seed", range(20))
def test_auc_matches_brute_force_with_ties(seed: int):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    scores = rng.integers(0, 5, n).astype(float)  # few distinct values: many ties
    labels = rng.random(n) < 0.4
    labels[0], labels[1] = True, False
    assert metrics.roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels))


def test_auc_needs_both_classes():
    with pytest.raises(ValueError):
        metrics.roc_auc(np.array([1.0, 2.0]), np.array([True, True]))


def test_precision_at_10_and_short_lists():
    scores = np.arange(20, 0, -1, dtype=float)  # already in descending order
    labels = np.array([True] * 7 + [False] * 13)
    assert metrics.precision_at_k(scores, labels) == pytest.approx(0.7)
    # fewer than 10 images: min(10, n)
    assert metrics.precision_at_k(scores[:4], labels[:4]) == 1.0
    assert metrics.precision_at_k(np.array([2.0, 1.0, 0.0]), np.array([False, True, True])) == pytest.approx(2 / 3)


def test_precision_ties_broken_by_tiebreak():
    labels = np.array([False] * 10 + [True] * 10)
    tied = np.zeros(20)
    assert metrics.precision_at_k(tied, labels, tiebreak=np.arange(20)) == 0.0
    assert metrics.precision_at_k(tied, labels, tiebreak=-np.arange(20)) == 1.0


def test_index_order_baseline_prefers_low_ordinals():
    ordinals = np.array([5, 0, 9, 2])
    order = metrics.ranking_order(metrics.index_order_scores(ordinals))
    assert ordinals[order].tolist() == [0, 2, 5, 9]


def crafted():
    """Two tags; for tag 'a' the true images come last in the index but lie on a's mean direction."""
    tags = np.array(["a"] * 6 + ["b"] * 4 + ["single"] * 3)
    labels = np.array([False, False, False, True, True, True] + [True, False, True, False] + [True] * 3)
    ordinals = np.arange(tags.size)
    mean_dir = np.array([1.0, 0.0])
    feats = np.array(
        [[0, 1], [0.1, 1], [-1, 0.2], [1, 0.1], [1, 0], [2, 0.3]]
        + [[1, 0], [0, 1], [1, 0.5], [0, 1]]
        + [[1, 1]] * 3,
        dtype=float,
    )
    means = np.stack([mean_dir, np.array([1.0, 0.2]), np.array([1.0, 1.0])])
    tag_means = means[[{"a": 0, "b": 1, "single": 2}[t] for t in tags]]
    cosines = np.sum(feats * tag_means, axis=1) / (np.linalg.norm(feats, axis=1) * np.linalg.norm(tag_means, axis=1))
    return tags, labels, ordinals, feats, cosines


def test_evaluate_rankings_known_answers():
    tags, labels, ordinals, _, mean_cos = crafted()
    perfect = labels.astype(float)  # an oracle ranker
    result = metrics.evaluate_rankings(
        tags,
        labels,
        ordinals,
        {ORACLE: perfect, metrics.INDEX_ORDER: metrics.index_order_scores(ordinals), metrics.MEAN_FEATURE: mean_cos},
    )
    assert result["tags_evaluated"] == 2 and result["tags_single_class"] == 1
    by_tag = {e["tag"]: e for e in result["per_tag"]}
    assert by_tag["a"][metrics.INDEX_ORDER][metrics.AUC] == 0.0  # true images all come last
    assert by_tag["a"][metrics.INDEX_ORDER][metrics.P_AT_10] == 0.5  # min(10, 6) = 6, 3 true
    assert by_tag["a"][metrics.MEAN_FEATURE][metrics.AUC] == 1.0
    assert by_tag["b"][metrics.INDEX_ORDER][metrics.AUC] == pytest.approx(brute_force_auc(-ordinals[6:10], labels[6:10]))
    assert by_tag["b"][metrics.MEAN_FEATURE][metrics.AUC] == 1.0
    rankers = result["rankers"]
    assert rankers[ORACLE][metrics.AUC] == 1.0
    assert rankers[metrics.INDEX_ORDER][metrics.AUC] == pytest.approx((0.0 + 0.75) / 2)
    assert rankers[metrics.MEAN_FEATURE]["tags"] == 2


def test_ranker_with_missing_scores_skips_the_tag():
    tags, labels, ordinals, _, _ = crafted()
    scores = np.where(tags == "a", np.nan, 1.0)
    result = metrics.evaluate_rankings(tags, labels, ordinals, {metrics.MEAN_FEATURE: scores})
    assert result["rankers"][metrics.MEAN_FEATURE]["tags"] == 1
