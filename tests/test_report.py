"""export/report.py: the evaluation page renders from generated rankings with known scores."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from export import report
from export.site_data import thumbnail_path
from model import schema

HOSTILE = '<script>alert("x")</script>'
THUMB_PREFIX = "../site/"


def make_rankings(sizes: dict[str, int], seed: int = 0) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Rankings with a descending published score per tag; every third image wrongly tagged.

    Returns the table, the published scores and the labels, aligned with the rows.
    """
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {name: [] for name in schema.RANKINGS_SCHEMA.names}
    ordinal = 0
    for t, (tag, n) in enumerate(sizes.items()):
        scores = np.sort(rng.random(n))[::-1]
        for r in range(n):
            cols[schema.TAG].append(tag)
            cols[schema.RANK].append(r + 1)
            cols[schema.IMAGE_ID].append(f"{t:02d}{r:04d}abcdef")
            cols[schema.URI].append(f"images/{t}-{r}.png")
            cols[schema.PUBLIC_URI].append(f"images/{t}-{r}.png")
            cols[schema.SCORE].append(float(scores[r]))
            for name in (schema.MATCHER, schema.MATCHER_IN_SAMPLE, schema.AGREEMENT, schema.AGREEMENT_WEIGHTED, schema.MEAN_FEATURE, schema.CENTROID_MARGIN):
                cols[name].append(float(rng.random()))
            cols[schema.FOLD].append(r % 3)
            cols[schema.ORDINAL].append(ordinal)
            cols[schema.SPLIT].append(schema.SPLIT_TEST if r % 5 == 0 else schema.SPLIT_TRAIN)
            ordinal += 1
    table = pa.Table.from_pydict(cols, schema=schema.RANKINGS_SCHEMA)
    published = np.asarray(cols[schema.SCORE], dtype=np.float64)
    labels = np.array([rank % 3 != 0 for rank in cols[schema.RANK]])
    return table, published, labels


def make_metrics(tags: list[str], with_truth: bool = True) -> dict:
    def rankers(auc_pub: float) -> dict:
        if not with_truth:
            return {}
        return {
            "combined": {"auc": auc_pub, "p_at_10": 0.875, "r_precision": 0.8642, "tags": len(tags)},
            "index_order": {"auc": 0.5123, "p_at_10": 0.6, "r_precision": 0.6172, "tags": len(tags)},
            "dead": {"auc": None, "p_at_10": None, "r_precision": None, "tags": 0},
        }

    per_tag = [
        {"tag": t, "images": 20, "true": 13, "combined": {"auc": 0.9 - 0.1 * i, "p_at_10": 0.8},
         "index_order": {"auc": 0.5, "p_at_10": 0.6}, "dead": None}
        for i, t in enumerate(tags)
    ] if with_truth else []
    return {
        "published_ranker": "combined",
        "ground_truth": "gt.jsonl" if with_truth else None,
        "description": "Scores mix the matcher & the neighbours' <agreement>.",
        "subsets": {
            "all": {"images": 100, "rankers": rankers(0.8768), "per_tag": per_tag},
            "in_training": {"images": 80, "rankers": rankers(0.9001), "per_tag": []},
            "held_out": {"images": 20, "rankers": rankers(0.7002), "per_tag": []},
        },
    }


LABELS = {"combined": "combined score", "index_order": "index order (baseline)", "dead": "never scored"}


def rankers_for(table: pa.Table, published: np.ndarray) -> dict[str, np.ndarray]:
    n = table.num_rows
    return {
        "combined": published,
        "index_order": -table.column(schema.ORDINAL).to_numpy().astype(np.float64),
        "dead": np.full(n, np.nan),
    }


def strips(page: str) -> dict[str, list[tuple[str, str]]]:
    """tag -> [(img src, caption)] of each bottom strip, in page order."""
    found = {}
    for tag, body in re.findall(r"<h3>(.*?) <span.*?</h3><div class=\"strip\">(.*?)</div>", page, flags=re.S):
        found[html.unescape(tag)] = [
            (html.unescape(src), cap)
            for src, cap in re.findall(r'<img src="([^"]*)".*?<figcaption>(.*?)</figcaption>', body, flags=re.S)
        ]
    return found


