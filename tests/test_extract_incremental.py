"""Incremental extract-images: a rerun extracts only images whose ids have no features yet."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model import encoders, schema
from pipelines import extract_images as ei, feature_shards
from tests.builders import image_rows, write_images
from tests.conftest import write_broken_images, write_image_collection

LITE = encoders.EFFICIENTNET_LITE0
TAGS = ["cat", "dog", "tree"]
FIRST = 20
ADDED = 2  # 10% more


def _run(out: Path, *extra: str) -> ei.common.StageReport:
    argv = ["--out", str(out), "--image-model", LITE, "--weights", "random", "--batch-size", "4", "--precision", "fp32"]
    # the 3 broken files are over the default --max-failure-rate of these small runs
    argv += ["--max-failure-rate", "1"]
    return ei.run(argv + list(extra), save_main_session=False)


def _features(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted((out / schema.IMAGE_FEATURES_DIR).glob("features-*.parquet"))])


@pytest.fixture
def collection(tmp_path: Path) -> dict:
    rows = write_image_collection(tmp_path / "images", FIRST + ADDED, TAGS, seed=3)
    broken = [str(p) for p in write_broken_images(tmp_path / "images")]
    listed = [(r["uri"], r["tag"]) for r in rows[:FIRST]] + [(u, "cat") for u in broken]
    added = [(r["uri"], r["tag"]) for r in rows[FIRST:]]
    out = tmp_path / "out"
    write_images(out, image_rows(listed))
    return {"out": out, "listed": listed, "added": added}


def test_a_rerun_of_an_unchanged_index_does_no_model_work(collection: dict, counted_forward: list[int]):
    out = collection["out"]
    first = _run(out)
    assert (first.rows_out, first.rows_failed, first.rows_skipped) == (FIRST, 3, 0)
    assert sum(counted_forward) == FIRST
    shards_before = sorted(p.name for p in (out / schema.IMAGE_FEATURES_DIR).glob("features-*.parquet"))

    counted_forward.clear()
    again = _run(out)
    assert sum(counted_forward) == 0
    assert again.rows_in == FIRST + 3
    assert (again.rows_out, again.rows_skipped) == (0, FIRST)
    assert again.details[ei.SKIPPED_EXTRACTED] == FIRST
    # the broken files are tried again (they may have been fixed) and recorded once, not twice
    assert again.rows_failed == 3
    failures = pa.concat_tables([pq.read_table(p) for p in (out / schema.FAILURES_DIR).glob("extract-images-*.parquet")])
    assert failures.num_rows == 3
    # no empty shard is left behind by a run that had nothing to add
    assert sorted(p.name for p in (out / schema.IMAGE_FEATURES_DIR).glob("features-*.parquet")) == shards_before
    assert _features(out).num_rows == FIRST


def test_adding_images_extracts_only_the_new_ones(collection: dict, counted_forward: list[int]):
    out = collection["out"]
    _run(out)
    before = {r[schema.IMAGE_ID]: r[schema.EMBEDDING] for r in _features(out).to_pylist()}

    write_images(out, image_rows(collection["listed"] + collection["added"]))
    counted_forward.clear()
    report = _run(out)
    assert sum(counted_forward) == ADDED
    assert (report.rows_out, report.rows_skipped, report.rows_failed) == (ADDED, FIRST, 3)
    after = {r[schema.IMAGE_ID]: r[schema.EMBEDDING] for r in _features(out).to_pylist()}
    assert len(after) == FIRST + ADDED  # every image once: nothing extracted twice
    assert all(after[i] == v for i, v in before.items())


def test_features_of_another_encoder_are_not_mixed_in(collection: dict):
    out = collection["out"]
    _run(out)
    with pytest.raises(feature_shards.IncompatibleFeatures, match="--full"):
        ei.run(["--out", str(out), "--image-model", encoders.RESNET50, "--weights", "random"], save_main_session=False)


def _shard_names(out: Path) -> list[str]:
    return sorted(p.name for p in (out / schema.IMAGE_FEATURES_DIR).glob("features-*.parquet"))


def _full_run_rows(out: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in Path(feature_shards.full_run_dir(str(out))).glob("features-*.parquet"))


def test_full_replaces_every_feature(collection: dict, counted_forward: list[int]):
    out = collection["out"]
    _run(out)
    previous = _shard_names(out)
    counted_forward.clear()
    report = _run(out, "--full")
    assert sum(counted_forward) == FIRST
    assert (report.rows_out, report.rows_skipped) == (FIRST, 0)
    assert _features(out).num_rows == FIRST
    # the new set replaced the old one whole, and its folder is gone
    assert not set(previous) & set(_shard_names(out))
    assert report.details["full_previous_shards_removed"] == len(previous)
    assert report.details["full_shards_promoted"] == len(_shard_names(out)) == report.details["feature_shards"]
    assert not Path(feature_shards.full_run_dir(str(out))).exists()


def test_an_interrupted_full_run_leaves_the_previous_features_read_and_resumes(
    collection: dict, counted_forward: list[int], monkeypatch: pytest.MonkeyPatch
):
    out = collection["out"]
    _run(out)
    previous, previous_rows = _shard_names(out), _features(out).to_pylist()

    original = feature_shards.write_parquet_file
    writes: list[str] = []

    def write_parquet_file(path: str, table, row_group_rows: int) -> None:
        writes.append(path)
        if len(writes) > 2:  # the worker dies after committing two chunks
            raise OSError("worker lost")
        original(path, table, row_group_rows)

    monkeypatch.setattr(feature_shards, "write_parquet_file", write_parquet_file)
    with pytest.raises(Exception, match="worker lost"):
        _run(out, "--full", "--commit-every", "4")
    # what downstream stages read is untouched: the previous shards, whole
    assert _shard_names(out) == previous and _features(out).to_pylist() == previous_rows
    staged = _full_run_rows(out)
    assert 0 < staged < FIRST

    monkeypatch.setattr(feature_shards, "write_parquet_file", original)
    counted_forward.clear()
    report = _run(out, "--full")
    # the rerun keeps the interrupted run's chunks and encodes only the rest
    assert sum(counted_forward) == FIRST - staged
    assert (report.rows_out, report.rows_skipped) == (FIRST - staged, staged)
    assert not set(previous) & set(_shard_names(out))
    assert len({r[schema.IMAGE_ID] for r in _features(out).to_pylist()}) == FIRST == _features(out).num_rows
    assert not Path(feature_shards.full_run_dir(str(out))).exists()


def test_a_refused_full_run_leaves_the_previous_features_read(collection: dict):
    out = collection["out"]
    _run(out)
    previous, previous_rows = _shard_names(out), _features(out).to_pylist()
    # the 3 broken files are over a failure rate of 0: the stage refuses its output
    with pytest.raises(ei.common.StageRefused):
        _run(out, "--full", "--max-failure-rate", "0")
    assert _shard_names(out) == previous and _features(out).to_pylist() == previous_rows
    assert _full_run_rows(out) == FIRST
    # a plain rerun adds to the features that are read, and says the --full run is waiting
    report = _run(out)
    assert (report.rows_out, report.rows_skipped) == (0, FIRST)
