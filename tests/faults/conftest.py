"""The fault suite: each test runs a real stage on tiny generated inputs and asserts what a
hostile or broken input does (a failure row with its reason, an exit status, nothing lost).

Images go straight into an images table (no index run) where the stage under test is
extract-images; the encoder is efficientnet_lite0 with seeded random weights, in fp32, so
nothing is downloaded and every run takes a few seconds.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from model import encoders, schema
from pipelines import common
from pipelines import extract_images as ei
from tests.conftest import draw_image

LITE = encoders.EFFICIENTNET_LITE0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: the fault suite (tests/faults): hostile and broken inputs, kills, full disks")


def extract_argv(out: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--image-model", LITE, "--weights", "random", "--batch-size", "4", "--precision", "fp32", *extra]


def run_extract(out: Path, *extra: str) -> common.StageReport:
    return ei.run(extract_argv(out, *extra), save_main_session=False)


def read_parquet_files(paths: list[Path]) -> pa.Table | None:
    return pa.concat_tables([pq.read_table(p) for p in paths]) if paths else None


def feature_files(out: Path) -> list[Path]:
    """What every reader matches: finished feature shards."""
    return sorted((out / schema.IMAGE_FEATURES_DIR).glob(f"{schema.IMAGE_FEATURES_PREFIX}-*{schema.PARQUET_SUFFIX}"))


def feature_ids(out: Path) -> list[str]:
    table = read_parquet_files(feature_files(out))
    return [] if table is None else table.column(schema.IMAGE_ID).to_pylist()


def failures_by_uri(out: Path, stage: str) -> dict[str, dict]:
    table = read_parquet_files(sorted((out / schema.FAILURES_DIR).glob(f"{stage}-*{schema.PARQUET_SUFFIX}")))
    return {} if table is None else {r[schema.URI]: r for r in table.to_pylist()}


# ---------------------------------------------------------------------------
# Broken and unusual image files
# ---------------------------------------------------------------------------
def encoded(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def good_jpeg(seed: int) -> bytes:
    return draw_image(seed, (64, 48), "JPEG")


def truncated_jpeg() -> bytes:
    data = draw_image(1, (200, 150), "JPEG")
    return data[: len(data) // 3]


def html_page() -> bytes:
    return b"<!doctype html><html><head><title>404</title></head><body>Not found</body></html>\n"


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid 1x1 PNG whose header claims width x height pixels (10^10 by default)."""
    data = bytearray(encoded(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8  # the IHDR chunk follows the 8-byte signature: length, type, 13 bytes of data, CRC
    body = bytearray(data[ihdr + 8 : ihdr + 8 + 13])
    body[0:8] = struct.pack(">II", width, height)
    data[ihdr + 8 : ihdr + 8 + 13] = body
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(body)) & 0xFFFFFFFF)
    return bytes(data)


def cmyk_jpeg() -> bytes:
    return encoded(Image.new("CMYK", (40, 30), (0, 120, 200, 10)), "JPEG")


def sixteen_bit_png() -> bytes:
    img = Image.new("I;16", (40, 30))
    img.putdata([i * 50 for i in range(40 * 30)])
    return encoded(img, "PNG")


EXIF_SIZE = (60, 40)  # stored; displayed turned a quarter: 40 x 60


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return encoded(Image.new("RGB", EXIF_SIZE, (200, 30, 30)), "JPEG", exif=exif.tobytes())


GIF_FRAMES = 3


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 24), ((i * 90) % 256, 40, 200 - i * 60)) for i in range(GIF_FRAMES)]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def eps_file() -> bytes:
    return encoded(Image.new("RGB", (16, 16), (0, 0, 255)), "EPS")
