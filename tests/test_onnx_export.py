from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export import onnx_export
from model import schema, storage
from model.matcher import FoldedMatcher, MatcherConfig, save_checkpoint

CONFIG = MatcherConfig(image_dim=20, text_dim=7, hidden=32, out_dim=128, dropout=0.1)


FOLDS = 3


def write_checkpoint(out: str) -> FoldedMatcher:
    torch.manual_seed(0)
    model = FoldedMatcher(CONFIG, FOLDS)
    with torch.no_grad():  # not the identity LayerNorm of a fresh model
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    inputs = {"image_features": {"imgsearch.encoder": "test-encoder"}, "word_vectors": "vectors.bin"}
    save_checkpoint(schema.out_path(out, schema.CHECKPOINT), model, inputs=inputs)
    return model.eval()


def test_export_parity_and_files(tmp_path: Path):
    out = str(tmp_path / "out")
    model = write_checkpoint(out)
    result = onnx_export.run(["--out", out])

    assert set(result.towers) == {"image", "text"}
    for name in result.towers:
        assert result.towers[name]["max_abs_diff"] < onnx_export.DEFAULT_TOLERANCE
        assert result.towers[name]["checked_batches"] == [1, 2, 7]
    assert "max |diff|" in result.summary_line()

    info = storage.read_json(schema.out_path(out, schema.EXPORT_JSON))
    assert info["towers"]["image"]["input_dim"] == 20 and info["towers"]["text"]["input_dim"] == 7
    assert info["towers"]["image"]["output_dim"] == 128
    assert info["opset"] == onnx_export.DEFAULT_OPSET and info["tolerance"] == onnx_export.DEFAULT_TOLERANCE
    assert info["image_features"]["imgsearch.encoder"] == "test-encoder"
    assert info["folds"] == FOLDS and info["members"] == FOLDS + 1 and info["in_sample_member"] == FOLDS

    # the published files, read back, agree with PyTorch at a batch size never traced or checked,
    # member by member: [batch, members, 128]
    towers = ((schema.IMAGE_TOWER_ONNX, model.image_towers(), 20), (schema.TEXT_TOWER_ONNX, model.text_towers(), 7))
    for rel, tower, dim in towers:
        session = ort.InferenceSession(storage.read_bytes(schema.out_path(out, rel)), providers=["CPUExecutionProvider"])
        (inp,) = session.get_inputs()
        assert inp.name == onnx_export.INPUT_NAME and isinstance(inp.shape[0], str)  # dynamic batch
        assert session.get_outputs()[0].name == onnx_export.OUTPUT_NAME
        x = np.random.default_rng(5).standard_normal((11, dim)).astype(np.float32)
        got = session.run(None, {onnx_export.INPUT_NAME: x})[0]
        assert got.shape == (11, FOLDS + 1, 128)
        with torch.no_grad():
            np.testing.assert_allclose(got, tower(torch.from_numpy(x)).numpy(), atol=1e-5)
            member = model.members[1].image_tower if dim == 20 else model.members[1].text_tower
            np.testing.assert_allclose(got[:, 1], member(torch.from_numpy(x)).numpy(), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=2), 1.0, rtol=1e-5)
        assert not np.allclose(got[:, 0], got[:, 1])  # members differ


def test_sabotaged_onnx_output_fails_loudly_and_publishes_nothing(tmp_path: Path, monkeypatch):
    out = str(tmp_path / "out")
    write_checkpoint(out)
    real = onnx_export.run_onnx
    monkeypatch.setattr(onnx_export, "run_onnx", lambda session, x: real(session, x) + 1e-3)
    with pytest.raises(onnx_export.ParityError, match="differ by 1.0"):
        onnx_export.run(["--out", out])
    for rel in (schema.IMAGE_TOWER_ONNX, schema.TEXT_TOWER_ONNX, schema.EXPORT_JSON):
        assert not storage.exists(schema.out_path(out, rel))


def test_tolerance_flag_is_honoured(tmp_path: Path, monkeypatch):
    out = str(tmp_path / "out")
    write_checkpoint(out)
    real = onnx_export.run_onnx
    monkeypatch.setattr(onnx_export, "run_onnx", lambda session, x: real(session, x) + 1e-3)
    result = onnx_export.run(["--out", out, "--tolerance", "1e-2"])
    assert result.towers["image"]["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)
    assert storage.read_json(schema.out_path(out, schema.EXPORT_JSON))["tolerance"] == 1e-2


def test_export_through_fsspec_url():
    out = "memory://imgsearch-export/out"
    write_checkpoint(out)
    result = onnx_export.run(["--out", out, "--opset", "18"])
    assert result.opset == 18
    assert storage.exists(schema.out_path(out, schema.IMAGE_TOWER_ONNX))
    assert storage.read_json(schema.out_path(out, schema.EXPORT_JSON))["opset"] == 18
