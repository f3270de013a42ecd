"""The whole pipeline through the `imgsearch` CLI on a small demo corpus, random-weight encoder.

Checks that what the site serves agrees with rankings/, and that every input row is accounted
for: written, failed (with a reason) or dropped as a duplicate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pytest

from export.publish_check import check_site
from export import similar, site_data
from model import schema, storage
from model.tags import image_id_for


@pytest.fixture(scope="module")
def demo_out(small_demo_run: Path) -> Path:
    return small_demo_run


def _report(out: Path, stage: str) -> dict:
    return json.loads((out / schema.REPORTS_DIR / f"{stage}.json").read_text())


def _table(out: Path, directory: str):
    return storage.read_parquet_dir(str(out / directory))


def test_every_stage_balances_its_books(demo_out: Path):
    for stage in ("index", "extract-images", "extract-text", "rank"):
        r = _report(demo_out, stage)
        assert r["rows_in"] > 0, stage
        assert r["rows_in"] == r["rows_out"] + r["rows_failed"] + r["rows_skipped"], (stage, r)


def test_every_manifest_row_is_indexed_failed_or_a_duplicate(demo_out: Path):
    manifest_rows = [json.loads(line) for line in (demo_out / "corpus" / "manifest.jsonl").read_text().splitlines() if line.strip()]
    index = _report(demo_out, "index")
    assert index["rows_in"] == len(manifest_rows)
    distinct = {(r["uri"], " ".join(r["tag"].casefold().split())) for r in manifest_rows}
    assert all(not r["uri"].startswith("/") for r in manifest_rows)
    assert index["rows_out"] == len(distinct)
    assert index["rows_skipped"] == index["details"]["skipped_duplicate"] == len(manifest_rows) - len(distinct)


def test_every_indexed_image_has_features_or_a_recorded_failure(demo_out: Path):
    images = _table(demo_out, schema.IMAGES_DIR)
    features = _table(demo_out, schema.IMAGE_FEATURES_DIR)
    failures = storage.read_parquet_dir(str(demo_out / schema.FAILURES_DIR))
    failed = failures.filter(pc.equal(failures.column(schema.STAGE), "extract-images"))
    indexed_ids = set(images.column(schema.IMAGE_ID).to_pylist())
    feature_ids = set(features.column(schema.IMAGE_ID).to_pylist())
    failed_ids = set(failed.column(schema.IMAGE_ID).to_pylist())
    assert feature_ids | failed_ids == indexed_ids
    assert not feature_ids & failed_ids
    # the demo's three broken files are among the failures, each with its reason
    broken = {image_id_for(f"images/{p.name}") for p in (demo_out / "corpus" / "images").glob("broken*")}
    assert broken and broken <= failed_ids
    assert all(failed.column(schema.ERROR).to_pylist())


def test_rankings_cover_exactly_the_images_with_features(demo_out: Path):
    """Every image with features is ranked under its tag, or folded into a copy ranked there."""
    images = _table(demo_out, schema.IMAGES_DIR)
    features = _table(demo_out, schema.IMAGE_FEATURES_DIR)
    rankings = _table(demo_out, schema.RANKINGS_DIR)
    feature_ids = set(features.column(schema.IMAGE_ID).to_pylist())
    expected = {
        (t, i) for t, i in zip(images.column(schema.TAG).to_pylist(), images.column(schema.IMAGE_ID).to_pylist()) if i in feature_ids
    }
    ranked = set(zip(rankings.column(schema.TAG).to_pylist(), rankings.column(schema.IMAGE_ID).to_pylist()))
    assert ranked <= expected and rankings.num_rows == len(ranked)
    group_of = similar.read_duplicates(str(demo_out)) or {}
    ranked_groups = {(t, group_of[i]) for t, i in ranked if i in group_of}
    folded = expected - ranked
    assert all(i in group_of and (t, group_of[i]) in ranked_groups for t, i in folded), sorted(folded)[:5]


def test_the_corpus_copies_are_found_as_duplicates(demo_out: Path):
    """The demo's byte-identical copies share a duplicate group with their original."""
    truth = [json.loads(line) for line in (demo_out / "corpus" / "ground_truth.jsonl").read_text().splitlines()]
    group_of = similar.read_duplicates(str(demo_out)) or {}
    exact = [t for t in truth if t["copy_kind"] == "exact"]
    assert exact
    for t in exact:
        copy, original = image_id_for(t[schema.URI]), image_id_for(t["copy_of"])
        assert group_of.get(copy) is not None and group_of.get(copy) == group_of.get(original), t