def test_report_with_ground_truth(tmp_path: Path) -> None:
    sizes = {"fish": 30, HOSTILE: 12, "apple": 20, "tiny": 3, "boat": 9, "car": 10, "dog": 11}
    table, published, labels = make_rankings(sizes)
    written = report.write_report(
        str(tmp_path / "report"),
        rankings=table,
        ranker_scores=rankers_for(table, published),
        ranker_labels=LABELS,
        labels=labels,
        metrics=make_metrics(list(sizes)),
        thumb_prefix=THUMB_PREFIX,
    )
    names = {Path(p).name for p in written}
    assert names == {"index.html", report.PER_TAG_AUC_PNG, report.SCORE_HISTOGRAM_PNG, report.PRECISION_AT_K_PNG}
    for p in written:
        assert Path(p).stat().st_size > 0
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert f'<a href="{THUMB_PREFIX}">← Back to the search</a>' in page  # the report links back

    # ranker tables: the published ranker first, with its values, in every subset
    for value in ("0.877", "0.900", "0.700", "0.875", "0.512", "0.864", "0.617"):
        assert value in page
    tables = re.findall(r"<tbody>(.*?)</tbody>", page, flags=re.S)[:3]
    for body in tables:
        first = re.search(r"<tr(.*?)>\s*<td>(.*?)</td>", body)
        assert "published" in first.group(1) and first.group(2) == "combined score (published)"
    assert "never scored" in page and "–" in page  # a ranker without numbers shows dashes

    # hostile text is escaped everywhere: the tag and the description
    assert HOSTILE not in page and "<agreement>" not in page
    assert html.escape(HOSTILE) in page

    # bottom strips: the 6 largest tags, the 8 highest rank numbers, last-ranked first
    found = strips(page)
    assert list(found) == ["fish", "apple", HOSTILE, "dog", "car", "boat"]
    tags = table.column(schema.TAG).to_pylist()
    ranks = table.column(schema.RANK).to_pylist()
    ids = table.column(schema.IMAGE_ID).to_pylist()
    for tag, items in found.items():
        rows = sorted((i for i, t in enumerate(tags) if t == tag), key=lambda i: -ranks[i])[:8]
        assert [src for src, _ in items] == [THUMB_PREFIX + thumbnail_path(ids[i]) for i in rows]
        for (_, caption), i in zip(items, rows):
            assert caption.startswith(f"#{ranks[i]} · score {published[i]:.3f}")
            assert ("wrongly tagged" if not labels[i] else "correct") in caption
    assert "wrongly tagged" in page


def test_precision_at_k_curve_known_values() -> None:
    # one tag, 4 images: scores put them in order 0, 1, 2, 3; labels T F T F
    groups = {"a": np.arange(4)}
    labels = np.array([True, False, True, False])
    curves = report.precision_at_k_curves(
        groups, {"s": np.array([4.0, 3.0, 2.0, 1.0]), "none": np.full(4, np.nan)}, labels, np.arange(4), max_k=6
    )
    assert "none" not in curves
    np.testing.assert_allclose(curves["s"][:4], [1.0, 0.5, 2 / 3, 0.5])
    assert np.isnan(curves["s"][4:]).all()  # no tag has 5 images


def test_report_without_labels(tmp_path: Path) -> None:
    sizes = {"fish": 15, "apple": 9}
    table, published, _ = make_rankings(sizes)
    written = report.write_report(
        str(tmp_path),
        rankings=table,
        ranker_scores=rankers_for(table, published),
        ranker_labels=LABELS,
        labels=None,
        metrics=make_metrics(list(sizes), with_truth=False),
        thumb_prefix="../",
    )
    assert {Path(p).name for p in written} == {"index.html", report.SCORE_HISTOGRAM_PNG}
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "no ground truth" in page.lower()
    found = strips(page)
    assert list(found) == ["fish", "apple"] and len(found["fish"]) == 8 and len(found["apple"]) == 8
    assert all(src.startswith("../thumbs/") for src, _ in found["fish"])
    assert "class=\"label\"" not in page and "thumb wrong" not in page


