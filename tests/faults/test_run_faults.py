"""extract-images when the run itself meets trouble: a stuck read, NaN weights, a run where every
image fails, a SIGKILL near the end, a full disk."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from model import encoders, schema, tags
from pipelines import cli, feature_shards, image_decoding
from pipelines import extract_images as ei
from tests.builders import image_rows, write_images
from tests.faults import conftest as fc

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]


def _good_images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    uris = []
    for i in range(n):
        path = folder / f"img{i:04d}.jpg"
        path.write_bytes(fc.good_jpeg(i))
        uris.append(str(path))
    return uris


def test_a_stuck_read_fails_that_image_and_the_stage_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A read that never returns (a hung network mount) is abandoned after --image-timeout."""
    uris = _good_images(tmp_path / "images", 4)
    stuck = uris[2]
    release = threading.Event()
    original = image_decoding.read_uri

    def read_uri(uri: str) -> bytes:
        if uri == stuck:
            release.wait()  # blocks like a read on a dead mount
        return original(uri)

    monkeypatch.setattr(image_decoding, "read_uri", read_uri)
    out = tmp_path / "out"
    write_images(out, image_rows([(u, "cat") for u in uris]))
    started = time.monotonic()
    try:
        report = fc.run_extract(out, "--image-timeout", "0.5", "--max-failure-rate", "1")
    finally:
        release.set()  # let the abandoned daemon thread finish
    assert time.monotonic() - started < 60
    assert (report.rows_out, report.rows_failed) == (3, 1)
    row = fc.failures_by_uri(out, ei.STAGE)[stuck]
    assert row[schema.ERROR] == "ImageTimeout" and stuck in row[schema.MESSAGE] and "--image-timeout" in row[schema.MESSAGE]
    assert sorted(fc.feature_ids(out)) == sorted(tags.image_id_for(u) for u in uris if u != stuck)


def test_nan_encoder_weights_write_no_feature_rows(tmp_path: Path):
    state = encoders.encoder_architecture(fc.LITE).state_dict()
    first_weight = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
    state[first_weight].view(-1)[0] = float("nan")
    weights = tmp_path / "nan-weights.pt"
    torch.save(state, weights)
    uris = _good_images(tmp_path / "images", 3)
    out = tmp_path / "out"
    write_images(out, image_rows([(u, "cat") for u in uris]))

    argv = ["--out", str(out), "--image-model", fc.LITE, "--weights", str(weights), "--precision", "fp32"]
    with pytest.raises(ei.common.FailureRateExceeded, match="3 of 3 rows failed"):
        ei.run(argv, save_main_session=False)
    assert fc.feature_ids(out) == []
    failures = fc.failures_by_uri(out, ei.STAGE)
    assert {r[schema.ERROR] for r in failures.values()} == {ei.NON_FINITE_EMBEDDING}
    assert sorted(failures) == sorted(uris)
    assert "non-finite" in next(iter(failures.values()))[schema.MESSAGE]


def test_a_run_where_every_image_fails_exits_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture):
    """5,000 missing files: the report and the failures are saved, and the command fails."""
    missing = [str(tmp_path / "gone" / f"{i:05d}.jpg") for i in range(5000)]
    out = tmp_path / "out"
    write_images(out, image_rows([(u, "cat") for u in missing]))

    rc = cli.main(["extract-images", *fc.extract_argv(out)])

    assert rc == cli.EXIT_REFUSED
    captured = capsys.readouterr()
    assert "extract-images: in 5000, out 0, failed 5000" in captured.out
    assert "5000 of 5000 rows failed (100.0%)" in captured.err and "--max-failure-rate" in captured.err
    assert "Traceback" not in captured.err
    assert len(fc.failures_by_uri(out, ei.STAGE)) == 5000
    assert (out / schema.REPORTS_DIR / f"{ei.STAGE}.json").exists()


