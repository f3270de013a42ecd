"""The rank stage: known vectors in, known rankings out; site pages, shards, manifest, failures.

The towers are tiny ONNX graphs built with onnx.helper (MatMul + L2 normalisation), so every
score is known: an image tower that pads its 4-d input to 128-d and a text tower that pads its
3-d input, both normalised, make each score the cosine of the padded vectors.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from export import publish_check, site_data
from model import schema, scoring, storage
from model.tags import image_id_for, normalize_tag, tag_key
from pipelines import common, rank, ranking, thumbnails, towers
from tests import builders
from tests.conftest import draw_image, write_broken_images

REPO = Path(__file__).resolve().parent.parent
IMAGE_DIM, TEXT_DIM, OUT_DIM = 4, 3, 128
HALF = float(np.float32(1 / math.sqrt(2)))


# ---------------------------------------------------------------------------
# Generated inputs
# ---------------------------------------------------------------------------
FOLDS = 2  # the towers hold FOLDS cross-fitted members and one in-sample member, all identical here
MEMBERS = FOLDS + 1


def tower_onnx(in_dim: int) -> bytes:
    """features [n, in_dim] -> MatMul (identity into the first in_dim of 128) -> L2 norm, the same
    for every member: [n, MEMBERS, 128]."""
    weight = np.zeros((in_dim, OUT_DIM), dtype=np.float32)
    weight[np.arange(in_dim), np.arange(in_dim)] = 1.0
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["projected"]),
            helper.make_node("LpNormalization", ["projected"], ["normalised"], axis=1, p=2),
            helper.make_node("Unsqueeze", ["normalised", "axis1"], ["one_member"]),
            helper.make_node("Concat", ["one_member"] * MEMBERS, [schema.TOWER_OUTPUT], axis=1),
        ],
        "tower",
        [helper.make_tensor_value_info(schema.TOWER_INPUT, TensorProto.FLOAT, ["batch", in_dim])],
        [helper.make_tensor_value_info(schema.TOWER_OUTPUT, TensorProto.FLOAT, ["batch", MEMBERS, OUT_DIM])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_towers(out: Path) -> tuple[str, str]:
    (out / "model").mkdir(parents=True, exist_ok=True)
    image_tower, text_tower = out / schema.IMAGE_TOWER_ONNX, out / schema.TEXT_TOWER_ONNX
    image_tower.write_bytes(tower_onnx(IMAGE_DIM))
    text_tower.write_bytes(tower_onnx(TEXT_DIM))
    return str(image_tower), str(text_tower)


def write_image_files(folder: Path, names: list[str]) -> dict[str, str]:
    """A real JPEG per name (the 'broken' name gets a truncated file); name -> uri."""
    folder.mkdir(parents=True, exist_ok=True)
    truncated = write_broken_images(folder / "broken")[0]
    uris = {}
    for i, name in enumerate(names):
        if name == "broken":
            uris[name] = str(truncated)
            continue
        path = folder / f"{name}.jpg"
        path.write_bytes(draw_image(i, (300 + 10 * i, 200)))
        uris[name] = str(path)
    return uris


# image name -> raw 4-d features (None: extraction failed, no feature row)
VECTORS = {
    "c1": [1, 0, 0, 0],
    "c2": [1, 1, 0, 0],
    "c3": [0, 1, 0, 0],
    "c4": [1, 1, 0, 0],  # ties with c2 on "cat": index order decides
    "c5": None,
    "nan": [float("nan"), 0, 0, 0],
    "d1": [0, 1, 0, 0],
    "broken": [1, 0, 0, 0],  # has features, but its file cannot be thumbnailed
    "u1": [0, 0, 1, 0],
    "u2": [0, 0, 0, 1],
}
# (image name, tag, ordinal) in index order; c2 is also tagged "dog"
ROWS = [
    ("c4", "cat", 0),
    ("c1", "cat", 1),
    ("c3", "cat", 2),
    ("c2", "cat", 3),
    ("c5", "cat", 4),
    ("nan", "cat", 5),
    ("u1", "zzyzx", 6),
    ("d1", "dog", 7),
    ("c2", "dog", 8),
    ("broken", "dog", 9),
    ("u2", "zzyzx", 10),
]
TEXT = {"cat": [1, 0, 0], "dog": [0, 1, 0], "zzyzx": None}  # zzyzx is oov
# The matcher is class-contrastive: cosine to the tag minus the best cosine to a tag the image does
# not carry. c2 carries both tags, so nothing is subtracted; c4 is as close to dog as to cat.
EXPECTED = {  # tag -> [(image name, score)] in rank order
    "cat": [("c1", 1.0), ("c2", HALF), ("c4", 0.0), ("c3", -1.0)],
    "dog": [("d1", 1.0), ("c2", HALF), ("broken", -1.0)],
    "zzyzx": [("u1", None), ("u2", None)],  # index order, no scores
}


def image_id(name: str) -> str:
    return image_id_for(f"/images/{name}.jpg")


def image_rows(uris: dict[str, str], rows=ROWS) -> list[dict]:
    """The images table of (name, tag, ordinal) rows: ids from the names, uris from the files."""
    return builders.image_rows(
        [(uris[name], tag) for name, tag, _ in rows],
        schema.SPLIT_TRAIN,
        ids=[image_id(name) for name, _, _ in rows],
        ordinals=[ordinal for _, _, ordinal in rows],
    )


def feature_rows(vectors=VECTORS) -> list[dict]:
    known = {image_id(name): vec for name, vec in vectors.items() if vec is not None}
    return builders.image_feature_rows(known, content_hashes=dict.fromkeys(known, "0" * 16), width=300, height=200)


def text_rows(text=TEXT) -> list[dict]:
    return builders.text_feature_rows(text)


def write_inputs(out: Path, uris: dict[str, str], rows=ROWS, vectors=VECTORS, text=TEXT) -> None:
    """Everything earlier stages would have written, with the real schemas and metadata."""
    builders.write_images(out, image_rows(uris, rows))
    builders.write_image_features(
        out, {image_id(n): v for n, v in vectors.items() if v is not None}, encoder="tiny", content_hashes={}
    )
    builders.write_text_features(out, text, word_vectors="tiny.kv")
    earlier = [common.failure_row("extract-images", "x", "/nowhere.jpg", "OSError", "gone")] * 2
    builders.write_table(out, schema.FAILURES_DIR, "extract-images", earlier, schema.FAILURES_SCHEMA)
    builders.write_table(out, schema.FOLDS_DIR, schema.FOLDS_PREFIX, fold_rows(), schema.FOLDS_SCHEMA)
    builders.write_table(out, schema.SIGNALS_DIR, schema.SIGNALS_PREFIX, signal_rows(rows, vectors), schema.SIGNALS_SCHEMA)
    write_towers(out)
    (out / schema.EXPORT_JSON).write_text(json.dumps({"opset": 17, "folds": FOLDS, "towers": {"image": {"output_dim": 128, "max_abs_diff": 2e-7}, "text": {"output_dim": 128, "max_abs_diff": 1e-6}}}))


def fold_rows() -> list[dict]:
    """c1 and c2 were trained on (held out by members 0 and 1); every other image by no member."""
    return [{schema.IMAGE_ID: image_id("c1"), schema.FOLD: 0}, {schema.IMAGE_ID: image_id("c2"), schema.FOLD: 1}]


def signal_rows(rows=ROWS, vectors=VECTORS) -> list[dict]:
    """Neighbour agreement that reverses the matcher's order among each tag's images."""
    out = []
    for name, tag, ordinal in rows:
        if vectors.get(name) is None:
            continue
        out.append(
            {
                schema.IMAGE_ID: image_id(name),
                schema.TAG: normalize_tag(tag),
                schema.AGREEMENT: float(ordinal % 7) / 7,
                schema.AGREEMENT_WEIGHTED: float(ordinal % 7) / 7,
                schema.MEAN_FEATURE: 1.0 - (ordinal % 5) / 5,
                schema.CENTROID_MARGIN: 0.1 * (ordinal % 3) - 0.05,
            }
        )
    return out


def expected_rows(expected=EXPECTED) -> list[tuple]:
    return [
        (tag, r, image_id(name), None if score is None else pytest.approx(score, abs=1e-6))
        for tag, items in expected.items()
        for r, (name, score) in enumerate(items, start=1)
    ]


def read_json(path: Path):
    return json.loads(path.read_bytes())


# ---------------------------------------------------------------------------
# Plain functions and DoFns
# ---------------------------------------------------------------------------
def test_sort_key_orders_by_score_then_index_order():
    items = [(0.5, 3, "a"), (0.9, 7, "b"), (0.5, 1, "c")]
    assert [i[2] for i in sorted(items, key=lambda i: ranking.sort_key(*i))] == ["b", "c", "a"]
    oov = [(None, 4, "x"), (None, 2, "y")]
    assert [i[2] for i in sorted(oov, key=lambda i: ranking.sort_key(*i))] == ["y", "x"]


def test_make_thumbnail_shrinks_long_side_keeps_aspect_and_fixes_exif():
    jpeg = thumbnails.make_thumbnail(draw_image(1, (600, 300)), 256)
    with Image.open(io.BytesIO(jpeg)) as img:
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (256, 128))
    # a portrait photo stored landscape with EXIF orientation 6 comes out upright
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (400, 200), (10, 200, 30)).save(buf, "JPEG", exif=exif)
    with Image.open(io.BytesIO(thumbnails.make_thumbnail(buf.getvalue(), 100))) as img:
        assert img.size == (50, 100)
    # small images are not enlarged; transparency becomes white, not black
    buf = io.BytesIO()
    Image.new("RGBA", (40, 20), (0, 0, 0, 0)).save(buf, "PNG")
    with Image.open(io.BytesIO(thumbnails.make_thumbnail(buf.getvalue(), 256))) as img:
        assert img.size == (40, 20) and min(img.getpixel((5, 5))) > 240


def test_renditions_come_from_one_decode_at_both_sizes():
    thumb, view = thumbnails.make_renditions(draw_image(1, (1600, 1000)))
    with Image.open(io.BytesIO(thumb)) as a, Image.open(io.BytesIO(view)) as b:
        assert (a.format, a.size, b.format, b.size) == ("JPEG", (256, 160), "JPEG", (768, 480))
    # never enlarged: a small image's rendition is its own size
    thumb, view = thumbnails.make_renditions(draw_image(1, (300, 200)))
    with Image.open(io.BytesIO(view)) as b:
        assert b.size == (300, 200)


def test_make_thumbnail_raises_on_broken_bytes(tmp_path):
    for path in write_broken_images(tmp_path):
        with pytest.raises(Exception):
            thumbnails.make_thumbnail(path.read_bytes())


def test_project_tags_fn_skips_oov_and_records_bad_batches(tmp_path):
    _, text_tower = write_towers(tmp_path)
    fn = towers.ProjectTagsFn(text_tower, rank.STAGE)
    fn.setup()
    out = list(fn.process(text_rows()))
    vectors = dict(o for o in out if not isinstance(o, beam.pvalue.TaggedOutput))
    assert sorted(vectors) == ["cat", "dog"]  # zzyzx is oov: no vector
    assert vectors["cat"].shape == (MEMBERS, OUT_DIM) and vectors["cat"][:, 0] == pytest.approx(1.0)
    # features of the wrong width: the whole batch fails, each tag is recorded, nothing raises
    wrong = [{**r, schema.EMBEDDING: [1.0, 0.0]} for r in text_rows() if r[schema.EMBEDDING]]
    failed = list(fn.process(wrong))
    assert all(isinstance(o, beam.pvalue.TaggedOutput) and o.tag == "failures" for o in failed)
    assert {o.value[schema.ERROR] for o in failed} == {"InvalidArgument"}
    assert len(failed) == 2 and "'cat'" in failed[0].value[schema.MESSAGE]


# ---------------------------------------------------------------------------
# Composite under TestPipeline
# ---------------------------------------------------------------------------
def _rows_matcher(expected: list[tuple]):
    """Rankings rows in the expected order, each with its matcher cosine (the raw component)."""

    def check(actual):
        got = sorted(
            ((r[schema.TAG], r[schema.RANK], r[schema.IMAGE_ID], r[schema.MATCHER]) for r in actual),
            key=lambda r: (r[0], r[1]),
        )
        assert got == expected, got

    return check


def test_rank_images_composite_known_order_oov_skips_and_failures(tmp_path):
    image_tower, text_tower = write_towers(tmp_path)
    uris = write_image_files(tmp_path / "images", list(VECTORS))
    site = tmp_path / "site"
    p = test_pipeline.TestPipeline(runner=common.LOCAL_RUNNER)
    inputs = {
        "images": p | "Images" >> beam.Create(image_rows(uris)),
        "image_features": p | "Features" >> beam.Create(feature_rows()),
        "text_features": p | "Text" >> beam.Create(text_rows()),
        # one member group, so the standardised matcher keeps the cosines' order and ties
        "folds": p | "NoFolds" >> beam.Create([]),
        "signals": p | "NoSignals" >> beam.Create([]),
    }
    ranked = inputs | rank.RankImages(
        image_tower_uri=image_tower,
        text_tower_uri=text_tower,
        site_root=str(site),
        page_size=2,
        batch_size=3,
        folds=FOLDS,
        ranker="matcher",
    )
    assert_that(ranked["rankings"], _rows_matcher(expected_rows()), label="Rankings")
    assert_that(
        ranked["failures"] | beam.Map(lambda f: (f[schema.IMAGE_ID], f[schema.STAGE], f[schema.ERROR])),
        equal_to([(image_id("nan"), "rank", towers.NON_FINITE_EMBEDDING), (image_id("broken"), "rank", "OSError")]),
        label="Failures",
    )
    result = p.run()
    result.wait_until_finish()
    counters = common.read_counters(result, rank.STAGE)

    assert counters[common.ROWS_IN] == len(ROWS)
    assert counters[common.ROWS_OUT] == 9
    assert counters[ranking.SKIPPED_NO_FEATURES] == counters[common.ROWS_SKIPPED] == 1  # c5
    assert counters[f"failed_{towers.NON_FINITE_EMBEDDING}"] == counters[common.ROWS_FAILED] == 1
    assert counters[thumbnails.THUMBNAILS_FAILED] == 1 and counters[thumbnails.THUMBNAILS_WRITTEN] == 7
    assert counters[ranking.IMAGES_INDEXED] == 10 and counters[ranking.TAGS_BY_INDEX] == 1

    # the pages side effect: the broken image's thumb falls back to its source uri
    dog = read_json(site / site_data.ranking_page_path(tag_key("dog"), 1))
    assert [i["image_id"] for i in dog["items"]] == [image_id("broken")]
    # no thumbnail and no public link for a local file: no thumb, and never the local path
    assert dog["items"][0]["thumb"] is None and dog["ranked_by"] == site_data.RANKED_BY_MATCHER
    assert dog["items"][0]["uri"] == Path(uris["broken"]).name
    zzyzx = read_json(site / site_data.ranking_page_path(tag_key("zzyzx"), 0))
    assert zzyzx["ranked_by"] == site_data.RANKED_BY_INDEX and [i["score"] for i in zzyzx["items"]] == [None, None]
    assert (site / site_data.thumbnail_path(image_id("c1"))).is_file()
    assert not (site / site_data.thumbnail_path(image_id("c5"))).exists()
    # the viewer's larger rendition is made with the thumbnail, and only then named on the item
    assert (site / site_data.view_path(image_id("c1"))).is_file() and dog["items"][0]["view"] is None


def test_image_tower_failure_goes_to_dead_letter_not_crash(tmp_path):
    image_tower, text_tower = write_towers(tmp_path)
    uris = write_image_files(tmp_path / "images", list(VECTORS))
    five_wide = {n: (None if v is None else v + [0.0]) for n, v in VECTORS.items() if n != "nan"}
    rows = [r for r in ROWS if r[0] != "nan"]
    p = test_pipeline.TestPipeline(runner=common.LOCAL_RUNNER)
    inputs = {
        "images": p | "Images" >> beam.Create(image_rows(uris, rows)),
        "image_features": p | "Features" >> beam.Create(feature_rows(five_wide)),
        "text_features": p | "Text" >> beam.Create(text_rows()),
        "folds": p | "Folds" >> beam.Create([]),
        "signals": p | "Signals" >> beam.Create(signal_rows(rows, five_wide)),
    }
    ranked = inputs | rank.RankImages(
        image_tower_uri=image_tower, text_tower_uri=text_tower, site_root=str(tmp_path / "site"), thumbnail_size=None, folds=FOLDS
    )
    assert_that(ranked["rankings"], equal_to([]), label="NoRankings")
    assert_that(
        ranked["failures"] | beam.Map(lambda f: f[schema.ERROR]),
        equal_to(["InvalidArgument"] * (len(five_wide) - 1)),
        label="EveryImageFailed",
    )
    result = p.run()
    result.wait_until_finish()
    counters = common.read_counters(result, rank.STAGE)
    assert counters[common.ROWS_FAILED] == len(rows) - 1  # all but c5, which has no features
    assert counters[common.ROWS_IN] == counters[common.ROWS_FAILED] + counters[common.ROWS_SKIPPED]


# ---------------------------------------------------------------------------
# Whole stage
# ---------------------------------------------------------------------------
HOSTILE_TAGS = ["../x", "CON", "nul.txt", "日本" * 50, "<img src=x onerror=alert(1)>"]


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict:
    """One whole run() with thumbnails, page size 2, the hostile tags, and its report."""
    tmp = tmp_path_factory.mktemp("rank")
    out = tmp / "out"
    names = list(VECTORS) + [f"h{i}{j}" for i in range(len(HOSTILE_TAGS)) for j in range(3)]
    uris = write_image_files(tmp / "images", names)
    vectors = dict(VECTORS)
    rows = list(ROWS)
    text = dict(TEXT)
    for i, tag in enumerate(HOSTILE_TAGS):
        text[tag] = [0, 0, 1] if i % 2 else None
        for j in range(3):
            vectors[f"h{i}{j}"] = [0, 0, j, 1]
            rows.append((f"h{i}{j}", tag, 100 + 10 * i + j))
    write_inputs(out, uris, rows, vectors, text)
    # c5 has no features and nan fails: 2 of 26 rows, over the default 5% (images without
    # features count against --max-failure-rate)
    report = rank.run(
        ["--out", str(out), "--page-size", "2", "--thumbnail-size", "64", "--max-failure-rate", "0.1"], save_main_session=False
    )
    return {"out": out, "report": report, "rows": rows, "uris": uris}


def _data_root(site: Path) -> str:
    return read_json(site / site_data.MANIFEST_PATH)["data"]


def _page_items(site: Path, tag: str) -> list[dict]:
    root = _data_root(site)
    first = read_json(site / site_data.ranking_page_path(tag_key(tag), 0, root))
    items = []
    for page in range(first["pages"]):
        items += read_json(site / site_data.ranking_page_path(tag_key(tag), page, root))["items"]
    return items


def test_run_rankings_agree_with_site_pages(published):
    out = published["out"]
    site = out / schema.SITE_DIR
    table = storage.read_parquet_dir(str(out / schema.RANKINGS_DIR))
    assert table.schema.equals(schema.RANKINGS_SCHEMA, check_metadata=False)
    rows = sorted(table.to_pylist(), key=lambda r: (r[schema.TAG], r[schema.RANK]))
    by_tag: dict[str, list[dict]] = {}
    for r in rows:
        by_tag.setdefault(r[schema.TAG], []).append(r)
    # every component is published: the matcher's cosines are the known ones, the folds are the trained ones
    cat = {r[schema.IMAGE_ID]: r for r in by_tag["cat"]}
    assert {i: r[schema.MATCHER] for i, r in cat.items()} == {image_id(n): pytest.approx(v, abs=1e-6) for n, v in EXPECTED["cat"]}
    assert cat[image_id("c1")][schema.FOLD] == 0 and cat[image_id("c2")][schema.FOLD] == 1
    assert cat[image_id("c3")][schema.FOLD] == schema.NO_FOLD
    # the published order is the combined score's, replayed from those components
    for tag, tag_rows in by_tag.items():
        scores, ranked_by = scoring.tag_scores(
            "combined",
            fold=np.array([r[schema.FOLD] for r in tag_rows]),
            **{c: np.array([np.nan if r[c] is None else r[c] for r in tag_rows], dtype=float) for c in scoring.SIGNAL_COLUMNS},
        )
        assert ranked_by == ("combined_fallback" if tag_rows[0][schema.MATCHER] is None else "combined")
        assert read_json(site / site_data.ranking_page_path(tag_key(tag), 0, _data_root(site)))["ranked_by"] == ranked_by
        np.testing.assert_allclose([r[schema.SCORE] for r in tag_rows], scores, atol=1e-5)
        assert [r[schema.SCORE] for r in tag_rows] == sorted((r[schema.SCORE] for r in tag_rows), reverse=True)
        items = _page_items(site, tag)
        assert [(i["rank"], i["image_id"], i["uri"]) for i in items] == [
            (r[schema.RANK], r[schema.IMAGE_ID], r[schema.PUBLIC_URI]) for r in tag_rows
        ]
        for item, row in zip(items, tag_rows):
            assert item["score"] == round(row[schema.SCORE], 4)
            assert not item["uri"].startswith("/")  # no local path is published
    # an oov tag (no matcher) is ranked by its mean feature and neighbours, not left in crawl order
    zzyzx = by_tag["zzyzx"]
    assert all(r[schema.MATCHER] is None and r[schema.SCORE] is not None for r in zzyzx)
    assert publish_check.check_site(str(site), str(out / schema.RANKINGS_DIR)) == []


def test_matcher_scores_come_from_the_member_that_held_the_image_out():
    embedding = np.eye(4, dtype=np.float32)[:3]  # members 0, 1 and the in-sample member 2
    tag = np.ones((3, 4), dtype=np.float32)
    tag[1] *= 2
    assert ranking.matcher_scores(embedding, tag, 0, 2) == (1.0, 1.0)
    assert ranking.matcher_scores(embedding, tag, 1, 2) == (2.0, 1.0)
    assert ranking.matcher_scores(embedding, tag, schema.NO_FOLD, 2) == (1.5, 1.0)  # no member trained on it: the mean


def test_rank_tag_fn_orders_by_the_chosen_ranker(tmp_path):
    # items: (matcher, in_sample, agreement, agreement_weighted, mean_feature, fold, ordinal, id, uri, split, centroid margin)
    items = [
        (0.9, 0.9, 0.1, 0.1, 0.5, -1, 0, "a", "a.jpg", "test", 0.0),
        (0.5, 0.9, 0.9, 0.9, 0.5, -1, 1, "b", "b.jpg", "test", 0.1),
        (0.1, 0.9, 0.5, 0.5, 0.5, -1, 2, "c", "c.jpg", "test", 0.3),
    ]
    orders = {}
    for ranker in ("matcher", "neighbours", "centroid", "combined"):
        fn = ranking.RankTagFn(60, False, ranker)
        out = list(fn.process(("t", items), {}))
        rows = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
        pages = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput) and o.tag == "pages"]
        orders[ranker] = [r[schema.IMAGE_ID] for r in rows]
        assert [p for p, _ in pages] == [site_data.ranking_page_path(tag_key("t"), 0)]
        assert json.loads(pages[0][1])["ranked_by"] == ranker
    # combined: z(matcher) + z(agreement) + 2 z(centroid margin) = a -2.14, b 0.69, c 1.45
    assert orders == {"matcher": ["a", "b", "c"], "neighbours": ["b", "c", "a"], "centroid": ["c", "b", "a"], "combined": ["c", "b", "a"]}


def test_run_tag_shards_manifest_and_report(published):
    out, report = published["out"], published["report"]
    site = out / schema.SITE_DIR
    manifest = read_json(site / site_data.MANIFEST_PATH)
    tags = {normalize_tag(t) for t in ["cat", "dog", "zzyzx", *HOSTILE_TAGS]}
    listed = {}
    for shard in manifest["tag_shards"]:
        for tag, count, key, pages in read_json(site / shard["file"])["tags"]:
            listed[tag] = (count, key, pages)
    assert set(listed) == tags
    assert listed["cat"] == (4, tag_key("cat"), 2) and listed["dog"] == (3, tag_key("dog"), 2)
    assert listed["con"] == (3, tag_key("con"), 2)
    oov = 0  # oov tags are ranked by their mean feature and neighbours: none is left in index order
    assert manifest["counts"] == {
        "images": 10 + 3 * len(HOSTILE_TAGS),
        "tags": len(tags),
        "ranked_images": 8 + 3 * len(HOSTILE_TAGS),
        "oov_tags": oov,
        "failures": 2 + 2,  # extract-images' two, and rank's own: the NaN features and the broken thumbnail
    }
    assert manifest["model"]["encoder"] == "tiny" and manifest["model"]["dim"] == 4
    # the evaluation of what was published (no ground truth here: no figures) and its page
    assert manifest["model"]["metrics"] == {"published_ranker": "combined", "images": "all", "rankers": {}}
    assert manifest["data"].startswith("data/v/")
    assert manifest["report"] == f"{manifest['data']}/report/index.html" and (site / manifest["report"]).is_file()
    assert (out / schema.REPORT_DIR / "index.html").is_file() and (out / schema.METRICS_JSON).is_file()
    assert "/" not in (manifest["model"]["word_vectors"] or "")
    assert manifest["model"]["matcher"] == {"runtime": "onnxruntime", "out_dim": 128, "folds": FOLDS, "onnx_max_abs_diff": 1e-6}
    assert manifest["thumbnails"] is True and manifest["page_size"] == 2

    assert report.rows_in == len(published["rows"])
    assert report.rows_in == report.rows_out + report.rows_failed + report.rows_skipped
    assert (report.rows_failed, report.rows_skipped, report.details[ranking.SKIPPED_NO_FEATURES]) == (1, 1, 1)
    assert json.loads((out / schema.REPORTS_DIR / "rank.json").read_text())["rows_out"] == report.rows_out
    failures = pq.read_table(next((out / schema.FAILURES_DIR).glob("rank-*.parquet"))).to_pylist()
    assert sorted(f[schema.ERROR] for f in failures) == [towers.NON_FINITE_EMBEDDING, "OSError"]


def test_run_file_names_are_hex_even_for_hostile_tags(published):
    site = published["out"] / schema.SITE_DIR
    data = site / site_data.DATA_DIR
    for path in data.rglob("*"):
        if path.is_file():
            rel = path.relative_to(data).as_posix()
            assert re.fullmatch(
                r"(v/[0-9T]+-[0-9a-f]{6}/((rank/[0-9a-f]{2}/[0-9a-f]{20}-\d{4}|tags/[0-9a-f]{12}|home"
                r"|(lookup|similar|probably)/\d{5,}|az/[0-9a-z]-\d{4})\.json|report/[a-z_]+\.(html|png))|manifest\.json)", rel
            ), rel
    for tag in HOSTILE_TAGS:
        items = _page_items(site, normalize_tag(tag))
        assert len(items) == 3
    assert not (site.parent / "x").exists()  # "../x" wrote nothing outside the site
    thumb = site / site_data.thumbnail_path(image_id("c1"))
    with Image.open(thumb) as img:
        assert img.format == "JPEG" and max(img.size) == 64


def test_check_site_reports_a_corrupted_copy(published, tmp_path):
    out = published["out"]
    rankings = str(out / schema.RANKINGS_DIR)

    def corrupted(change) -> list[str]:
        site = tmp_path / f"site{len(list(tmp_path.iterdir()))}"
        shutil.copytree(out / schema.SITE_DIR, site)
        change(site)
        return publish_check.check_site(str(site), rankings)

    def swap_items(site: Path) -> None:
        page = site / site_data.ranking_page_path(tag_key("cat"), 0, _data_root(site))
        body = read_json(page)
        body["items"].reverse()
        page.write_bytes(site_data.encode_json(body))

    def drop_page(site: Path) -> None:
        (site / site_data.ranking_page_path(tag_key("dog"), 1, _data_root(site))).unlink()

    def stale_page(site: Path) -> None:
        stale = site / site_data.ranking_page_path(tag_key("gone"), 0, _data_root(site))
        stale.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(site / site_data.ranking_page_path(tag_key("cat"), 0, _data_root(site)), stale)

    def drop_view(site: Path) -> None:
        (site / site_data.view_path(image_id("c1"))).unlink()

    assert any("larger rendition" in p for p in corrupted(drop_view))
    assert any("rank 1" in p for p in corrupted(swap_items))
    assert any("missing file" in p for p in corrupted(drop_page))
    assert any("stale ranking page" in p for p in corrupted(stale_page))
    assert corrupted(lambda s: (s / site_data.MANIFEST_PATH).unlink()) == [f"missing file: {site_data.MANIFEST_PATH}"]


def test_rerun_without_torch_no_thumbnails_removes_stale_pages(published, tmp_path):
    """A second run on the same OUT in a process where torch cannot be imported at all."""
    out = tmp_path / "out"
    shutil.copytree(published["out"], out)
    # "dog" and the hostile tags leave the index: their pages must go
    rows = [r for r in ROWS if r[1] != "dog"]
    builders.write_images(out, image_rows(published["uris"], rows))
    script = (
        "import sys\n"
        "class NoTorch:  # any 'import torch' raises ImportError, as on a worker without torch\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import pipelines.rank as rank\n"
        "assert 'torch' not in [m.split('.')[0] for m in sys.modules]\n"
        f"report = rank.run(['--out', {str(out)!r}, '--no-thumbnails', '--max-failure-rate', '1'], save_main_session=False)\n"
        "print(report.rows_out)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "6"

    site = out / schema.SITE_DIR
    assert publish_check.check_site(str(site), str(out / schema.RANKINGS_DIR)) == []
    root = _data_root(site)
    assert not (site / site_data.ranking_page_path(tag_key("dog"), 0, root)).exists()
    assert not (site / site_data.ranking_page_path(tag_key("con"), 0, root)).exists()
    manifest = read_json(site / site_data.MANIFEST_PATH)
    assert manifest["thumbnails"] is False and manifest["counts"]["tags"] == 2
    for item in _page_items(site, "cat"):
        # no thumbnails and no public link: no thumb, and the file's name rather than its local path
        name = next(n for n in VECTORS if image_id(n) == item["image_id"])
        assert item["thumb"] is None and item["uri"] == Path(published["uris"][name]).name


def test_module_never_imports_torch():
    done = subprocess.run(
        [sys.executable, "-c", "import pipelines.rank, sys; assert 'torch' not in sys.modules"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_front_end_is_found_and_a_missing_one_fails_loudly(monkeypatch, tmp_path):
    from export import site_data

    published = dict(site_data.static_site_files())
    assert "index.html" in published and any(p.startswith("js/") for p in published)
    monkeypatch.setattr(site_data, "static_site_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="index.html"):
        list(site_data.static_site_files())


def test_thumbnails_of_fetched_images_come_from_the_store(tmp_path):
    """An http(s) image is read from fetch's store, never downloaded again by rank."""
    import datetime

    site = tmp_path / "site"
    jpeg = draw_image(3, (300, 200))
    uri = "https://images.example.invalid/a.jpg"  # unreachable: only the store can have it
    store = tmp_path / schema.STORE_DIR / "store-00000-of-00001.parquet"
    store.parent.mkdir(parents=True)
    row = {
        schema.IMAGE_ID: image_id("a"), schema.URI: uri, schema.IMAGE_BYTES: jpeg, schema.SHA256: "x",
        schema.CONTENT_TYPE: "image/jpeg", schema.HTTP_STATUS: 200, schema.WIDTH: 300, schema.HEIGHT: 200,
        schema.FETCHED_AT: datetime.datetime.now(datetime.timezone.utc), schema.ORIGINAL_WIDTH: None, schema.ORIGINAL_HEIGHT: None,
    }
    pq.write_table(pa.Table.from_pylist([row], schema=schema.IMAGE_STORE_SCHEMA), store)
    fn_input = [(image_id("a"), uri), (image_id("b"), "https://images.example.invalid/b.jpg")]
    p = test_pipeline.TestPipeline(runner=common.LOCAL_RUNNER)
    joined = p | beam.Create(fn_input) | rank.image_store.JoinImageStore([str(store)], rank.STAGE)
    out = joined | beam.ParDo(thumbnails.MakeThumbnailFn(str(site), 64, rank.STAGE)).with_outputs("failures", main="failed")
    assert_that(out.failed, equal_to([(image_id("b"), "NotFetched")]), label="OnlyTheUnfetchedFails")
    p.run().wait_until_finish()
    with Image.open(site / site_data.thumbnail_path(image_id("a"))) as img:
        assert max(img.size) == 64
