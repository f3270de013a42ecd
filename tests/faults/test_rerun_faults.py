"""The second day: reruns with a relative --out, a stage run alone after another refused, bad
feature shards next to good ones, two builds into one OUT, and how a failed run ends."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from model import features, out_lock, schema, storage
from model.tags import image_id_for
from pipelines import cli
from tests import builders
from tests.faults import conftest as fc
from tests.test_rank import VECTORS, write_image_files, write_inputs

pytestmark = pytest.mark.faults

NAMES = [f"img{i}" for i in range(8)]
TAGS = ["cat", "cat", "cat", "cat", "dog", "dog", "dog", "dog"]
DIM = 6


def _uri(name: str) -> str:
    return f"/images/{name}.jpg"


def _features_out(out: Path, dim: int = DIM, shards: int = 2) -> None:
    """An images table of eight images and their features in `shards` shards."""
    builders.write_images(out, builders.image_rows([(_uri(n), t) for n, t in zip(NAMES, TAGS)], schema.SPLIT_TRAIN))
    rng = np.random.default_rng(0)
    for s in range(shards):
        part = NAMES[s::shards]
        builders.write_image_features(
            out, {image_id_for(_uri(n)): rng.normal(size=dim) for n in part}, encoder="tiny", index=s, count=shards
        )


def _shards(out: Path, directory: str, prefix: str) -> list[str]:
    return sorted(p.name for p in (out / directory).glob(f"{prefix}-*{schema.PARQUET_SUFFIX}"))


# ---------------------------------------------------------------------------
# 1. a relative --out rerun keeps its outputs (one staged-output helper for every stage)
# ---------------------------------------------------------------------------
def test_a_relative_out_rerun_of_neighbours_keeps_its_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    _features_out(tmp_path / "o5")
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # the README's form: a relative --out, run twice
        assert cli.main(["neighbours", "--out", "o5", "--k", "3"]) == 0
        assert _shards(tmp_path / "o5", schema.SIGNALS_DIR, schema.SIGNALS_PREFIX) == ["signals-00000-of-00001.parquet"]
        assert _shards(tmp_path / "o5", schema.NEIGHBOURS_DIR, schema.NEIGHBOURS_PREFIX) == ["neighbours-00000-of-00001.parquet"]
    signals = pq.read_table(tmp_path / "o5" / schema.SIGNALS_DIR / "signals-00000-of-00001.parquet")
    assert signals.num_rows == len(NAMES)
    # nothing of the staging is left behind
    assert sorted(p.name for p in (tmp_path / "o5" / schema.SIGNALS_DIR).iterdir()) == ["signals-00000-of-00001.parquet"]


@pytest.mark.parametrize("relative", [True, False], ids=["relative", "absolute"])
def test_staged_output_replaces_the_previous_run_whatever_the_path_spelling(tmp_path, monkeypatch, relative: bool):
    monkeypatch.chdir(tmp_path)
    target = "out/dir" if relative else str(tmp_path / "out" / "dir")
    os.makedirs(tmp_path / "out" / "dir")
    for name in ("s-00000-of-00002.parquet", "s-00001-of-00002.parquet", "other.txt"):
        (tmp_path / "out" / "dir" / name).write_bytes(b"old")
    staged = storage.StagedOutput(target, ["s-*.parquet"])
    storage.write_bytes(staged.path("s-00000-of-00001.parquet"), b"new")
    committed = staged.commit()
    folder = tmp_path / "out" / "dir"
    assert sorted(p.name for p in folder.iterdir()) == ["other.txt", "s-00000-of-00001.parquet"]
    assert (folder / "s-00000-of-00001.parquet").read_bytes() == b"new"
    assert len(committed.removed) == 2 and len(committed.moved) == 1


def test_a_staged_file_that_fails_leaves_the_previous_file_whole(tmp_path: Path):
    path = str(tmp_path / "pointer.json")
    storage.write_bytes(path, b"previous")
    with pytest.raises(OSError):
        with storage.StagedOutput.file(path) as temp:
            Path(temp).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert Path(path).read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pointer.json"]


# ---------------------------------------------------------------------------
# 5. bad feature shards: named, moved aside, exit 3, counted in the report
# ---------------------------------------------------------------------------
def _add_bad_shards(out: Path) -> tuple[str, str]:
    """A 4-d shard next to the 6-d ones, and a truncated one."""
    narrow = builders.write_image_features(
        out, {image_id_for(_uri("extra")): [1.0, 0, 0, 0]}, encoder="other", index=0, count=1
    )
    narrow = narrow.rename(narrow.with_name("features-narrow-00000.parquet"))
    whole = (out / schema.IMAGE_FEATURES_DIR / "features-00000-of-00002.parquet").read_bytes()
    truncated = out / schema.IMAGE_FEATURES_DIR / "features-truncated-00000.parquet"
    truncated.write_bytes(whole[: len(whole) // 2])
    return narrow.name, truncated.name


@pytest.mark.parametrize("command", ["neighbours", "train", "rank"])
def test_bad_feature_shards_are_named_moved_aside_and_refuse_the_reader(tmp_path: Path, capsys, command: str):
    out = tmp_path / "out"
    _features_out(out)
    builders.write_text_features(out, {"cat": [1.0, 0, 0], "dog": [0, 1.0, 0]})
    narrow, truncated = _add_bad_shards(out)

    rc = cli.main([command, "--out", str(out)])

    assert rc == cli.EXIT_REFUSED
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert narrow in err and "4-d embeddings, the other shards' are 6-d" in err
    assert truncated in err and "unreadable" in err
    assert "Rerun extract-images" in err
    report = json.loads((out / schema.REPORTS_DIR / f"{command}.json").read_text())
    assert report["details"][features.QUARANTINED_SHARDS] == 2
    aside = out / schema.IMAGE_FEATURES_DIR / features.UNREADABLE_SUBDIR
    assert sorted(p.name for p in aside.iterdir()) == sorted([narrow, truncated])
    assert _shards(out, schema.IMAGE_FEATURES_DIR, schema.IMAGE_FEATURES_PREFIX) == [
        "features-00000-of-00002.parquet",
        "features-00001-of-00002.parquet",
    ]


def test_a_truncated_shard_is_counted_in_extract_images_report_and_its_images_extracted_again(tmp_path: Path):
    folder = tmp_path / "images"
    folder.mkdir()
    uris = []
    for i in range(4):
        (folder / f"{i}.jpg").write_bytes(fc.good_jpeg(i))
        uris.append(str(folder / f"{i}.jpg"))
    out = tmp_path / "out"
    builders.write_images(out, builders.image_rows([(u, "cat") for u in uris]))
    shard = out / schema.IMAGE_FEATURES_DIR / "features-00000-of-00001.parquet"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"PAR1" + b"\0" * 100)  # a store that broke mid-copy: no footer

    report = fc.run_extract(out)

    assert report.details[features.QUARANTINED_SHARDS] == 1
    assert shard.name in report.details["quarantined"][0]
    assert (out / schema.IMAGE_FEATURES_DIR / features.UNREADABLE_SUBDIR / shard.name).exists()
    assert report.rows_out == 4 and sorted(fc.feature_ids(out)) == sorted(image_id_for(u) for u in uris)


def test_a_shard_of_another_dimension_refuses_extract_images_with_its_summary(tmp_path: Path, capsys):
    out = tmp_path / "out"
    _features_out(out, shards=1)  # 6-d features of the "tiny" encoder: not this run's 1280-d

    rc = cli.main(["extract-images", *fc.extract_argv(out)])

    assert rc == cli.EXIT_REFUSED
    captured = capsys.readouterr()
    assert "extract-images: in 0, out 0" in captured.out  # the stage summary
    assert "features-00000-of-00001.parquet holds" in captured.err and "--full" in captured.err
    assert "Traceback" not in captured.err
    assert "refused" in json.loads((out / schema.REPORTS_DIR / "extract-images.json").read_text())["details"]


# ---------------------------------------------------------------------------
# 4. rank's health gate counts images without features
# ---------------------------------------------------------------------------
def test_rank_refuses_when_too_many_indexed_images_have_no_features(tmp_path: Path, capsys):
    out = tmp_path / "out"
    # c5, u1 and d1 have no features and no failure row (extract-images refused, then rank alone):
    # with the NaN row, 4 of 11 rows are missing from the site
    vectors = {**VECTORS, "u1": None, "d1": None}
    write_inputs(out, write_image_files(tmp_path / "images", list(VECTORS)), vectors=vectors)

    rc = cli.main(["rank", "--out", str(out), "--max-failure-rate", "0.2", "--no-thumbnails"])

    assert rc == cli.EXIT_REFUSED
    err = capsys.readouterr().err
    assert "4 of 11 rows failed or have no image features (3 without" in err and "run extract-images" in err
    assert not (out / schema.SITE_DIR / "data" / "manifest.json").exists()
    saved = json.loads((out / schema.REPORTS_DIR / "rank.json").read_text())
    assert saved["details"]["rows_without_features"] == 3


# ---------------------------------------------------------------------------
# 8. one line, not a traceback: exit 3 refused, 1 crashed
# ---------------------------------------------------------------------------
def test_a_stage_with_missing_input_is_refused_in_one_line(tmp_path: Path, capsys):
    rc = cli.main(["neighbours", "--out", str(tmp_path / "empty")])
    assert rc == cli.EXIT_REFUSED
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("imgsearch neighbours: refused: FileNotFoundError:") and "run extract-images" in err


def test_a_crash_ends_in_one_line_saying_what_where_and_what_to_do(tmp_path: Path, capsys, monkeypatch):
    from model import neighbours

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "signals" / "x.parquet"))

    _features_out(tmp_path / "out")
    monkeypatch.setattr(neighbours, "write_outputs", full_disk)
    rc = cli.main(["neighbours", "--out", str(tmp_path / "out")])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("imgsearch neighbours: failed: OSError:")
    assert "signals/x.parquet" in err and "free space on the disk that holds --out" in err


# ---------------------------------------------------------------------------
# Also: one build at a time into one OUT
# ---------------------------------------------------------------------------
def test_a_second_build_into_the_same_out_is_refused_naming_the_first(tmp_path: Path, capsys):
    out = tmp_path / "out"
    with out_lock.OutLock(str(out), "imgsearch build"):
        rc = cli.main(["build", "--input", str(tmp_path / "m.jsonl"), "--word-vectors", "v.txt", "--out", str(out)])
    assert rc == cli.EXIT_REFUSED
    err = capsys.readouterr().err
    assert f"pid {os.getpid()} on {socket.gethostname()}" in err
    assert f"rm {out / out_lock.LOCK_NAME}" in err
    assert not (out / out_lock.LOCK_NAME).exists()  # released when the holder finished
    assert not (out / schema.IMAGES_DIR).exists()  # the second build never started


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    stale = {"pid": dead.pid, "host": socket.gethostname(), "command": "imgsearch build", "started": "2026-01-01T00:00:00Z"}
    (out / out_lock.LOCK_NAME).write_text(json.dumps(stale))
    with out_lock.OutLock(str(out), "imgsearch build") as lock:
        assert lock.holder()["pid"] == os.getpid()
    assert not (out / out_lock.LOCK_NAME).exists()


def test_a_lock_held_on_another_host_is_not_taken(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    other = {"pid": 1, "host": "elsewhere", "command": "imgsearch build", "started": "2026-01-01T00:00:00Z"}
    (out / out_lock.LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(out_lock.OutLocked, match="on elsewhere, started 2026-01-01"):
        out_lock.OutLock(str(out), "imgsearch build").acquire()
