"""A full disk and the caches a later run reuses; the per-image timeout on a decode that really
takes longer than the limit."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from model import encoders, schema
from pipelines import cli, image_decoding, worker_models
from pipelines import extract_images as ei
from tests.builders import image_rows, write_images
from tests.faults import conftest as fc

pytestmark = pytest.mark.faults


def _images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    uris = []
    for i in range(n):
        (folder / f"{i}.jpg").write_bytes(fc.good_jpeg(i))
        uris.append(str(folder / f"{i}.jpg"))
    return uris


def _encoder_cache(out: Path) -> Path:
    """Where extract-images keeps the encoder's state dict for its workers (named by its hash)."""
    spec = encoders.build_encoder(fc.LITE, encoders.WEIGHTS_RANDOM)
    _, digest = worker_models.encoder_state(spec)
    return out / schema.MODEL_DIR / worker_models.ENCODERS_SUBDIR / f"{spec.name}-{digest}.pt"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MB tmpfs (root only; elsewhere the test is skipped), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_in_one_line_and_the_next_run_is_not_wedged(small_disk: Path, tmp_path: Path, capsys):
    uris = _images(tmp_path / "images", 6)
    out = small_disk / "out"
    write_images(out, image_rows([(u, "cat") for u in uris]))
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (free - 2 * 1024 * 1024))  # 2 MB left: the 14 MB encoder does not fit

    rc = cli.main(["extract-images", *fc.extract_argv(out)])

    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("imgsearch extract-images: failed:") and "No space left on device" in err
    assert "free space on the disk that holds --out" in err
    # nothing half-written sits under a name a later run reuses
    cache = _encoder_cache(out)
    assert not cache.exists()
    assert not [p for p in (out / schema.MODEL_DIR).rglob("*") if p.is_file()]

    filler.unlink()  # the operator frees space: the rerun just works
    assert cli.main(["extract-images", *fc.extract_argv(out)]) == 0
    assert len(fc.feature_ids(out)) == 6
    assert cache.stat().st_size > 1_000_000


@pytest.fixture(scope="module")
def cache_and_timeout_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One extract-images run over an OUT whose cached encoder was left truncated (a full disk
    under an older version), with a PNG that decodes longer than --image-timeout among good images."""
    tmp = tmp_path_factory.mktemp("disk")
    big = tmp / "big.png"
    # 4000 x 4000 decodes in about a quarter of a second on one core: 0.02 s is far shorter
    Image.new("RGB", (4000, 4000), (10, 200, 30)).save(big, "PNG", compress_level=1)
    uris = _images(tmp / "images", 3)
    out = tmp / "out"
    write_images(out, image_rows([(str(big), "cat")] + [(u, "cat") for u in uris]))
    cache = _encoder_cache(out)
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"PK\x03\x04" + b"\0" * 1000)  # the start of a zip archive, then nothing
    report = fc.run_extract(out, "--image-timeout", "0.02", "--max-failure-rate", "1")
    return {"out": out, "report": report, "cache": cache, "big": big}


def test_a_truncated_encoder_cache_is_rebuilt_not_fatal(cache_and_timeout_run: dict):
    """What a full disk left before caches were renamed into place: the next run rebuilds it."""
    assert cache_and_timeout_run["report"].rows_out == 3  # every good image encoded
    assert cache_and_timeout_run["cache"].stat().st_size > 1_000_000


def test_a_damaged_int8_model_is_not_reused(tmp_path: Path):
    path = str(tmp_path / f"lite-random-int8-abc{worker_models.INT8_MODEL_SUFFIX}")
    worker_models.write_cached_file(path, b"a whole model" * 100)
    assert worker_models.cached_file_ok(path)
    with open(path, "r+b") as f:
        f.truncate(50)
    assert not worker_models.cached_file_ok(path)
    os.remove(path + worker_models.DIGEST_SUFFIX)  # no digest, and not a parseable ONNX model
    assert not worker_models.cached_file_ok(path)
    assert not worker_models.cached_file_ok(str(tmp_path / "absent.onnx"))


def test_the_image_timeout_covers_a_decode_that_takes_longer(cache_and_timeout_run: dict):
    """A decode that really takes longer than the limit (not a stubbed read) is abandoned."""
    out, big = cache_and_timeout_run["out"], cache_and_timeout_run["big"]
    failure = fc.failures_by_uri(out, ei.STAGE)[str(big)]
    assert failure[schema.ERROR] == image_decoding.ImageTimeout.__name__
    assert failure[schema.MESSAGE].startswith(f"decoding {big} took longer than 0.02 s")
    assert cache_and_timeout_run["report"].rows_failed == 1