SLOW_STAGE = """
import sys, time
from model import inference
original = inference.FeatureExtractor.forward

def slow(self, payloads):
    time.sleep({delay})  # a slow model: the kill comes while chunks are being committed
    return original(self, payloads)

inference.FeatureExtractor.forward = slow
from pipelines import extract_images
extract_images.run(sys.argv[1:], save_main_session=False)
"""


def test_sigkill_near_the_end_keeps_the_committed_chunks(tmp_path: Path, counted_forward: list[int]):
    n, every = 40, 4
    uris = _good_images(tmp_path / "images", n)
    out = tmp_path / "out"
    write_images(out, image_rows([(u, "cat") for u in uris]))
    script = tmp_path / "slow_stage.py"
    script.write_text(SLOW_STAGE.format(delay=0.4))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = fc.extract_argv(out, "--commit-every", str(every), "--max-failure-rate", "1")
    proc = subprocess.Popen([sys.executable, str(script), *argv], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while len(fc.feature_files(out)) < 3:
            assert proc.poll() is None, "the stage ended before it could be killed"
            assert time.monotonic() < deadline, "no chunk was committed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    committed = set(fc.feature_ids(out))
    assert every <= len(committed) < n

    report = fc.run_extract(out, "--commit-every", str(every))

    # the rerun encodes only what the killed run had not committed
    assert sum(counted_forward) == n - len(committed)
    assert (report.rows_in, report.rows_skipped, report.rows_out) == (n, len(committed), n - len(committed))
    ids = fc.feature_ids(out)
    assert sorted(ids) == sorted(tags.image_id_for(u) for u in uris)  # every image exactly once
    assert not list((out / schema.IMAGE_FEATURES_DIR).glob(f"{feature_shards.INPROGRESS_PREFIX}*"))


def test_disk_full_fails_clearly_and_leaves_no_half_written_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    uris = _good_images(tmp_path / "images", 8)
    out = tmp_path / "out"
    write_images(out, image_rows([(u, "cat") for u in uris]))
    original = feature_shards.write_parquet_file
    writes: list[str] = []

    def write_parquet_file(path: str, table, row_group_rows: int) -> None:
        writes.append(path)
        if len(writes) == 1:
            return original(path, table, row_group_rows)
        with open(path, "wb") as f:  # half a file, then the disk is full
            f.write(b"PAR1 half a shard")
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(feature_shards, "write_parquet_file", write_parquet_file)
    with pytest.raises(Exception, match="No space left on device") as raised:
        fc.run_extract(out, "--commit-every", "4")
    assert "could not write feature chunk" in str(raised.value)
    # what readers match is whole: the first chunk, and nothing of the second
    files = fc.feature_files(out)
    assert len(files) == 1 and len(fc.feature_ids(out)) == 4
    assert not list((out / schema.IMAGE_FEATURES_DIR).glob(f"{feature_shards.INPROGRESS_PREFIX}*"))


def test_a_chunk_committed_twice_is_read_once(tmp_path: Path, counted_forward: list[int]):
    """After a retried bundle the same rows may sit in two chunks: the rerun's anti-join and
    common.OnePerKey (what readers use) count each image once."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    uris = _good_images(tmp_path / "images", 4)
    out = tmp_path / "out"
    write_images(out, image_rows([(u, "cat") for u in uris]))
    fc.run_extract(out)
    [chunk] = fc.feature_files(out)
    chunk.with_name(chunk.name.replace(".parquet", "-retried.parquet")).write_bytes(chunk.read_bytes())
    assert len(fc.feature_ids(out)) == 8

    counted_forward.clear()
    report = fc.run_extract(out)
    assert sum(counted_forward) == 0 and (report.rows_in, report.rows_skipped) == (4, 4)

    rows = fc.read_parquet_files(fc.feature_files(out)).to_pylist()
    with TestPipeline(runner=ei.common.LOCAL_RUNNER) as p:
        ids = p | beam.Create(rows) | ei.common.OnePerKey() | beam.Map(lambda r: r[schema.IMAGE_ID])
        assert_that(ids, equal_to([tags.image_id_for(u) for u in uris]))
