"""The ranker registry: one tag's final scores from its signals, for what `rank` publishes, what
the evaluation replays, what the "probably" strip explains and what the site says ranked a tag.

Pure numpy, no Beam and no torch: rank calls it on each tag's images inside a DoFn, and the
evaluation calls it on the published components to measure every ranker on exactly the images
the site shows.

The signals of an image i under its tag t (all out of sample: none comes from a model that
trained on i with its own tag):

- matcher: the class-contrastive score of the matcher member that held i's fold out (its logit
  for t minus its best logit for another tag; the members' mean where no member trained on i);
- agreement: the share of i's nearest neighbours (by image features) that carry t, each weighted
  by its similarity. A wrongly tagged image sits among images of its true tag, so its share is low;
- centroid margin: cosine of i to the mean unit feature of t's other images minus its cosine to
  the nearest other tag's mean (model/centroids.py). Needs no training and no word vector.

Raw values are not comparable across signals, and the matcher's are not even comparable across
members (each member has its own scale), so each signal is standardised within the tag first:
the matcher per member group (each group's mean and spread shrunk toward the tag's, so a member
that scored three of the tag's images does not get three-image statistics), the others over the
tag. A ranker's score is the sum of the z-scores it uses, so it reads as "standard deviations
above this tag's typical image"; it is comparable down one tag's ranking, not across tags. A
ranker falls back to the signals a tag has (a tag without a matcher score uses the training-free
ones; a tag without any keeps index order).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from model import schema

# Signals: the rankings columns a ranker can combine.
MATCHER_SIGNAL = schema.MATCHER
AGREEMENT_SIGNAL = schema.AGREEMENT_WEIGHTED  # weighted beat the plain share on both sets (README)
CENTROID_SIGNAL = schema.CENTROID_MARGIN
MEAN_FEATURE_SIGNAL = schema.MEAN_FEATURE
SIGNAL_COLUMNS = (MATCHER_SIGNAL, AGREEMENT_SIGNAL, CENTROID_SIGNAL, MEAN_FEATURE_SIGNAL)
GROUPED_SIGNALS = frozenset({MATCHER_SIGNAL})  # standardised per matcher member group

BY_INDEX = "index"  # what ranked a tag that no signal scored: index order

# Pseudo-count of the shrinkage of a member group's mean and variance toward the tag's.
GROUP_PRIOR = 5.0
_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class Ranker:
    """A named sum of standardised signals, with what it falls back to and how it is described."""

    name: str
    signals: tuple[str, ...]
    fallback: tuple[str, ...]  # used instead when the tag lacks the lead signal (e.g. no word vector: no matcher)
    label: str  # the evaluation's table
    explains: str  # the site's one line on what ordered a tag
    description: str  # the report page's paragraph
    fallback_explains: str = ""
    weights: tuple[float, ...] = ()  # per signal (default 1 each); the fallback weighs its signals the same

    def weight(self, signal: str) -> float:
        return self.weights[self.signals.index(signal)] if self.weights and signal in self.signals else 1.0

    @property
    def fallback_name(self) -> str:
        return f"{self.name}_fallback"


_STANDARDISED = "standard deviations above the tag's typical image"

COMBINED = "combined"
MATCHER = "matcher"
NEIGHBOURS = "neighbours"
CENTROID = "centroid"
TRAINING_FREE = "training_free"
MEAN_FEATURE = "mean_feature"

REGISTRY: dict[str, Ranker] = {
    r.name: r
    for r in (
        Ranker(
            COMBINED,
            (MATCHER_SIGNAL, AGREEMENT_SIGNAL, CENTROID_SIGNAL),
            (AGREEMENT_SIGNAL, CENTROID_SIGNAL),
            "combined: matcher + neighbour agreement + 2 x centroid margin",
            "the matcher, the image's nearest neighbours and the tag's typical look agree it shows the tag",
            "Each image's score is a weighted sum of three standardised signals, each computed within the tag: the "
            "matcher's margin (how much more the cross-fitted member that never trained on the image prefers this tag over "
            "the best other tag), the share of the image's nearest neighbours that carry the tag, and, counted twice, the "
            "centroid margin (how much closer the image is to the tag's other images than to the nearest other tag's). "
            f"The score is in {_STANDARDISED}.",
            "the image's nearest neighbours and the tag's typical look agree it shows the tag",
            # the centroid margin was the strongest single signal on both evaluation sets (README's ablation)
            weights=(1.0, 1.0, 2.0),
        ),
        Ranker(
            MATCHER,
            (MATCHER_SIGNAL,),
            (CENTROID_SIGNAL,),
            "matcher alone (out of sample)",
            "the matcher prefers this tag over the others for the image",
            "Each image's score is the matcher's margin from the cross-fitted member that never trained on the image, "
            f"standardised within the tag per member, in {_STANDARDISED}. A tag the matcher cannot score uses the centroid margin.",
            "the image is closer to the tag's other images than to any other tag's",
        ),
        Ranker(
            NEIGHBOURS,
            (AGREEMENT_SIGNAL,),
            (),
            "neighbour agreement alone",
            "many of the image's nearest neighbours carry the tag",
            "Each image's score is the share of its nearest neighbours (by image features) that carry the tag, "
            f"standardised within the tag, in {_STANDARDISED}.",
        ),
        Ranker(
            CENTROID,
            (CENTROID_SIGNAL,),
            (),
            "centroid margin alone (no training)",
            "the image is closer to the tag's other images than to any other tag's",
            "Each image's score is its cosine to the mean feature of the tag's other images minus its cosine to the "
            f"nearest other tag's mean feature, standardised within the tag, in {_STANDARDISED}.",
        ),
        Ranker(
            TRAINING_FREE,
            (AGREEMENT_SIGNAL, CENTROID_SIGNAL),
            (),
            "combined without the matcher: agreement + 2 x centroid margin",
            "the image's nearest neighbours and the tag's typical look agree it shows the tag",
            "Each image's score is the standardised neighbour agreement plus twice the standardised centroid margin "
            f"(the published combination without its trained model), in {_STANDARDISED}.",
            weights=(1.0, 2.0),
        ),
        Ranker(
            MEAN_FEATURE,
            (MEAN_FEATURE_SIGNAL,),
            (),
            "cosine to tag's mean feature (baseline)",
            "the image looks like the tag's other images",
            f"Each image's score is its cosine to the mean feature of the tag's other images, in {_STANDARDISED}.",
        ),
    )
}
RANKERS = tuple(REGISTRY)
PUBLISHABLE = (COMBINED, MATCHER, NEIGHBOURS, CENTROID, TRAINING_FREE)
DEFAULT_RANKER = COMBINED


def explanations() -> dict[str, str]:
    """`ranked_by` value -> the site's one line about it, for every value rank can publish."""
    lines = {r.name: r.explains for r in REGISTRY.values()}
    lines.update({r.fallback_name: r.fallback_explains for r in REGISTRY.values() if r.fallback})
    return lines


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