def test_report_single_tag_all_nan(tmp_path: Path) -> None:
    table, _, labels = make_rankings({"only": 5})
    nan_scores = np.full(table.num_rows, np.nan)
    table = table.set_column(
        table.schema.get_field_index(schema.SCORE), schema.SCORE, pa.array([None] * table.num_rows, pa.float32())
    )
    written = report.write_report(
        str(tmp_path),
        rankings=table,
        ranker_scores={"combined": nan_scores, "matcher": nan_scores},
        ranker_labels={},
        labels=labels,
        metrics={"published_ranker": "combined", "subsets": {"all": {"images": 5, "rankers": {}, "per_tag": []}}},
        thumb_prefix="../site/",
    )
    assert [Path(p).name for p in written] == ["index.html"]
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "No image has a published score." in page
    assert "no score" in page and len(strips(page)["only"]) == 5


@pytest.mark.parametrize("with_labels", [True, False])
def test_report_empty(tmp_path: Path, with_labels: bool) -> None:
    table = schema.RANKINGS_SCHEMA.empty_table()
    written = report.write_report(
        str(tmp_path),
        rankings=table,
        ranker_scores={"combined": np.zeros(0)},
        ranker_labels={"combined": "combined"},
        labels=np.zeros(0, dtype=bool) if with_labels else None,
        metrics={},
        thumb_prefix="../",
        title="Empty & <b>",
    )
    assert [Path(p).name for p in written] == ["index.html"]
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "Nothing was ranked." in page and "Empty &amp; &lt;b&gt;" in page


def test_report_rejects_misaligned_scores(tmp_path: Path) -> None:
    table, published, _ = make_rankings({"a": 4})
    with pytest.raises(ValueError, match="ranker 'x'"):
        report.write_report(str(tmp_path), rankings=table, ranker_scores={"x": published[:2]}, ranker_labels={},
                            labels=None, metrics={}, thumb_prefix="../")


def suspect_metrics(tags: list[str], ids: list[str], with_truth: bool) -> dict:
    """metrics.json's suspect_tags and the tags the evaluation cannot see, as evaluate writes them."""
    entry = {"tag": HOSTILE, "images": 12, "images_with_neighbours": 12, "other_tag": "fish", "share": 0.9167,
             "share_any_other": 1.0, "share_back": 0.0333, "examples": ids[:3]}
    second = {"tag": "apple", "images": 20, "images_with_neighbours": 20, "other_tag": "dog", "share": 0.55,
              "share_any_other": 0.6, "share_back": 0.0, "examples": ids[3:4]}
    section = {"rule": "neighbours rule", "threshold": 0.5, "min_images": 3, "count": 2, "tags_scored": len(tags),
               "tags": [entry, second], "centroid_margin": False}
    if with_truth:
        entry["wrong_share"], second["wrong_share"] = 1.0, 0.2
        section["ground_truth"] = {"precision": 0.5, "listed_with_ground_truth": 2, "listed_mostly_wrong": 1, "recall": 1.0,
                                   "mostly_wrong_tags": [{"tag": HOSTILE, "images": 12, "wrong_share": 1.0, "suspect_rank": 1}]}
    return section


