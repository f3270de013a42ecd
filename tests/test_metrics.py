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


# ---------------------------------------------------------------------------
# R-precision
# ---------------------------------------------------------------------------
def test_r_precision_hand_computed():
    # ranked T F T T F: R = 3 true images, the first 3 hold 2 of them
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    labels = np.array([True, False, True, True, False])
    assert metrics.r_precision(scores, labels) == pytest.approx(2 / 3)
    # one true image: precision of the top image alone
    assert metrics.r_precision(scores, np.array([False, True, False, False, False])) == 0.0
    assert metrics.r_precision(scores, np.array([True, False, False, False, False])) == 1.0
    # every true image first: 1, however many there are
    assert metrics.r_precision(scores, np.array([True, True, True, True, False])) == 1.0
    # R differs from P@10: 12 images, 4 true, ranked T T F F T T F...: R-prec 2/4, P@10 4/10
    s12 = np.arange(12, 0, -1, dtype=float)
    y12 = np.array([True, True, False, False, True, True] + [False] * 6)
    assert metrics.r_precision(s12, y12) == 0.5
    assert metrics.precision_at_k(s12, y12) == pytest.approx(0.4)


def test_r_precision_ties_broken_by_tiebreak_and_needs_a_true_image():
    labels = np.array([False, False, True, True])
    tied = np.zeros(4)
    assert metrics.r_precision(tied, labels, tiebreak=np.arange(4)) == 0.0
    assert metrics.r_precision(tied, labels, tiebreak=-np.arange(4)) == 1.0
    with pytest.raises(ValueError):
        metrics.r_precision(np.array([1.0, 0.0]), np.array([False, False]))


def test_evaluate_rankings_r_precision_per_tag_and_mean():
    tags, labels, ordinals, _, mean_cos = crafted()
    result = metrics.evaluate_rankings(
        tags, labels, ordinals, {metrics.INDEX_ORDER: metrics.index_order_scores(ordinals), metrics.MEAN_FEATURE: mean_cos}
    )
    by_tag = {e["tag"]: e for e in result["per_tag"]}
    # a: F F F T T T in index order, R = 3: the first three are all wrong
    assert by_tag["a"][metrics.INDEX_ORDER][metrics.R_PRECISION] == 0.0
    assert by_tag["a"][metrics.MEAN_FEATURE][metrics.R_PRECISION] == 1.0
    # b: T F T F in index order, R = 2: one of the first two
    assert by_tag["b"][metrics.INDEX_ORDER][metrics.R_PRECISION] == 0.5
    assert result["rankers"][metrics.INDEX_ORDER][metrics.R_PRECISION] == pytest.approx(0.25)
    assert result["rankers"][metrics.MEAN_FEATURE][metrics.R_PRECISION] == 1.0


# ---------------------------------------------------------------------------
# Tags without an AUC
# ---------------------------------------------------------------------------
def test_tags_not_evaluated_listed_with_reason():
    tags, labels, ordinals, _, _ = crafted()  # "single": 3 images, all truly tagged
    tags = np.concatenate([tags, ["one", "wrong", "wrong", "wrong"]])
    labels = np.concatenate([labels, [True, False, False, False]])
    ordinals = np.arange(tags.size)
    result = metrics.evaluate_rankings(tags, labels, ordinals, {metrics.INDEX_ORDER: metrics.index_order_scores(ordinals)})
    missing = result["tags_not_evaluated"]
    assert missing["count"] == 3 and result["tags_evaluated"] == 2
    assert {e["tag"]: (e["reason"], e["images"], e["true"]) for e in missing["tags"]} == {
        "one": (metrics.ONE_IMAGE, 1, 1),
        "wrong": (metrics.ALL_WRONG, 3, 0),
        "single": (metrics.NONE_WRONG, 3, 3),
    }
    assert missing["by_reason"] == {metrics.ONE_IMAGE: 1, metrics.ALL_WRONG: 1, metrics.NONE_WRONG: 1}
    # a one-image tag is "one image" even when its image is wrongly tagged
    assert metrics.not_evaluated_reason(np.array([False])) == metrics.ONE_IMAGE
    assert metrics.not_evaluated_reason(np.array([True, False])) is None


# ---------------------------------------------------------------------------
# Look-alikes and suspect tags
# ---------------------------------------------------------------------------
def lookalike_case():
    """Images 0-29: tags a, b, c, d, e (6 images each); image i's neighbours given per image.

    Image 0 (tag a) has neighbours 6, 7, 8 (b) and 1 (a): b 3/4 against a 1/4 -> looks like b.
    Image 1 (tag a) has neighbours 0, 2, 3 (a) and 6 (b): its own tag wins.
    Image 2 (tag a) has neighbours 6 (b), 12 (c), 18 (d), 24 (e): no tag has two votes.
    """
    pair_image = np.arange(30)
    pair_tag = np.repeat(np.arange(5), 6)
    lists = {0: [6, 7, 8, 1], 1: [0, 2, 3, 6], 2: [6, 12, 18, 24]}
    src = np.concatenate([[i] * len(v) for i, v in lists.items()])
    dst = np.concatenate(list(lists.values()))
    return pair_image, pair_tag, src, dst