def standardised_signals(signals: Mapping[str, np.ndarray], fold: np.ndarray) -> dict[str, np.ndarray]:
    """Every signal's within-tag z-scores (the matcher per member group): the one standardisation
    that rank, the evaluation and the "probably" strip share."""
    return {name: standardise(values, fold if name in GROUPED_SIGNALS else None) for name, values in signals.items()}


def _sum_available(parts: list[tuple[float, np.ndarray]]) -> np.ndarray | None:
    """Weighted sum of the z-score arrays that exist for the tag; an image missing one counts it as 0."""
    present = [(w, p) for w, p in parts if np.isfinite(p).any()]
    if not present:
        return None
    return np.sum([w * np.nan_to_num(p, nan=0.0) for w, p in present], axis=0)


def scores_from_z(ranker: str, z: Mapping[str, np.ndarray]) -> tuple[np.ndarray | None, str]:
    """(scores, what ranked the tag) from already standardised signals."""
    if ranker not in REGISTRY:
        raise ValueError(f"unknown ranker {ranker!r}; choose from {RANKERS}")
    spec = REGISTRY[ranker]
    lead = z.get(spec.signals[0])
    if spec.fallback and (lead is None or not np.isfinite(lead).any()):
        scores = _sum_available([(spec.weight(s), z[s]) for s in spec.fallback if s in z])
        return (None, BY_INDEX) if scores is None else (scores, spec.fallback_name)
    scores = _sum_available([(spec.weight(s), z[s]) for s in spec.signals if s in z])
    return (None, BY_INDEX) if scores is None else (scores, spec.name)


def tag_scores(ranker: str, *, fold: np.ndarray, **signals: np.ndarray) -> tuple[np.ndarray | None, str]:
    """(scores aligned with the tag's images, what ranked it); scores None: index order.

    signals: the tag's columns by name (matcher, agreement_weighted, centroid_margin, ...); a
    signal that is missing or all NaN counts as absent.
    """
    return scores_from_z(ranker, standardised_signals(signals, np.asarray(fold)))
