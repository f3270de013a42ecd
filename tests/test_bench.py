"""imgsearch bench: the image generator, each phase, the printed table, --memory-sizes, the child process."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from model import synthetic_images as si
from pipelines.bench import command, harness, images, phases, results

LITE = "efficientnet_lite0"
TINY = ["--image-model", LITE, "--weights", "random", "--batch-size", "2", "--model-seconds", "0.2"]


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: images and indexes are generated once and reused."""
    return tmp_path_factory.mktemp("bench-work")


# ---------------------------------------------------------------------------
# Generated images
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", images.KINDS)
def test_generator_is_deterministic(kind: str) -> None:
    make, _ = images.GENERATORS[kind]
    assert make(3, 0) == make(3, 0)
    assert make(3, 0) != make(4, 0)
    assert make(3, 0) != make(3, 1)


def test_photos_are_jpegs_of_web_sizes_some_with_exif_orientation() -> None:
    for i in (0, 1, si.EXIF_EVERY - 1):
        with Image.open(io.BytesIO(si.make_photo(i))) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            assert img.size == si.photo_size(i)
            assert img.size in si.PHOTO_SIZES
            orientation = img.getexif().get(0x0112)
            assert orientation == si.photo_orientation(i)
    assert si.photo_orientation(0) is None
    assert si.photo_orientation(si.EXIF_EVERY - 1) in si.EXIF_ORIENTATIONS


def test_graphics_are_rgba_pngs_with_transparency() -> None:
    for i in range(3):
        with Image.open(io.BytesIO(si.make_graphic(i))) as img:
            assert img.format == "PNG" and img.mode == "RGBA"
            assert img.size == si.graphic_size(i)
            assert all(si.GRAPHIC_MIN_SIDE <= side <= si.GRAPHIC_MAX_SIDE for side in img.size)
            alpha_min, alpha_max = img.getchannel("A").getextrema()
            assert alpha_min == 0 and alpha_max == 255  # transparent background, opaque shapes


def test_ensure_images_caches_sets_and_shares_pictures(tmp_path: Path) -> None:
    manifest = images.ensure_images(tmp_path, images.KIND_PNG, 3)
    uris = images.manifest_uris(manifest)
    assert len(uris) == 3 and all(Path(u).is_absolute() and u.endswith(".png") for u in uris)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert all(r["tag"] in images.BENCH_TAGS for r in rows)
    mtimes = [Path(u).stat().st_mtime_ns for u in uris]

    assert images.ensure_images(tmp_path, images.KIND_PNG, 3) == manifest  # cached: nothing regenerated
    larger = images.manifest_uris(images.ensure_images(tmp_path, images.KIND_PNG, 4))
    assert larger[:3] == uris  # a larger set reuses the smaller set's pictures
    assert [Path(u).stat().st_mtime_ns for u in uris] == mtimes
    assert Path(larger[3]).read_bytes() == si.make_graphic(3)


# ---------------------------------------------------------------------------
# The whole run, phases in this process (each phase's own process is tested once, below)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def throughput(work_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[results.BenchResult, Path]:
    saved = tmp_path_factory.mktemp("bench-json") / "bench.json"
    argv = ["--images", "4", "--kinds", "png", "--work-dir", str(work_dir), "--json", str(saved), *TINY]
    return command.run(argv, phase_runner=harness.run_phase_in_process), saved


def test_each_phase_returns_a_positive_rate(throughput: tuple[results.BenchResult, Path]) -> None:
    result, _ = throughput
    assert result.mode == "throughput"
    (row,) = result.rows
    assert row["kind"] == images.KIND_PNG and row["images"] == 4
    for phase in phases.PHASES:
        assert row[phase]["images_per_s"] > 0
        assert row[phase]["peak_rss_mib"] > 0
    assert row["a"]["images"] == 4
    assert row["c"]["images"] == 4 and row["c"]["rows_failed"] == 0
    assert row["b"]["batches"] >= phases.MIN_TIMED_BATCHES and row["b"]["batch_size"] == 2
    from model import inference

    # auto resolved for this CPU as a stage's worker would (int8 where it has VNNI or AMX)
    assert row["b"]["precision"] == row["c"]["precision"] == inference.worker_precision("auto", "CPU", LITE)
    assert row["c/a"] == pytest.approx(row["c"]["images_per_s"] / row["a"]["images_per_s"])
    assert row["c/b"] == pytest.approx(row["c"]["images_per_s"] / row["b"]["images_per_s"])


def test_table_shows_rates_ratios_memory_targets_and_machine(throughput: tuple[results.BenchResult, Path]) -> None:
    result, _ = throughput
    text = result.table()
    # one line, like every command's result; the CLI prints report() (the table and a blank line) above it
    assert result.summary_line() == f"bench took {result.seconds:.0f} s"
    assert result.report() == text + "\n"
    row = result.rows[0]
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("kind"))
    for column in ("a img/s", "b img/s", "c img/s", "c/a", "c/b", "RSS a MiB", "RSS b MiB", "RSS c MiB"):
        assert column in header
    table_row = next(line for line in lines if line.startswith("png "))
    assert f"{row['c/a']:.2f}" in table_row.split() and f"{row['c/b']:.2f}" in table_row.split()
    assert len(table_row) <= len(header)  # aligned under the header
    targets = results.INT8_TARGETS if row["precision"] == "int8" else results.TARGETS  # auto may run int8 here
    prefix = "int8 " if row["precision"] == "int8" else ""
    assert f"{prefix}c/a >= {targets['c/a']}: png" in text and f"{prefix}c/b >= {targets['c/b']}: png" in text
    assert result.machine["cpu"] in text and f"{result.machine['cores']} cores" in text
    assert f"torch {result.machine['torch']}" in text and LITE in text


