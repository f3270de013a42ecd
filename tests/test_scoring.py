"""The ranker registry (model/scoring.py) and the centroid margin (model/centroids.py)."""

from __future__ import annotations

import numpy as np
import pytest

from model import centroids, contrast, schema, scoring


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_every_publishable_ranker_is_registered_with_words_for_the_site():
    assert scoring.DEFAULT_RANKER in scoring.PUBLISHABLE
    for name in scoring.PUBLISHABLE:
        ranker = scoring.REGISTRY[name]
        assert ranker.signals and ranker.label and ranker.explains and ranker.description
        if ranker.fallback:
            assert scoring.explanations()[ranker.fallback_name]


def test_combined_sums_the_z_scores_and_falls_back_without_a_matcher():
    fold = np.array([0, 0, 1, 1])
    agreement = np.array([0.9, 0.1, 0.5, 0.3])
    margin = np.array([0.2, -0.1, 0.0, 0.1])
    matcher = np.array([1.0, 0.0, 2.0, 1.0])
    signals = {schema.AGREEMENT_WEIGHTED: agreement, schema.CENTROID_MARGIN: margin}
    scores, by = scoring.tag_scores(scoring.COMBINED, fold=fold, matcher=matcher, **signals)
    expected = scoring.standardise(matcher, fold) + scoring.standardise(agreement) + 2 * scoring.standardise(margin)
    assert by == scoring.COMBINED
    np.testing.assert_allclose(scores, expected)
    scores, by = scoring.tag_scores(scoring.COMBINED, fold=fold, matcher=np.full(4, np.nan), **signals)
    assert by == "combined_fallback"
    np.testing.assert_allclose(scores, scoring.standardise(agreement) + 2 * scoring.standardise(margin))
    same, by = scoring.tag_scores(scoring.TRAINING_FREE, fold=fold, **signals)
    np.testing.assert_allclose(same, scores)  # the published combination without its matcher
    scores, by = scoring.tag_scores(scoring.NEIGHBOURS, fold=fold, **{schema.AGREEMENT_WEIGHTED: np.full(4, np.nan)})
    assert scores is None and by == scoring.BY_INDEX


def test_an_unknown_ranker_is_refused():
    with pytest.raises(ValueError, match="unknown ranker"):
        scoring.tag_scores("best", fold=np.zeros(2))


def _index(features: np.ndarray, tags: np.ndarray, n_tags: int) -> centroids.CentroidIndex:
    unit = _unit(features)
    sums = np.zeros((n_tags, features.shape[1]), np.float32)
    np.add.at(sums, tags, unit)
    return centroids.CentroidIndex(sums, np.bincount(tags, minlength=n_tags), lambda c: _unit(c))


def _margins(index: centroids.CentroidIndex, features: np.ndarray, tags: np.ndarray) -> np.ndarray:
    unit = _unit(features).astype(np.float32)
    rows = np.arange(len(features))
    return index.margins(unit, unit, rows, tags, lambda cand: cand == tags[:, None])


def test_an_image_that_looks_like_another_tag_gets_a_negative_margin():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 16) * 5
    truth = np.repeat(np.arange(3), 10)
    features = centres[truth] + rng.normal(scale=0.5, size=(30, 16))
    tags = truth.copy()
    tags[[0, 1]] = 1  # two pictures of class 0 carry tag 1
    m = _margins(_index(features, tags, 3), features, tags)
    assert m[0] < 0 and m[1] < 0
    correct = np.flatnonzero(tags == truth)
    assert (m[correct] > 0).mean() > 0.9


def test_the_own_tag_leaves_the_image_out_and_a_lone_image_has_no_margin():
    features = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.1]])
    tags = np.array([0, 1, 1, 2])  # tag 2 has one image: nothing to leave it out of
    m = _margins(_index(features, tags, 3), features, tags)
    assert np.isnan(m[3])
    # image 0 alone under tag 0 would match its own centroid perfectly; left out, tag 0 has nothing
    assert np.isnan(m[0])
    assert m[1] == pytest.approx(1.0 - _unit(features)[3] @ _unit(features)[1], abs=1e-6)


def test_tags_the_image_carries_are_never_its_other_tag():
    features = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [0.0, 1.0]])
    tags = np.array([0, 0, 1, 2, 2])
    index = _index(features, tags, 3)
    unit = _unit(features).astype(np.float32)
    # image 0 carries tags 0 and 1: under tag 0 its other tag must be 2, not its own tag 1
    carries = lambda cand: np.isin(cand, [0, 1])  # noqa: E731
    m = index.margins(unit[:1], unit[:1], np.array([0]), np.array([0]), carries)
    assert m[0] == pytest.approx(1.0 - 0.0, abs=1e-6)


def test_the_ivf_candidate_search_finds_the_same_other_tags_on_separated_tags(monkeypatch):
    rng = np.random.default_rng(1)
    n_tags, per_tag, dim = 400, 5, 32
    centres = _unit(rng.normal(size=(n_tags, dim))) * 4
    tags = np.repeat(np.arange(n_tags), per_tag)
    features = centres[tags] + rng.normal(scale=0.3, size=(len(tags), dim))
    exact = _margins(_index(features, tags, n_tags), features, tags)
    monkeypatch.setattr(contrast, "EXACT_MAX_TAGS", 100)
    approximate = _index(features, tags, n_tags)
    assert not isinstance(approximate.index, contrast.ExactInnerProduct)
    np.testing.assert_allclose(_margins(approximate, features, tags), exact, atol=1e-5)