@pytest.mark.parametrize("with_truth", [True, False])
def test_report_suspects_and_unseen_tags(tmp_path: Path, with_truth: bool) -> None:
    sizes = {"fish": 30, HOSTILE: 12, "apple": 20, "solo": 1, "flat": 4}
    table, published, labels = make_rankings(sizes)
    ids = table.column(schema.IMAGE_ID).to_pylist()
    tags = table.column(schema.TAG).to_pylist()
    flat_rows = [i for i, t in enumerate(tags) if t == "flat"]
    published[flat_rows] = 0.0  # every score of "flat" tied
    table = table.set_column(table.schema.get_field_index(schema.SCORE), schema.SCORE, pa.array(published, pa.float32()))
    example_ids = [ids[i] for i, t in enumerate(tags) if t == HOSTILE][:3] + [ids[tags.index("apple")]]
    m = make_metrics(list(sizes), with_truth=with_truth)
    m["suspect_tags"] = suspect_metrics(list(sizes), example_ids, with_truth)
    m["uninformative_scores"] = {
        "count": 2, "by_reason": {"one_image": 1, "all_tied": 1},
        "reasons": {"one_image": "one image: its score compares it with nothing", "all_tied": "every image has the same score"},
        "tags": [{"tag": "flat", "images": 4, "reason": "all_tied"}, {"tag": "solo", "images": 1, "reason": "one_image"}],
    }
    if with_truth:
        m["subsets"]["all"]["tags_not_evaluated"] = {
            "count": 2, "by_reason": {"one_image": 1, "all_wrong": 1, "none_wrong": 0},
            "tags": [{"tag": "solo", "images": 1, "true": 1, "reason": "one_image"},
                     {"tag": "gone", "images": 5, "true": 0, "reason": "all_wrong"}],
        }
    report.write_report(str(tmp_path), rankings=table, ranker_scores=rankers_for(table, published), ranker_labels=LABELS,
                        labels=labels if with_truth else None, metrics=m, thumb_prefix=THUMB_PREFIX)
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    section = page.split("<h2>Suspect tags</h2>", 1)[1].split("<h2>", 1)[0]
    # most suspect first, the other tag named, the shares, the example thumbnails from the site
    rows = re.findall(r"<tr><td>(\d+)</td><td>(.*?)</td><td>(\d+)</td><td>(.*?)</td><td>([0-9.]+)</td>", section)
    assert [(r[0], html.unescape(r[1]), r[2], r[3], r[4]) for r in rows] == [
        ("1", HOSTILE, "12", "fish", "0.917"), ("2", "apple", "20", "dog", "0.550")]
    assert HOSTILE not in page
    for image_id in example_ids:
        assert f'src="{THUMB_PREFIX}{thumbnail_path(image_id)}"' in section
    assert ("precision 0.500" in section) == with_truth and ("truly wrong" in section) == with_truth
    # the tags without an AUC, with their reasons (ground truth only), and the scores that say nothing
    unseen = page.split("<h2>Tags the evaluation cannot see</h2>", 1)[1].split("<h2>", 1)[0]
    assert ("<td>gone</td><td>5</td><td>0</td><td>every image wrongly tagged" in unseen) == with_truth
    assert "<td>flat</td><td>4</td><td>every image has the same score</td>" in unseen
    assert "2 tags have scores that say nothing" in unseen
    # the histogram leaves them out and says so; no strip shows their scores as if they meant something
    assert "Without the 2 tags whose scores say nothing." in page
    found = strips(page)
    assert all(caption.split("<br>")[0].endswith("score says nothing here") for _, caption in found["flat"])
    assert all("score says nothing" not in caption for _, caption in found["fish"])


def test_no_histogram_when_every_score_says_nothing(tmp_path: Path) -> None:
    table, published, _ = make_rankings({"solo": 1, "flat": 3})
    published[:] = 0.0
    table = table.set_column(table.schema.get_field_index(schema.SCORE), schema.SCORE, pa.array(published, pa.float32()))
    flagged = {"count": 2, "by_reason": {}, "reasons": {},
               "tags": [{"tag": "flat", "images": 3, "reason": "all_tied"}, {"tag": "solo", "images": 1, "reason": "one_image"}]}
    written = report.write_report(str(tmp_path), rankings=table, ranker_scores={"combined": published}, ranker_labels={},
                                  labels=None, metrics={"uninformative_scores": flagged}, thumb_prefix="../")
    assert report.SCORE_HISTOGRAM_PNG not in {Path(p).name for p in written}
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "No image has a published score that says something." in page


def test_the_report_names_the_models_the_site_header_no_longer_names(tmp_path: Path) -> None:
    from export import evaluate

    training = {
        "members": [{"name": f"fold{m}"} for m in range(5)] + [{"name": "all"}],
        "inputs": {"image_dim": 1280, "text_dim": 50, "word_vectors": "vectors.txt",
                   "image_features": {"imgsearch.encoder": "efficientnet_lite0", "imgsearch.weights": "imagenet"}},
    }
    sentence = evaluate.models_used(training)
    assert sentence == (
        "Image features: efficientnet_lite0 (imagenet weights, 1280-d). Tag vectors: vectors.txt (50-d). "
        "Matcher: 5 cross-fitted two-tower members."
    )
    table, published, _ = make_rankings({"fish": 15, "apple": 9})
    report.write_report(
        str(tmp_path),
        rankings=table,
        ranker_scores=rankers_for(table, published),
        ranker_labels=LABELS,
        labels=None,
        metrics={**make_metrics(["fish", "apple"], with_truth=False), "models": sentence + " <b>"},
        thumb_prefix="../",
    )
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "efficientnet_lite0 (imagenet weights, 1280-d)" in page and "&lt;b&gt;" in page
