"""extract-images --precision int8 and auto: the quantised encoder through onnxruntime.

efficientnet_lite0 with random weights on a handful of generated images, calibrated on 4 of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from model import encoders, inference, preprocess, quantize, schema
from pipelines import encode_handlers, feature_shards, worker_models
from pipelines import extract_images as ei
from tests.builders import image_rows, write_images
from tests.conftest import write_broken_images, write_image_collection

LITE = encoders.EFFICIENTNET_LITE0
TAGS = ["cat", "dog", "tree"]
N_GOOD = 8


def _argv(out: Path, precision: str, *extra: str) -> list[str]:
    return [
        "--out", str(out),
        "--image-model", LITE,
        "--weights", "random",
        "--batch-size", "4",
        "--precision", precision,
        "--calibration-images", "4",
        "--max-failure-rate", "1",
        *extra,
    ]  # fmt: skip


def _shards(out: Path) -> list[Path]:
    return sorted((out / schema.IMAGE_FEATURES_DIR).glob("features-*.parquet"))


def _features(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in _shards(out)])


def _precisions(out: Path) -> set[bytes]:
    return {pq.read_schema(p).metadata[schema.META_PRECISION] for p in _shards(out)}


def _int8_models(out: Path) -> list[Path]:
    return sorted((out / schema.MODEL_DIR / worker_models.ENCODERS_SUBDIR).glob("*.onnx"))


@pytest.fixture
def collection(tmp_path: Path) -> Path:
    rows = write_image_collection(tmp_path / "images", N_GOOD, TAGS, seed=5)
    broken = [str(p) for p in write_broken_images(tmp_path / "images")]
    out = tmp_path / "out"
    write_images(out, image_rows([(r["uri"], r["tag"]) for r in rows] + [(u, "cat") for u in broken]))
    return out


@pytest.fixture
def lite_auto_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto may pick int8 for efficientnet_lite0 (whatever inference.INT8_AUTO_ENCODERS holds)."""
    monkeypatch.setattr(inference, "INT8_AUTO_ENCODERS", (LITE,))


@pytest.fixture(scope="module")
def lite_random() -> tuple[encoders.EncoderSpec, preprocess.CropSpec]:
    spec = encoders.build_encoder(LITE, encoders.WEIGHTS_RANDOM)
    return spec, preprocess.CropSpec.from_transform(spec.transform)


# ---------------------------------------------------------------------------
# model.quantize
# ---------------------------------------------------------------------------
def test_calibration_sample_is_drawn_by_id_hash_in_any_order():
    ids = [f"img{i}" for i in range(50)]
    sample = quantize.calibration_ids(ids, 8)
    assert len(sample) == 8 and len(set(sample)) == 8
    assert quantize.calibration_ids(list(reversed(ids)) + ids[:5], 8) == sample  # order, duplicates
    assert quantize.calibration_ids(ids, 100) == quantize.calibration_ids(ids, 50)
    assert quantize.calibration_key("w", sample, "minmax") == quantize.calibration_key("w", sample[::-1], "minmax")
    assert quantize.calibration_key("w", sample, "minmax") != quantize.calibration_key("w", sample, "entropy")
    assert quantize.calibration_key("w", sample, "minmax") != quantize.calibration_key("w2", sample, "minmax")