def test_site_agrees_with_rankings(demo_out: Path):
    site = demo_out / schema.SITE_DIR
    assert check_site(str(site), str(demo_out / schema.RANKINGS_DIR)) == []
    manifest = json.loads((site / site_data.MANIFEST_PATH).read_text())
    rankings = _table(demo_out, schema.RANKINGS_DIR)
    assert manifest["counts"]["tags"] == len(set(rankings.column(schema.TAG).to_pylist()))
    assert manifest["counts"]["ranked_images"] == len(set(rankings.column(schema.IMAGE_ID).to_pylist()))
    listed = [entry for shard in manifest["tag_shards"] for entry in json.loads((site / shard["file"]).read_text())["tags"]]
    assert sum(count for _tag, count, _key, _pages in listed) == rankings.num_rows
    assert (site / "index.html").is_file()


def test_every_tag_is_scored_and_the_oov_tag_without_the_matcher(demo_out: Path):
    text = _table(demo_out, schema.TEXT_FEATURES_DIR)
    oov = {t for t, s in zip(text.column(schema.TAG).to_pylist(), text.column(schema.STATUS).to_pylist()) if s == schema.TEXT_OOV}
    assert oov, "the demo corpus has one tag its word vectors do not know"
    rankings = _table(demo_out, schema.RANKINGS_DIR).to_pylist()
    for row in rankings:
        assert row[schema.SCORE] is not None  # neighbour agreement and the mean feature need no word vector
        assert (row[schema.MATCHER] is None) == (row[schema.TAG] in oov)


def test_the_published_rankings_beat_every_baseline_over_all_images(demo_out: Path):
    """What the site shows, measured over all of it (the demo's ground truth, real ImageNet features)."""
    metrics = json.loads((demo_out / schema.METRICS_JSON).read_text())
    assert metrics["published_ranker"] == "combined"
    rankers = metrics["subsets"]["all"]["rankers"]
    published = rankers["published"]
    assert published["tags"] >= 20 and metrics["counts"]["rows_with_ground_truth"] == metrics["counts"]["rows"]
    # the demo is hard on purpose (look-alike wrong tags, copies, small tags): at 600 images the
    # published AUC measured 0.954 when the corpus was made hard (0.97 before); this guards against
    # a broken pipeline, issue 18's targets are measured on the full demo
    assert published["auc"] >= 0.93, rankers
    for baseline in ("mean_feature", "index_order", "matcher_in_sample"):
        assert published["auc"] > rankers[baseline]["auc"], (baseline, rankers)
    # both kinds of images are measured, each on its own
    assert metrics["subsets"]["in_training"]["images"] > 0 and metrics["subsets"]["held_out"]["images"] > 0
    export = json.loads((demo_out / schema.EXPORT_JSON).read_text())
    for tower in export["towers"].values():
        assert tower["max_abs_diff"] <= export["tolerance"]
        assert tower["checked_batches"] == [1, 2, 7]
    manifest = json.loads((demo_out / schema.SITE_DIR / site_data.MANIFEST_PATH).read_text())
    assert (demo_out / schema.SITE_DIR / manifest["report"]).is_file()
    assert manifest["model"]["metrics"]["rankers"]["published"]["auc"] == pytest.approx(published["auc"])