def test_looks_like_other_tag_hand_computed():
    pair_image, pair_tag, src, dst = lookalike_case()
    looks = metrics.looks_like_other_tag(pair_image, pair_tag, src, dst)
    assert looks.looks_other[:3].tolist() == [True, False, False]
    assert looks.other_tag[0] == 1 and looks.other_share[0] == 0.75 and looks.own_share[0] == 0.25
    assert looks.other_tag[1] == 1 and looks.own_share[1] == 0.75
    assert looks.other_share[2] == 0.25 and looks.own_share[2] == 0.0  # one vote each: not enough
    # images without a neighbour list are not scored
    assert np.isnan(looks.other_share[3:]).all() and not looks.looks_other[3:].any()


def test_a_small_tag_is_not_suspect_for_being_small():
    # tag s has 3 images: each has both others as neighbours, plus 3 of tag a (20 images) -> a has
    # 3 of 5 votes, s 2; but s can fill at most 2 neighbours, and fills them all
    pair_tag = np.array([0] * 20 + [1] * 20 + [2] * 20 + [3] * 3)
    pair_image = np.arange(pair_tag.size)
    s = [60, 61, 62]
    src, dst = [], []
    for i in s:
        for j in [x for x in s if x != i] + [0, 1, 2]:
            src.append(i)
            dst.append(j)
    looks = metrics.looks_like_other_tag(pair_image, pair_tag, np.array(src), np.array(dst))
    assert looks.own_share[60:].tolist() == [1.0, 1.0, 1.0]
    assert not looks.looks_other[60:].any()
    listed, scored = metrics.suspect_tags(["a", "b", "c", "s"], pair_tag, [str(i) for i in pair_image], looks)
    assert listed == [] and scored == 1  # only s has neighbour lists


def test_a_tag_everyone_neighbours_is_no_evidence():
    # tag h holds half of all images: an image of tag t (no own neighbours) whose 4 neighbours
    # are 3 h and 1 other has h at 3/4, under twice h's share of all images (2 x 1/2)
    pair_tag = np.array([0] * 50 + [1] * 10 + [2] * 40)  # h, t, rest
    pair_image = np.arange(100)
    src = np.array([50] * 4)
    dst = np.array([0, 1, 2, 60])
    looks = metrics.looks_like_other_tag(pair_image, pair_tag, src, dst)
    assert looks.other_tag[50] == 0 and looks.other_share[50] == 0.75
    assert not looks.looks_other[50]
    # the same neighbours from a tag of a tenth of the images do count
    pair_tag2 = np.array([0] * 10 + [1] * 10 + [2] * 80)
    looks2 = metrics.looks_like_other_tag(pair_image, pair_tag2, np.array([10] * 4), np.array([0, 1, 2, 20]))
    assert looks2.looks_other[10] and looks2.other_tag[10] == 0


def test_suspect_tags_order_examples_and_threshold():
    rng = np.random.default_rng(0)
    names = ["apple", "lantern", "pear", "plum", "fig", "kiwi"]
    sizes = [30, 10, 20, 20, 20, 20]
    pair_tag = np.repeat(np.arange(len(names)), sizes)
    pair_image = np.arange(pair_tag.size)
    members = {t: np.flatnonzero(pair_tag == t) for t in range(len(names))}
    src, dst = [], []
    for i in pair_image:
        t = pair_tag[i]
        if t == 1:  # lantern's images sit among apple's
            nb = list(rng.choice(members[0], 7, replace=False)) + [j for j in members[1] if j != i][:3]
        elif t == 2 and i < members[2][0] + 12:  # 12 of pear's 20 look like plum
            nb = list(rng.choice(members[3], 6, replace=False)) + [j for j in members[2] if j != i][:4]
        else:
            nb = [j for j in members[t] if j != i][:10]
        src += [i] * len(nb)
        dst += nb
    looks = metrics.looks_like_other_tag(pair_image, pair_tag, np.array(src), np.array(dst))
    ids = [f"id{i:03d}" for i in pair_image]
    listed, scored = metrics.suspect_tags(names, pair_tag, ids, looks, examples=3)
    assert scored == len(names)
    assert [(e["tag"], e["other_tag"]) for e in listed] == [("lantern", "apple"), ("pear", "plum")]
    assert listed[0]["share"] == 1.0 and listed[0]["images"] == 10
    assert listed[1]["share"] == pytest.approx(12 / 20) and listed[1]["share_any_other"] == pytest.approx(12 / 20)
    assert len(listed[0]["examples"]) == 3 and all(ids.index(x) in members[1] for x in listed[0]["examples"])
    # pear's examples are pear images that look like plum
    assert all(members[2][0] <= ids.index(x) < members[2][0] + 12 for x in listed[1]["examples"])
    # a stricter threshold leaves only the all-wrong tag
    listed, _ = metrics.suspect_tags(names, pair_tag, ids, looks, threshold=0.7)
    assert [e["tag"] for e in listed] == ["lantern"]


