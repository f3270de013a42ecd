"""One tag's final scores from its signals: what `rank` publishes and what the evaluation replays.

Pure numpy, no Beam and no torch: rank calls it on each tag's images inside a DoFn, and the
evaluation calls it on the published components to measure every ranker on exactly the images
the site shows.

The signals of an image i under its tag t (all out of sample: none comes from a model that
trained on i with its own tag):

- matcher: cosine of the two towers of the matcher member that held i's fold out (or the mean of
  the members' cosines where no member trained on i);
- agreement: the share of i's nearest neighbours (by image features) that carry t, each weighted
  by its similarity. A wrongly tagged image sits among images of its true tag, so its share is low;
- mean feature: cosine of i's feature to the mean feature of t's other images.

Raw values are not comparable across signals, and the matcher's are not even comparable across
members (each member has its own scale), so each signal is standardised within the tag first:
the matcher per member group (each group's mean and spread shrunk toward the tag's, so a member
that scored three of the tag's images does not get three-image statistics), the others over the
tag. The published score is the sum of the z-scores in use, so it reads as "standard deviations
above this tag's typical image"; it is comparable down one tag's ranking, not across tags.
"""

from __future__ import annotations

import numpy as np

from model import schema

COMBINED = "combined"
MATCHER = "matcher"
NEIGHBOURS = "neighbours"
RANKERS = (COMBINED, MATCHER, NEIGHBOURS)
DEFAULT_RANKER = COMBINED

# What ranked a tag (site pages' `ranked_by`): the ranker's name, the mean feature where the
# matcher ranker meets a tag without a word vector, or index order without any signal.
BY_INDEX = "index"
BY_MEAN_FEATURE = "mean_feature"
BY_MEAN_FEATURE_AND_NEIGHBOURS = "mean_feature_neighbours"  # combined, for a tag without a word vector

# Which neighbour agreement ranks: each neighbour weighted by its similarity. Measured against the
# plain share on the demo (AUC 0.9958 vs 0.9952) and on the tuxpaint set (0.8888 vs 0.8811).
AGREEMENT_COLUMN = schema.AGREEMENT_WEIGHTED

# Pseudo-count of the shrinkage of a member group's mean and variance toward the tag's.
GROUP_PRIOR = 5.0
_EPS = 1e-12


def standardise(values: np.ndarray, groups: np.ndarray | None = None, prior: float = GROUP_PRIOR) -> np.ndarray:
    """z-scores of one tag's values; NaN stays NaN. With groups, each group has its own (shrunk)
    mean and spread. A constant signal gives zeros: it says nothing about the order."""
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, np.nan)
    ok = np.isfinite(v)
    if not ok.any():
        return out
    mean = v[ok].mean()
    var = v[ok].var()
    if groups is None:
        out[ok] = (v[ok] - mean) / np.sqrt(var) if var > _EPS else 0.0
        return out
    g = np.asarray(groups)
    for group in np.unique(g[ok]):
        sel = ok & (g == group)
        n = sel.sum()
        group_mean = (v[sel].sum() + prior * mean) / (n + prior)
        group_var = (((v[sel] - group_mean) ** 2).sum() + prior * var) / (n + prior)
        out[sel] = (v[sel] - group_mean) / np.sqrt(group_var) if group_var > _EPS else 0.0
    return out


def _sum_available(parts: list[np.ndarray]) -> np.ndarray | None:
    """Sum of the z-score arrays that exist for the tag; an image missing one counts it as 0."""
    present = [p for p in parts if np.isfinite(p).any()]
    if not present:
        return None
    return np.sum([np.nan_to_num(p, nan=0.0) for p in present], axis=0)


def tag_scores(
    ranker: str,
    *,
    matcher: np.ndarray,
    fold: np.ndarray,
    agreement: np.ndarray,
    mean_feature: np.ndarray,
) -> tuple[np.ndarray | None, str]:
    """(scores aligned with the tag's images, what ranked it); scores None: index order.

    combined: z(matcher) + z(agreement); for a tag without a word vector (no matcher score),
    z(mean feature) + z(agreement). matcher: z(matcher) alone. neighbours: z(agreement) alone.
    A ranker falls back to what exists (a tag without any signal keeps index order).
    """
    if ranker not in RANKERS:
        raise ValueError(f"unknown ranker {ranker!r}; choose from {RANKERS}")
    z_matcher = standardise(matcher, fold)
    z_agreement = standardise(agreement)
    has_matcher = bool(np.isfinite(z_matcher).any())
    if ranker == MATCHER:
        if not has_matcher:
            scores = _sum_available([standardise(mean_feature)])
            return (None, BY_INDEX) if scores is None else (scores, BY_MEAN_FEATURE)
        parts = [z_matcher]
    elif ranker == NEIGHBOURS:
        parts = [z_agreement]
    else:
        parts = [z_matcher if has_matcher else standardise(mean_feature), z_agreement]
        if not has_matcher:
            scores = _sum_available(parts)
            return (None, BY_INDEX) if scores is None else (scores, BY_MEAN_FEATURE_AND_NEIGHBOURS)
    scores = _sum_available(parts)
    return (None, BY_INDEX) if scores is None else (scores, ranker)
