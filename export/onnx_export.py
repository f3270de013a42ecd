"""Stage `export`: every matcher member's two towers as ONNX, checked against PyTorch first.

    imgsearch export --out OUT [--tolerance 1e-4] [--opset 17]

The checkpoint holds K cross-fitted members and one in-sample member (model/matcher.py). Each
side is exported as one graph holding that tower of every member: it takes the raw input (image
feature, D floats, or tag vector, d floats) as `features` [batch, dim] and returns
`embeddings` [batch, members, 128], L2-normalised, member k at index k (the in-sample member
last). rank scores an image against a tag as dot(image embedding, text embedding) of the member
that held the image out. Both graphs have a dynamic batch axis (traced with batch 3), run
through onnxruntime on batches of 1, 2 and 7 and are compared with PyTorch; past the tolerance
the stage fails and publishes nothing. Only then are OUT/model/image_tower.onnx, text_tower.onnx
and export.json written (through fsspec: gs:// works).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tempfile
import time
import warnings
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from model import schema, storage
from model.matcher import load_checkpoint
from model.report import StageReport

log = logging.getLogger(__name__)

STAGE = "export"
INPUT_NAME = schema.TOWER_INPUT
OUTPUT_NAME = schema.TOWER_OUTPUT
BATCH_AXIS = "batch"
TRACE_BATCH = 3  # > 1, so nothing batch-size-specific gets baked into the graph
CHECK_BATCHES = (1, 2, 7)
DEFAULT_TOLERANCE = 1e-4
DEFAULT_OPSET = 17
IMAGE = "image"
TEXT = "text"


class ParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree on a tower's output beyond the tolerance."""


@dataclasses.dataclass
class ExportResult(StageReport):
    """rows_in: the towers in the checkpoint (one per side); rows_out: the towers exported."""

    towers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    tolerance: float = DEFAULT_TOLERANCE
    opset: int = DEFAULT_OPSET

    def summary_line(self) -> str:
        parts = ", ".join(
            f"{name} {t['input_dim']}->{t['output_dim']} max |diff| {t['max_abs_diff']:.2e}" for name, t in self.towers.items()
        )
        return f"{self.stage}: {len(self.towers)} towers to ONNX opset {self.opset}, {parts} (tolerance {self.tolerance:g}), {self.seconds:.1f} s"


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def export_tower(tower: nn.Module, in_dim: int, path: str, opset: int) -> None:
    """torch.onnx.export with a dynamic batch axis, into a local file."""
    tower.eval()
    example = torch.randn(TRACE_BATCH, in_dim, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo=True, which needs onnxscript
        # (not a dependency); this one is still supported and exact for these small towers.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            tower,
            (example,),
            path,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}},
            opset_version=opset,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(path))


def onnx_session(model_bytes: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def run_onnx(session: ort.InferenceSession, features: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT_NAME], {INPUT_NAME: features})[0]


def check_parity(tower: nn.Module, session: ort.InferenceSession, in_dim: int, name: str, tolerance: float) -> float:
    """Largest |onnx - torch| over batches of 1, 2 and 7; ParityError past the tolerance."""
    rng = np.random.default_rng(len(name))
    worst = 0.0
    for batch in CHECK_BATCHES:
        features = rng.standard_normal((batch, in_dim)).astype(np.float32)
        with torch.no_grad():
            expected = tower(torch.from_numpy(features)).numpy()
        got = run_onnx(session, features)
        if got.shape != expected.shape:
            raise ParityError(f"{name} tower: ONNX output shape {got.shape} != PyTorch {expected.shape} at batch {batch}")
        diff = float(np.max(np.abs(got - expected)))
        if not np.isfinite(diff) or diff > tolerance:
            raise ParityError(
                f"{name} tower: ONNX and PyTorch differ by {diff:.3e} at batch {batch} "
                f"(tolerance {tolerance:g}); nothing was published"
            )
        worst = max(worst, diff)
    return worst


def export_and_check(tower: nn.Module, in_dim: int, name: str, opset: int, tolerance: float, tmp: str) -> tuple[bytes, dict[str, Any]]:
    local = os.path.join(tmp, f"{name}_tower.onnx")
    export_tower(tower, in_dim, local, opset)
    with open(local, "rb") as f:
        model_bytes = f.read()
    max_diff = check_parity(tower, onnx_session(model_bytes), in_dim, name, tolerance)
    log.info("%s tower: max |onnx - torch| = %.3e over batches %s", name, max_diff, CHECK_BATCHES)
    info = {
        "input_dim": in_dim,
        "output_dim": int(tower.out_dim),
        "max_abs_diff": max_diff,
        "checked_batches": list(CHECK_BATCHES),
        "bytes": len(model_bytes),
    }
    return model_bytes, info


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output root holding model/matcher.pt (local or gs://)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="largest allowed |onnx - torch|")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    return parser


def run(argv: list[str] | None = None) -> ExportResult:
    args = get_args_parser().parse_args(argv)
    started = time.monotonic()
    model, checkpoint = load_checkpoint(schema.out_path(args.out, schema.CHECKPOINT))
    towers = {IMAGE: (model.image_towers(), schema.IMAGE_TOWER_ONNX), TEXT: (model.text_towers(), schema.TEXT_TOWER_ONNX)}

    exported: dict[str, tuple[bytes, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="imgsearch-onnx-") as tmp:
        # every tower passes before anything is published
        for name, (tower, _) in towers.items():
            exported[name] = export_and_check(tower, tower.in_dim, name, args.opset, args.tolerance, tmp)
    infos: dict[str, dict[str, Any]] = {}
    for name, (_, relative) in towers.items():
        model_bytes, info = exported[name]
        storage.write_bytes(schema.out_path(args.out, relative), model_bytes)
        infos[name] = {"path": relative, **info}

    inputs = checkpoint.get("inputs", {})
    storage.write_json(
        schema.out_path(args.out, schema.EXPORT_JSON),
        {
            "schema_version": schema.SCHEMA_VERSION,
            "opset": args.opset,
            "tolerance": args.tolerance,
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "score": "dot(image embedding, text embedding) of one member: both are L2-normalised, so a cosine",
            "folds": model.folds,
            "members": model.folds + 1,
            "in_sample_member": model.full_member,
            "towers": infos,
            "matcher": checkpoint["config"],
            "image_features": inputs.get("image_features", {}),
            "word_vectors": inputs.get("word_vectors"),
        },
    )
    result = ExportResult(
        stage=STAGE,
        rows_in=len(towers),
        rows_out=len(infos),
        seconds=time.monotonic() - started,
        details={"members": model.folds + 1},
        towers=infos,
        tolerance=args.tolerance,
        opset=args.opset,
    )
    result.save(args.out)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(run().summary_line())
