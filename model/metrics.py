"""The measures behind the evaluation of the published rankings (export/evaluate.py).

For every tag with at least one truly-tagged and one mislabelled image (ground truth, e.g. the
demo corpus's), each ranker orders that tag's images and we measure

- ROC-AUC: the chance that a true image is ranked above a mislabelled one (ties count 0.5);
- precision@10: the fraction of the first min(10, n) images that truly show the tag;
- R-precision: the fraction of the first R images that truly show the tag, R being the number of
  the tag's images that truly show it (precision where a perfect ranking would reach 1);

then average over tags. A tag with one image, with no image that truly shows it (all wrongly
tagged) or with no wrongly tagged image has no AUC; such tags are listed with the reason
(`tags_not_evaluated`), so a reader sees what the means leave out.

Without ground truth, `looks_like_other_tag` and `suspect_tags` find tags whose images mostly
look like another tag, from the neighbour lists alone: for curators, and measured against
ground truth where it exists (a tag whose images are all wrongly tagged has no AUC at all).

The rankers themselves (published, matcher, neighbours, baselines) are export/evaluate.py's;
index order, the prototype's ranking without its model, is defined here.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

from model import schema, storage
from model.tags import image_id_for, normalize_tag

INDEX_ORDER = "index_order"
MEAN_FEATURE = "mean_feature"
AUC = "auc"
P_AT_10 = "p_at_10"
R_PRECISION = "r_precision"
MEASURES = (AUC, P_AT_10, R_PRECISION)
TOP_K = 10
NEEDS_GROUND_TRUTH = "AUC, P@10 and R-precision need ground truth (--ground-truth): not computed"

# Why a tag has no AUC (tags_not_evaluated), checked in this order
ONE_IMAGE = "one_image"
ALL_WRONG = "all_wrong"  # no image truly shows the tag: no ranking of it can be right
NONE_WRONG = "none_wrong"  # every image shows the tag: nothing to push down
NOT_EVALUATED_REASONS = {
    ONE_IMAGE: "one image: nothing to rank",
    ALL_WRONG: "every image wrongly tagged: no ranking of it is right (see suspect tags)",
    NONE_WRONG: "no wrongly tagged image: any order is right",
}


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


def r_precision(scores: np.ndarray, labels: np.ndarray, tiebreak: np.ndarray | None = None) -> float:
    """Precision of the first R images, R = the number of true images (needs at least one)."""
    labels = np.asarray(labels, dtype=bool)
    r = int(labels.sum())
    if r == 0:
        raise ValueError("R-precision needs at least one true image")
    return precision_at_k(scores, labels, r, tiebreak)


def not_evaluated_reason(labels: np.ndarray) -> str | None:
    """Why a tag with these labels (True: the image truly shows the tag) has no AUC; None: it has one."""
    labels = np.asarray(labels, dtype=bool)
    if labels.size <= 1:
        return ONE_IMAGE
    if not labels.any():
        return ALL_WRONG
    if labels.all():
        return NONE_WRONG
    return None


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
    """Per-tag AUC, P@10 and R-precision for every ranker, and their means over tags.

    tags, labels (true_tag == tag), ordinals and each ranker's scores are aligned per test image.
    A tag is evaluated when it has at least one true and one mislabelled image; the others are
    listed in `tags_not_evaluated` with their reason (ONE_IMAGE, ALL_WRONG, NONE_WRONG). A ranker
    whose score is nan for some image of the tag (e.g. no training image to average) skips that
    tag. Ties in a ranking are broken by index order, for P@10 and R-precision as for the site.
    """
    tags = np.asarray(tags)
    labels = np.asarray(labels, dtype=bool)
    ordinals = np.asarray(ordinals)
    per_tag: list[dict[str, Any]] = []
    not_evaluated: list[dict[str, Any]] = []
    for tag in sorted(set(tags.tolist())):
        idx = np.flatnonzero(tags == tag)
        y = labels[idx]
        reason = not_evaluated_reason(y)
        if reason is not None:
            not_evaluated.append({"tag": tag, "images": int(idx.size), "true": int(y.sum()), "reason": reason})
            continue
        entry: dict[str, Any] = {"tag": tag, "images": int(idx.size), "true": int(y.sum())}
        for ranker, ranker_scores in scores.items():
            s = np.asarray(ranker_scores, dtype=np.float64)[idx]
            if np.isnan(s).any():
                entry[ranker] = None
                continue
            entry[ranker] = {
                AUC: roc_auc(s, y),
                P_AT_10: precision_at_k(s, y, TOP_K, ordinals[idx]),
                R_PRECISION: r_precision(s, y, ordinals[idx]),
            }
        per_tag.append(entry)
    by_reason = {reason: sum(e["reason"] == reason for e in not_evaluated) for reason in NOT_EVALUATED_REASONS}
    return {
        "rankers": {ranker: _mean_over_tags(per_tag, ranker) for ranker in scores},
        "per_tag": per_tag,
        "tags_evaluated": len(per_tag),
        "tags_single_class": len(not_evaluated),
        "tags_not_evaluated": {"count": len(not_evaluated), "by_reason": by_reason, "tags": not_evaluated},
    }


def _mean_over_tags(per_tag: Iterable[dict[str, Any]], ranker: str) -> dict[str, Any]:
    values = [e[ranker] for e in per_tag if e.get(ranker) is not None]
    if not values:
        return {**{m: None for m in MEASURES}, "tags": 0}
    return {**{m: float(np.mean([v[m] for v in values])) for m in MEASURES}, "tags": len(values)}


# ---------------------------------------------------------------------------
# Suspect tags: tags whose images mostly look like another tag (no ground truth needed)
# ---------------------------------------------------------------------------
SUSPECT_SHARE = 0.5  # a tag is suspect when more than this share of its images look like one other tag
SUSPECT_MIN_IMAGES = 3  # smaller tags are not listed: one or two images say little about a tag
SUSPECT_MIN_VOTES = 2  # an image looks like another tag only where at least this many neighbours carry it
# ... and only where that tag's share of its neighbours is at least this many times its share of all
# images: a large tag is among everyone's neighbours (a hub), which says nothing. Chosen on the
# tuxpaint set (an alphabets tag of 20% of the images drew 3 false suspects at 1, none at 2) with
# an all-wrong tag simulated in copies of it (ranked first at 1, 1.5, 2 and 3 where it was found).
SUSPECT_ENRICHMENT = 2.0
SUSPECT_EXAMPLES = 5


@dataclasses.dataclass
class LookAlikes:
    """Per (image, tag) pair, aligned with the pairs given to looks_like_other_tag."""

    other_tag: np.ndarray  # code of the other tag most of the image's neighbours carry; -1: none
    other_share: np.ndarray  # share of the image's neighbours that carry it; NaN: no neighbour list
    own_share: np.ndarray  # share carrying the image's own tag, of the most that tag could fill; NaN likewise
    looks_other: np.ndarray  # bool: the image looks like other_tag rather than its own


def _top_two(image: np.ndarray, tag: np.ndarray, votes: np.ndarray, n_images: int) -> tuple[np.ndarray, ...]:
    """Per image, the two tags most votes went to (ties: the smaller code) and their votes."""
    order = np.lexsort((tag, -votes, image))
    image, tag, votes = image[order], tag[order], votes[order]
    first = np.ones(image.size, dtype=bool)
    first[1:] = image[1:] != image[:-1]
    second = np.zeros(image.size, dtype=bool)
    second[1:] = ~first[1:] & first[:-1]
    out = []
    for pick in (first, second):
        t = np.full(n_images, -1, dtype=np.int64)
        v = np.zeros(n_images, dtype=np.int64)
        t[image[pick]] = tag[pick]
        v[image[pick]] = votes[pick]
        out += [t, v]
    return tuple(out)


def looks_like_other_tag(
    pair_image: np.ndarray, pair_tag: np.ndarray, edge_src: np.ndarray, edge_dst: np.ndarray
) -> LookAlikes:
    """Whether each (image, tag) pair's image looks like another tag, from its neighbours' tags.

    pair_image, pair_tag: integer codes of the (image, tag) pairs (an image may carry several
    tags); edge_src, edge_dst: integer image codes, one edge per (image, neighbour). Neighbours
    that carry no tag (codes outside the pairs, or negative) are left out.

    An image under tag t looks like another tag u when at least SUSPECT_MIN_VOTES of its
    neighbours carry u, no other tag is carried by more of them, u's share of its neighbours is
    above t's share of what t could fill (a tag of n images fills at most n - 1 of an image's
    neighbours, so a small tag's images do not look suspect merely because the tag is small), and
    u's share of its neighbours is at least SUSPECT_ENRICHMENT times u's share of all images.
    Vectorised: one sort of the votes, no loop over images or tags.
    """
    pair_image = np.asarray(pair_image, dtype=np.int64)
    pair_tag = np.asarray(pair_tag, dtype=np.int64)
    edge_src = np.asarray(edge_src, dtype=np.int64)
    edge_dst = np.asarray(edge_dst, dtype=np.int64)
    n_pairs = pair_image.size
    if n_pairs == 0:
        empty = np.zeros(0)
        return LookAlikes(np.zeros(0, dtype=np.int64), empty, empty, np.zeros(0, dtype=bool))
    n_tags = int(pair_tag.max()) + 1
    n_images = int(pair_image.max()) + 1
    count = np.bincount(pair_image, minlength=n_images)  # tags per image
    ok = (edge_src >= 0) & (edge_dst >= 0) & (edge_src < n_images) & (edge_dst < n_images)
    src, dst = edge_src[ok], edge_dst[ok]
    keep = (count[src] > 0) & (count[dst] > 0)
    src, dst = src[keep], dst[keep]
    k = np.bincount(src, minlength=n_images)[pair_image]  # neighbours that carry some tag
    # one vote per (pair, a neighbour's tag)
    if count.max() == 1:  # one tag per image: the common case
        pair_of = np.full(n_images, -1, dtype=np.int64)
        pair_of[pair_image] = np.arange(n_pairs)
        vote_pair, vote_tag = pair_of[src], pair_tag[pair_of[dst]]
    else:
        by_image = np.argsort(pair_image, kind="stable")
        start = np.cumsum(count) - count

        def expand(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            rep = count[images]
            within = np.arange(int(rep.sum())) - np.repeat(np.cumsum(rep) - rep, rep)
            return np.repeat(np.arange(images.size), rep), by_image[np.repeat(start[images], rep) + within]

        edge, vote_pair = expand(src)
        edge2, dst_pair = expand(dst[edge])
        vote_pair, vote_tag = vote_pair[edge2], pair_tag[dst_pair]
    keys, votes = np.unique(vote_pair * n_tags + vote_tag, return_counts=True)
    key_pair, key_tag = keys // n_tags, keys % n_tags
    own = key_tag == pair_tag[key_pair]
    own_votes = np.zeros(n_pairs, dtype=np.int64)
    own_votes[key_pair[own]] = votes[own]
    # per pair, the other tag with the most votes (keys are sorted: ties go to the smaller code)
    key_pair, key_tag, votes = key_pair[~own], key_tag[~own], votes[~own]
    other = np.full(n_pairs, -1, dtype=np.int64)
    other_votes = np.zeros(n_pairs, dtype=np.int64)
    if votes.size:
        first = np.flatnonzero(np.r_[True, key_pair[1:] != key_pair[:-1]])
        segment = np.cumsum(np.r_[True, key_pair[1:] != key_pair[:-1]]) - 1
        best = np.maximum.reduceat(votes, first)
        top = np.flatnonzero(votes == best[segment])
        top = top[np.r_[True, segment[top[1:]] != segment[top[:-1]]]]
        other[key_pair[top]] = key_tag[top]
        other_votes[key_pair[top]] = votes[top]
    capacity = np.minimum(k, np.bincount(pair_tag, minlength=n_tags)[pair_tag] - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        other_share = np.where(k > 0, other_votes / np.maximum(k, 1), np.nan)
        own_share = np.where(capacity > 0, np.minimum(own_votes / np.maximum(capacity, 1), 1.0), 0.0)
    own_share = np.where(k > 0, own_share, np.nan)
    tag_share = np.bincount(pair_tag, minlength=n_tags) / n_pairs
    enriched = other_share >= SUSPECT_ENRICHMENT * tag_share[np.maximum(other, 0)]
    looks = (k > 0) & (other_votes >= SUSPECT_MIN_VOTES) & (other_share > own_share) & enriched
    return LookAlikes(other, other_share, own_share, looks)


def suspect_tags(
    tag_names: Sequence[str],
    pair_tag: np.ndarray,
    pair_ids: Sequence[str],
    looks: LookAlikes,
    tiebreak: np.ndarray | None = None,
    *,
    threshold: float = SUSPECT_SHARE,
    min_images: int = SUSPECT_MIN_IMAGES,
    examples: int = SUSPECT_EXAMPLES,
) -> tuple[list[dict[str, Any]], int]:
    """(the suspect tags, most suspect first; how many tags were scored).

    tag_names[code] names each tag code; pair_tag, pair_ids (image ids) and tiebreak (e.g. index
    order, for the examples) are aligned with the pairs of `looks`. A tag with at least
    min_images images is scored by the share of its images (with a neighbour list) that look like
    one other tag (looks_like_other_tag), the tag most of them look like; it is suspect when that
    share is above threshold. Each entry names that other tag, the share, the share that look like
    any other tag, and up to `examples` image ids that look like the named tag most clearly. Most
    suspect first: by share, then the share like any other tag, then size, then name.

    Two tags whose images look like each other (one look split between two tags) are one finding:
    only the more suspect of the two is listed, and `share_back` says how many of the other tag's
    images look like it (every entry has it).
    """
    pair_tag = np.asarray(pair_tag, dtype=np.int64)
    n_tags = len(tag_names)
    if pair_tag.size == 0 or n_tags == 0:
        return [], 0
    tiebreak = np.arange(pair_tag.size) if tiebreak is None else np.asarray(tiebreak)
    images = np.bincount(pair_tag, minlength=n_tags)
    scored = np.bincount(pair_tag, weights=np.isfinite(looks.other_share), minlength=n_tags)
    looking = np.bincount(pair_tag[looks.looks_other], minlength=n_tags)
    with np.errstate(invalid="ignore", divide="ignore"):
        any_share = np.where(scored > 0, looking / np.maximum(scored, 1), np.nan)
    # per tag, the other tag most of its look-alike images look like
    l = looks.looks_other
    keys, votes = np.unique(pair_tag[l] * n_tags + looks.other_tag[l], return_counts=True)
    main, main_votes, _, _ = _top_two(keys // n_tags, keys % n_tags, votes, n_tags)
    eligible = (images >= min_images) & (scored > 0)
    share = np.where(scored > 0, main_votes / np.maximum(scored, 1), np.nan)
    listed = np.flatnonzero(eligible & (share > threshold))
    names = np.asarray(tag_names, dtype=object)
    listed = sorted(listed.tolist(), key=lambda t: (-share[t], -any_share[t], -images[t], str(names[t])))
    # a pair of tags that look like each other is listed once, under the more suspect one
    kept: list[int] = []
    kept_set: set[int] = set()
    for t in listed:
        if int(main[t]) in kept_set and main[main[t]] == t:
            continue
        kept.append(t)
        kept_set.add(t)
    listed = kept
    # how many of the named tag's images look like the listed one
    back = np.zeros(len(listed))
    if listed and keys.size:
        want = main[listed] * n_tags + np.asarray(listed)
        at = np.minimum(np.searchsorted(keys, want), keys.size - 1)
        back = np.where(keys[at] == want, votes[at], 0) / np.maximum(scored[main[listed]], 1)
    # examples: the pairs that look like their tag's named other tag, clearest first
    is_listed = np.zeros(n_tags, dtype=bool)
    is_listed[listed] = True
    cand = np.flatnonzero(l & is_listed[pair_tag] & (looks.other_tag == main[pair_tag]))
    cand = cand[np.lexsort((tiebreak[cand], -looks.other_share[cand], pair_tag[cand]))]
    bounds = np.flatnonzero(np.diff(pair_tag[cand])) + 1
    example_ids = {int(pair_tag[g[0]]): [str(pair_ids[i]) for i in g[:examples]] for g in np.split(cand, bounds) if g.size}
    result = [
        {
            "tag": str(names[t]),
            "images": int(images[t]),
            "images_with_neighbours": int(scored[t]),
            "other_tag": str(names[main[t]]),
            "share": float(share[t]),
            "share_any_other": float(any_share[t]),
            "share_back": float(back[i]),
            "examples": example_ids.get(t, []),
        }
        for i, t in enumerate(listed)
    ]
    return result, int(eligible.sum())