def test_cpu_flags_decide_int8_support(tmp_path: Path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16\n")
    assert quantize.cpu_supports_int8(quantize.cpu_flags(str(cpuinfo)))
    assert quantize.cpu_supports_int8({"amx_int8"}) and quantize.cpu_supports_int8({"avx_vnni"})
    assert not quantize.cpu_supports_int8({"avx2", "avx512f", "avx512_bf16"})
    assert quantize.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_quantised_encoder_takes_uint8_crops_and_keeps_pooled_features_float(lite_random):
    spec, crop = lite_random
    gen = torch.Generator().manual_seed(0)
    crops = torch.randint(0, 256, (6, 3, 224, 224), dtype=torch.uint8, generator=gen)
    fp32_model = quantize.export_onnx(spec.module, crop)
    int8_model = quantize.quantize(fp32_model, crops[:4].numpy(), LITE, quantize.MINMAX)

    import onnx

    graph = onnx.load_from_string(int8_model).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # the pooled output is never rounded to 8 bits
    last_q = max(i for i, op in enumerate(ops) if op == "QuantizeLinear")
    assert last_q < ops.index("GlobalAveragePool")
    session = quantize.session(int8_model)
    features = quantize.run_batch(session, list(crops))
    assert features.shape == (6, encoders.DIMS[LITE]) and features.dtype == np.float32
    # the fp32 export is what the torch encoder computes
    exported = quantize.run_batch(quantize.session(fp32_model), crops)
    expected = inference.forward_features(inference.prepare_model(spec.module, "CPU", inference.FP32), crops, crop, "CPU")
    np.testing.assert_allclose(exported, expected, rtol=1e-3, atol=1e-3)


def test_auto_resolves_on_the_worker_by_its_cpu(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(inference, "cpu_supports_int8", lambda: True)
    for encoder in encoders.ENCODERS:  # an encoder that has not shown the quality bound keeps bf16
        expected = inference.INT8 if encoder in inference.INT8_AUTO_ENCODERS else inference.BF16
        assert inference.worker_precision("auto", "CPU", encoder) == expected
    monkeypatch.setattr(inference, "INT8_AUTO_ENCODERS", (LITE,))
    assert inference.worker_precision("auto", "CPU", LITE) == inference.INT8
    assert inference.worker_precision("auto", "GPU", LITE) == inference.FP16
    monkeypatch.setattr(inference, "cpu_supports_int8", lambda: False)
    assert inference.worker_precision("auto", "CPU", LITE) == inference.BF16
    assert inference.resolve_precision("int8", "CPU") == inference.INT8
    with pytest.raises(ValueError, match="CPU"):
        inference.resolve_precision("int8", "GPU")
    assert inference.vector_space(b"int8") != inference.vector_space(b"float32") == inference.vector_space(b"bfloat16")


# ---------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------
def test_int8_run_writes_features_failures_and_a_reusable_model(collection: Path, monkeypatch: pytest.MonkeyPatch):
    report = ei.run(_argv(collection, "int8"), save_main_session=False)
    assert (report.rows_out, report.rows_failed) == (N_GOOD, 3)
    assert report.details["precision"] == "int8"
    assert _precisions(collection) == {b"int8"}
    models = _int8_models(collection)
    assert len(models) == 1 and models[0].name.startswith(f"{LITE}-random-int8-")
    assert report.details["int8_model"] == models[0].name
    table = _features(collection)
    assert table.num_rows == N_GOOD
    meta = pq.read_schema(_shards(collection)[0]).metadata
    assert meta[schema.META_INT8_MODEL] == models[0].name.encode()
    embeddings = np.asarray(table.column(schema.EMBEDDING).to_pylist(), dtype=np.float32)
    assert np.isfinite(embeddings).all() and embeddings.shape == (N_GOOD, encoders.DIMS[LITE])

    # a rerun with the same index calibrates nothing: the stored model is found by its hash
    def no_quantize(*args, **kwargs):
        raise AssertionError("calibrated again")

    monkeypatch.setattr(quantize, "quantize", no_quantize)
    again = ei.run(_argv(collection, "int8", "--full"), save_main_session=False)
    assert again.rows_out == N_GOOD and _int8_models(collection) == models


def test_int8_and_float_features_are_not_mixed_without_full(collection: Path, monkeypatch: pytest.MonkeyPatch, lite_auto_int8):
    ei.run(_argv(collection, "fp32"), save_main_session=False)
    with pytest.raises(feature_shards.IncompatibleFeatures, match="--full"):
        ei.run(_argv(collection, "int8"), save_main_session=False)
    assert _precisions(collection) == {b"float32"}
    ei.run(_argv(collection, "int8", "--full"), save_main_session=False)
    assert _precisions(collection) == {b"int8"}
    with pytest.raises(feature_shards.IncompatibleFeatures, match="int8"):
        ei.run(_argv(collection, "fp32"), save_main_session=False)
    # auto on a CPU without int8 makes float features: refused over int8 ones as well
    monkeypatch.setattr(inference, "cpu_supports_int8", lambda: False)
    with pytest.raises(feature_shards.IncompatibleFeatures):
        ei.run(_argv(collection, "auto"), save_main_session=False)


@pytest.mark.parametrize("has_int8", [True, False])
def test_auto_records_what_the_worker_ran(collection: Path, monkeypatch: pytest.MonkeyPatch, has_int8: bool, lite_auto_int8):
    monkeypatch.setattr(inference, "cpu_supports_int8", lambda: has_int8)
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: False)
    report = ei.run(_argv(collection, "auto"), save_main_session=False)
    assert report.rows_out == N_GOOD
    assert report.details["precision"] == ("int8" if has_int8 else "fp32")
    assert report.details["precision_requested"] == "auto"
    assert _precisions(collection) == ({b"int8"} if has_int8 else {b"float32"})


def test_auto_on_a_remote_runner_prepares_int8_and_the_worker_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lite_auto_int8):
    """A launcher without VNNI still calibrates int8 for workers that may have it."""
    rows = write_image_collection(tmp_path / "images", 4, TAGS, seed=6)
    out = tmp_path / "out"
    write_images(out, image_rows([(r["uri"], r["tag"]) for r in rows]))
    monkeypatch.setattr(inference, "cpu_supports_int8", lambda: False)
    monkeypatch.setattr(ei, "runs_here", lambda options: False)
    handlers = []
    original = encode_handlers.AutoPrecisionHandler.load_model

    def load_model(self):
        handlers.append(self)
        monkeypatch.setattr(inference, "cpu_supports_int8", lambda: True)  # the worker's CPU
        return original(self)

    monkeypatch.setattr(encode_handlers.AutoPrecisionHandler, "load_model", load_model)
    report = ei.run(_argv(out, "auto"), save_main_session=False)
    assert handlers and report.details["precision"] == "int8"
    assert _precisions(out) == {b"int8"}


def test_int8_failures_go_to_dead_letters_and_non_finite_rows_fail(collection: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []
    original = quantize.run_batch

    def run_batch(session, crops):
        calls.append(len(crops))
        if len(calls) == 1:
            raise RuntimeError("onnxruntime failed on this batch")
        features = original(session, crops)
        features[0, 3] = np.nan
        return features

    monkeypatch.setattr(quantize, "run_batch", run_batch)
    report = ei.run(_argv(collection, "int8"), save_main_session=False)
    failures = pa.concat_tables([pq.read_table(p) for p in (collection / schema.FAILURES_DIR).glob("*.parquet")])
    errors = failures.column(schema.ERROR).to_pylist()
    assert errors.count("RuntimeError") == calls[0]
    assert errors.count(ei.NON_FINITE_EMBEDDING) == len(calls) - 1
    assert report.rows_out == N_GOOD - calls[0] - (len(calls) - 1)
    assert np.isfinite(np.asarray(_features(collection).column(schema.EMBEDDING).to_pylist())).all()


def test_int8_refuses_gpu_and_device_decoding(collection: Path):
    with pytest.raises(ValueError):
        ei.run(_argv(collection, "int8", "--device", "GPU"), save_main_session=False)
    with pytest.raises(ValueError, match="decode"):
        ei.run(_argv(collection, "int8", "--decode", "device"), save_main_session=False)