def test_suspect_tags_empty():
    looks = metrics.looks_like_other_tag(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0))
    assert metrics.suspect_tags([], np.zeros(0), [], looks) == ([], 0)


def test_two_tags_of_one_look_are_listed_once_under_the_more_suspect():
    # tags big (30) and small (20) share one look: each image's 10 neighbours are drawn from all
    # 50 by the tags' sizes, so most of small's images look like big, and some of big's like small
    rng = np.random.default_rng(1)
    pair_tag = np.array([0] * 30 + [1] * 20 + [2] * 40 + [3] * 40 + [4] * 40)
    pair_image = np.arange(pair_tag.size)
    src, dst = [], []
    for i in range(50):
        big = [j for j in range(30) if j != i]
        small = [j for j in range(30, 50) if j != i]
        nb = list(rng.choice(big, 6, replace=False)) + list(rng.choice(small, 4, replace=False))
        if i < 30 and i % 2:  # half of big's images see small as much as big
            nb = list(rng.choice(big, 4, replace=False)) + list(rng.choice(small, 6, replace=False))
        src += [i] * 10
        dst += nb
    for i in range(50, pair_tag.size):  # the other tags keep to themselves
        same = [j for j in pair_image[pair_tag == pair_tag[i]] if j != i]
        src += [i] * 10
        dst += list(rng.choice(same, 10, replace=False))
    looks = metrics.looks_like_other_tag(pair_image, pair_tag, np.array(src), np.array(dst))
    ids = [str(i) for i in pair_image]
    alone = metrics.suspect_tags(["big", "small", "c", "d", "e"], pair_tag, ids, looks, threshold=0.0)[0]
    assert [(e["tag"], e["other_tag"]) for e in alone] == [("small", "big")]
    assert alone[0]["share"] == 1.0 and alone[0]["share_back"] == pytest.approx(15 / 30)


def brute_force_looks(pair_image, pair_tag, src, dst):
    """looks_like_other_tag's rule, one pair at a time with dicts."""
    tags_of: dict[int, list[int]] = {}
    for i, t in zip(pair_image.tolist(), pair_tag.tolist()):
        tags_of.setdefault(i, []).append(t)
    size = {t: int((pair_tag == t).sum()) for t in set(pair_tag.tolist())}
    n = len(pair_image)
    result = []
    for i, t in zip(pair_image.tolist(), pair_tag.tolist()):
        nbs = [j for s, j in zip(src.tolist(), dst.tolist()) if s == i and j in tags_of]
        if not nbs:
            result.append((-1, False))
            continue
        votes: dict[int, int] = {}
        for j in nbs:
            for u in tags_of[j]:
                votes[u] = votes.get(u, 0) + 1
        others = sorted((-v, u) for u, v in votes.items() if u != t)
        if not others:
            result.append((-1, False))
            continue
        u, v = others[0][1], -others[0][0]
        cap = min(len(nbs), size[t] - 1)
        own = min(votes.get(t, 0) / cap, 1.0) if cap > 0 else 0.0
        looks = v >= metrics.SUSPECT_MIN_VOTES and v / len(nbs) > own and v / len(nbs) >= metrics.SUSPECT_ENRICHMENT * size[u] / n
        result.append((u, looks))
    return result


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("multi", [False, True])
def test_looks_like_other_tag_matches_brute_force(seed: int, multi: bool):
    rng = np.random.default_rng(seed)
    n_images, n_tags = 60, 8
    pair_image = np.arange(n_images)
    pair_tag = rng.integers(0, n_tags, n_images)
    if multi:  # a few images carry a second tag (the general path)
        extra = rng.choice(n_images, 10, replace=False)
        second = (pair_tag[extra] + 1 + rng.integers(0, n_tags - 1, extra.size)) % n_tags
        pair_image, pair_tag = np.concatenate([pair_image, extra]), np.concatenate([pair_tag, second])
    # neighbours lean toward a class: mostly same tag, some other, a few unknown ids (-1, 999)
    src, dst = [], []
    for i in range(n_images):
        for _ in range(int(rng.integers(0, 9))):
            src.append(i)
            dst.append(int(rng.choice([*range(n_images), -1, 999])))
    src, dst = np.array(src), np.array(dst)
    looks = metrics.looks_like_other_tag(pair_image, pair_tag, src, dst)
    expected = brute_force_looks(pair_image, pair_tag, src, dst)
    assert looks.looks_other.tolist() == [e[1] for e in expected]
    assert looks.other_tag.tolist() == [e[0] for e in expected]
    assert looks.looks_other.any() or seed  # some cases do look like another tag