def test_json_is_saved(throughput: tuple[results.BenchResult, Path]) -> None:
    result, saved = throughput
    data = json.loads(saved.read_text())
    assert data["mode"] == "throughput" and data["config"]["image_model"] == LITE
    assert data["rows"][0]["c/a"] == pytest.approx(result.rows[0]["c/a"])


def test_bench_reports_like_every_command(throughput: tuple[results.BenchResult, Path]) -> None:
    from model.report import StageReport

    result, saved = throughput
    assert isinstance(result, StageReport) and result.stage == "bench"
    # two measurements on 4 images each: png through the phases, and the fetch phase
    assert result.fetch is not None and result.fetch["images"] == 4
    assert (result.rows_in, result.rows_out, result.rows_failed) == (8, 2, 0)
    assert json.loads(saved.read_text())["rows_in"] == 8


def test_memory_sizes_prints_both_sizes_side_by_side(work_dir: Path) -> None:
    argv = ["--memory-sizes", "3,5", "--kinds", "png", "--work-dir", str(work_dir), *TINY]
    result = command.run(argv, phase_runner=harness.run_phase_in_process)
    assert result.mode == "memory"
    assert [(r["kind"], r["images"]) for r in result.rows] == [("png", 3), ("png", 5)]
    assert [r["c"]["images"] for r in result.rows] == [3, 5]
    text = result.table()
    header = next(line for line in text.splitlines() if line.startswith("kind"))
    assert "3 images" in header and "5 images" in header
    rss_row = next(line for line in text.splitlines() if "peak RSS MiB" in line)
    assert len(rss_row.split()) == 1 + 3 + 2  # kind, "peak RSS MiB", one figure per size
    assert "peak RSS at 5 vs 3 images" in text


# ---------------------------------------------------------------------------
# A phase in its own process, and what goes wrong
# ---------------------------------------------------------------------------
def test_phase_in_a_child_process_reports_its_own_peak_rss(work_dir: Path) -> None:
    manifest = images.ensure_images(work_dir, images.KIND_PNG, 4)
    result = harness.run_phase_subprocess(["--phase", "b", f"--manifest={manifest}", "--precision", "fp32", *TINY])
    assert result["images_per_s"] > 0 and result["precision"] == "fp32"
    assert result["peak_rss_own_process"] is True
    assert result["peak_rss_mib"] > 100  # torch and an encoder are loaded in that process


def test_failed_child_raises_with_its_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(harness.BenchError, match="FileNotFoundError"):
        harness.run_phase_subprocess(["--phase", "a", f"--manifest={missing}", *TINY])


@pytest.mark.parametrize(
    "argv",
    [["--kinds", "gif"], ["--kinds", ""], ["--memory-sizes", "0,10"], ["--memory-sizes", "a,b"], ["--images", "0"]],
)
def test_bad_flags_are_rejected(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        command.get_args_parser().parse_args(argv)


def test_flag_lists_are_parsed() -> None:
    args = command.get_args_parser().parse_args(["--kinds", "PNG, jpeg,png", "--memory-sizes", "8000,1000"])
    assert args.kinds == ["png", "jpeg"] and args.memory_sizes == [1000, 8000]
    defaults = command.get_args_parser().parse_args([])
    assert defaults.kinds == list(images.KINDS) and defaults.weights == "random" and defaults.precision == "auto"


def test_precisions_measure_int8_beside_fp32_on_the_same_images(work_dir: Path) -> None:
    argv = ["--images", "4", "--kinds", "png", "--work-dir", str(work_dir), "--precisions", "fp32,int8", "--calibration-images", "4", *TINY]
    result = command.run(argv, phase_runner=harness.run_phase_in_process)
    assert [(r["kind"], r["precision"]) for r in result.rows] == [("png", "fp32"), ("png", "int8")]
    fp32, int8 = result.rows
    assert fp32["a"] is int8["a"]  # one prototype loop per kind, the same images
    assert int8["b"]["precision"] == "int8" and int8["c"]["precision"] == "int8"
    assert int8["c"]["images"] == 4 and int8["b"]["images_per_s"] > 0 and int8["b"]["decode_images_per_s"] > 0
    text = result.table()
    assert "precision" in next(line for line in text.splitlines() if line.startswith("kind"))
    assert any(line.startswith("png") and " int8 " in line for line in text.splitlines())
    assert "int8 c/a >= 4.0: png" in text and "c/a >= 2.5: png" in text
    assert "read + decode + crop alone" in text
    assert "CPU int8 (VNNI/AMX)" in text and all(flag in text for flag in result.machine["cpu_flags"])
