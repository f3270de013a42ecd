"""extract-images on broken, hostile and unusual images: one stage run over all of them (a few
seconds), then one test per case reading what that run wrote."""

from __future__ import annotations

import os
from typing import Any, Iterator

import pytest
from PIL import Image

from model import schema, tags
from pipelines import extract_images as ei
from pipelines import image_decoding
from tests.builders import image_rows, write_images
from tests.faults import conftest as fc

pytestmark = pytest.mark.faults

GOOD = 4
IMAGE_TIMEOUT_S = "2"  # tiny: the FIFO must not cost the suite the default 30 s
FAULTS = {
    "truncated.jpg": fc.truncated_jpeg,
    "zero-byte.jpg": lambda: b"",
    "html.jpg": fc.html_page,
    "bomb.png": fc.png_bomb,
    "cmyk.jpg": fc.cmyk_jpeg,
    "sixteen-bit.png": fc.sixteen_bit_png,
    "exif-rotated.jpg": fc.exif_rotated_jpeg,
    "animated.gif": fc.animated_gif,
    "postscript.jpg": fc.eps_file,
}
FAKE_GS = """#!/bin/sh
# stands in for Ghostscript: crawled bytes must never get here
touch "{marker}"
exit 1
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One extract-images run over good images, every faulty file and a FIFO, with a fake `gs`
    first on PATH that leaves a marker when called."""
    root = tmp_path_factory.mktemp("image-faults")
    images = root / "images"
    images.mkdir()
    uris: dict[str, str] = {}
    for i in range(GOOD):
        path = images / f"good{i}.jpg"
        path.write_bytes(fc.good_jpeg(i))
        uris[path.name] = str(path)
    for name, make in FAULTS.items():
        (images / name).write_bytes(make())
        uris[name] = str(images / name)
    fifo = images / "fifo.jpg"
    os.mkfifo(fifo)
    uris[fifo.name] = str(fifo)

    bin_dir = root / "bin"
    bin_dir.mkdir()
    marker = root / "gs-was-called"
    gs = bin_dir / "gs"
    gs.write_text(FAKE_GS.format(marker=marker))
    gs.chmod(0o755)

    listed = [(uri, "cat") for uri in uris.values()]
    listed.append((uris["good0.jpg"], "kitten"))  # the same picture under a second tag
    listed.append((uris["good1.jpg"], "cat"))  # and a plain duplicate row
    out = root / "out"
    write_images(out, image_rows(listed))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        report = fc.run_extract(out, "--image-timeout", IMAGE_TIMEOUT_S, "--max-failure-rate", "1")
    features = fc.read_parquet_files(fc.feature_files(out))
    yield {
        "out": out,
        "uris": uris,
        "report": report,
        "marker": marker,
        "features": {r[schema.IMAGE_ID]: r for r in features.to_pylist()},
        "failures": fc.failures_by_uri(out, ei.STAGE),
        "listed": listed,
    }


def _failure(run: dict[str, Any], name: str) -> dict[str, Any]:
    row = run["failures"][run["uris"][name]]
    assert row[schema.STAGE] == ei.STAGE and row[schema.IMAGE_ID] == tags.image_id_for(run["uris"][name])
    return row


def _feature(run: dict[str, Any], name: str) -> dict[str, Any]:
    return run["features"][tags.image_id_for(run["uris"][name])]


def test_the_books_balance_and_good_images_get_features(run):
    report = run["report"]
    assert report.rows_in == GOOD + len(FAULTS) + 1
    assert report.rows_in == report.rows_out + report.rows_failed + report.rows_skipped
    for i in range(GOOD):
        assert len(_feature(run, f"good{i}.jpg")[schema.EMBEDDING]) == 1280


def test_truncated_jpeg_is_a_failure_row(run):
    assert _failure(run, "truncated.jpg")[schema.ERROR] == "OSError"


def test_zero_byte_file_is_a_failure_row(run):
    assert _failure(run, "zero-byte.jpg")[schema.ERROR] == "UnidentifiedImageError"


def test_html_named_jpg_is_a_failure_row(run):
    row = _failure(run, "html.jpg")
    assert row[schema.ERROR] == "UnidentifiedImageError" and "allowed formats" in row[schema.MESSAGE]


def test_decompression_bomb_is_refused_before_decoding(run):
    row = _failure(run, "bomb.png")
    assert row[schema.ERROR] == "DecompressionBombError" and "10000000000" in row[schema.MESSAGE]


def test_cmyk_jpeg_is_converted_and_encoded(run):
    assert _feature(run, "cmyk.jpg")[schema.WIDTH] == 40


def test_sixteen_bit_png_is_scaled_and_encoded(run):
    row = _feature(run, "sixteen-bit.png")
    assert (row[schema.WIDTH], row[schema.HEIGHT]) == (40, 30)


def test_exif_rotation_records_the_displayed_size(run):
    row = _feature(run, "exif-rotated.jpg")
    assert (row[schema.WIDTH], row[schema.HEIGHT]) == tuple(reversed(fc.EXIF_SIZE))


def test_animated_gif_is_encoded_and_its_frames_counted(run):
    assert _feature(run, "animated.gif")[schema.WIDTH] == 32
    with Image.open(run["uris"]["animated.gif"]) as img:
        assert img.n_frames == fc.GIF_FRAMES
    assert run["report"].details[image_decoding.ANIMATED_IMAGES] == 1
    assert run["report"].details[image_decoding.ANIMATED_FRAMES] == fc.GIF_FRAMES


def test_postscript_named_jpg_never_reaches_ghostscript(run):
    row = _failure(run, "postscript.jpg")
    assert row[schema.ERROR] == "UnidentifiedImageError" and "allowed formats" in row[schema.MESSAGE]
    assert not run["marker"].exists(), "Pillow handed crawled bytes to gs"


def test_fifo_is_refused_without_being_opened(run):
    row = _failure(run, "fifo.jpg")
    assert row[schema.ERROR] == image_decoding.NOT_A_REGULAR_FILE and "FIFO" in row[schema.MESSAGE]
    assert run["report"].seconds < 60  # never blocked on the FIFO


def test_duplicate_rows_make_one_feature_row(run):
    report = run["report"]
    assert report.details[ei.INDEX_ROWS] == len(run["listed"])
    ids = [tags.image_id_for(uri) for uri, _ in run["listed"]]
    assert report.rows_in == len(set(ids))
    assert fc.feature_ids(run["out"]).count(tags.image_id_for(run["uris"]["good0.jpg"])) == 1
