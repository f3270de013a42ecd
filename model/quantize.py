"""int8 image encoders for CPUs: ONNX export, static QDQ quantisation calibrated on the collection.

An encoder is exported with its normalisation inside the graph (input: uint8 NCHW crops, as
model.preprocess.crop_uint8 makes them; output: pooled float32 features), prepared with
onnxruntime's quant_pre_process, then quantised with quantize_static: QDQ format, per-channel
int8 weights, uint8 activations whose ranges come from a calibration sample of the collection's own
images. What stays in float, and why (measured on the demo corpus, efficientnet_lite0 ImageNet
weights, cosine of int8 to fp32 features):

- the pooled features and everything after the last activation (GlobalAveragePool, Flatten):
  the output is a float vector, never rounded to 256 levels;
- efficientnet_lite0's first FLOAT_CONVS convolutions (the stem and the first two blocks): with
  them quantised the features' mean cosine to fp32 was 0.960, without them 0.995. ResNet50 keeps
  every convolution in int8.

The calibration sample is drawn by a hash of image ids (calibration_ids), so the same index gives
the same sample on any machine; the quantised model's name carries a hash of the sample, the
method and the float weights (calibration_key), so a rerun finds and reuses it.

Nothing here imports Beam; onnxruntime and onnx only where a model is built or run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from model.preprocess import CropSpec

log = logging.getLogger(__name__)

INPUT_NAME = "pixels"  # uint8 [batch, 3, crop, crop]
OUTPUT_NAME = "features"  # float32 [batch, dim]
BATCH_AXIS = "batch"
OPSET = 17
EXPORT_BATCH = 2

MINMAX, ENTROPY, PERCENTILE = "minmax", "entropy", "percentile"
CALIBRATION_METHODS = (MINMAX, ENTROPY, PERCENTILE)
DEFAULT_CALIBRATION_METHOD = MINMAX  # chosen by measurement: see README, "int8 on CPUs"
DEFAULT_CALIBRATION_IMAGES = 256
# images per calibration inference: every intermediate tensor of a batch is held at once (ResNet50:
# a phase that calibrated in batches of 16 peaked at 5 GiB RSS), and ranges and histograms are merged
# batch by batch, so small batches cost little time and bound the memory
CALIBRATION_BATCH = 4
# bump when what a quantised model is made from changes, so stored ones are not reused
QUANTIZER_VERSION = 1

# operators quantised; GlobalAveragePool and Flatten are not, so the pooled output stays float
QUANTIZED_OP_TYPES = ("Conv", "Add", "Clip", "Relu", "MaxPool")
# leading convolutions kept in float, per encoder (measured; see the module docstring)
FLOAT_CONVS = {"resnet50": 0, "efficientnet_lite0": 5}

# /proc/cpuinfo flags that give oneDNN / MLAS fast int8 dot products
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


# ---------------------------------------------------------------------------
# The CPU
# ---------------------------------------------------------------------------
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The first processor's flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_supports_int8(flags: Iterable[str] | None = None) -> bool:
    """Whether this CPU has VNNI or AMX int8 (without them int8 is no faster than bf16)."""
    found = cpu_flags() if flags is None else frozenset(flags)
    return any(flag in found for flag in INT8_CPU_FLAGS)


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------
class PixelEncoder(nn.Module):
    """uint8 NCHW crops -> the weights' normalisation -> the encoder's pooled features."""

    def __init__(self, encoder: nn.Module, spec: CropSpec):
        super().__init__()
        self.encoder = encoder
        # (x/255 - mean)/std == x * scale - shift, as model.inference.normalize_batch computes it
        self.register_buffer("scale", torch.tensor([1.0 / (255.0 * s) for s in spec.std]).view(1, 3, 1, 1))
        self.register_buffer("shift", torch.tensor([m / s for m, s in zip(spec.mean, spec.std)]).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixels.float() * self.scale - self.shift)


def export_onnx(encoder: nn.Module, spec: CropSpec) -> bytes:
    """The encoder (eval mode, float32) as an ONNX graph taking uint8 crops, with a dynamic batch."""
    import onnx

    model = PixelEncoder(encoder, spec).eval()
    example = torch.zeros(EXPORT_BATCH, 3, spec.crop_size, spec.crop_size, dtype=torch.uint8)
    with tempfile.TemporaryDirectory(prefix="imgsearch-onnx-") as tmp:
        path = os.path.join(tmp, "encoder.onnx")
        with warnings.catch_warnings():
            # the TorchScript exporter (dynamo=False) is deprecated but exact for these CNNs and
            # needs no onnxscript; constant folding warns about Slice steps it leaves alone
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                path,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}},
                opset_version=OPSET,
                dynamo=False,
            )
        onnx.checker.check_model(path)
        with open(path, "rb") as f:
            return f.read()


# ---------------------------------------------------------------------------
# Calibration sample
# ---------------------------------------------------------------------------
def _id_hash(image_id: str) -> str:
    return hashlib.sha256(image_id.encode("utf-8")).hexdigest()


def calibration_ids(image_ids: Iterable[str], n: int = DEFAULT_CALIBRATION_IMAGES) -> list[str]:
    """n distinct image ids drawn by hash: the same for the same index, in any order, anywhere."""
    return sorted(set(image_ids), key=lambda i: (_id_hash(i), i))[: max(0, n)]


def calibration_key(weights_digest: str, sample_ids: Sequence[str], method: str) -> str:
    """A short hash of what a quantised model is made from: float weights, sample, method, versions."""
    import onnxruntime

    h = hashlib.sha256()
    for part in (f"v{QUANTIZER_VERSION}", onnxruntime.__version__, weights_digest, method, *sorted(sample_ids)):
        h.update(part.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def _method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    return {MINMAX: CalibrationMethod.MinMax, ENTROPY: CalibrationMethod.Entropy, PERCENTILE: CalibrationMethod.Percentile}[method]


class _BatchReader:
    """onnxruntime's CalibrationDataReader over uint8 batches; set_range lets quantize_static
    collect one batch at a time (CalibStridedMinMax), so histograms never hold every activation
    of the whole sample at once."""

    def __init__(self, batches: Sequence[np.ndarray]):
        self._batches = list(batches)
        self._at, self._end = 0, len(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._at >= self._end:
            return None
        self._at += 1
        return {INPUT_NAME: self._batches[self._at - 1]}

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._at, self._end = start_index, min(end_index, len(self._batches))

    def rewind(self) -> None:
        self._at, self._end = 0, len(self._batches)


def calibration_batches(crops: np.ndarray, batch: int = CALIBRATION_BATCH) -> list[np.ndarray]:
    if len(crops) == 0:
        raise ValueError("no calibration images: int8 needs at least one readable image of the collection")
    return [np.ascontiguousarray(crops[i : i + batch]) for i in range(0, len(crops), batch)]


def float_nodes(model_bytes: bytes, encoder_name: str) -> list[str]:
    """Names of the nodes kept in float: the encoder's first FLOAT_CONVS convolutions."""
    import onnx

    n = FLOAT_CONVS.get(encoder_name, 0)
    convs = [node.name for node in onnx.load_from_string(model_bytes).graph.node if node.op_type == "Conv"]
    return convs[:n]


def quantize(fp32_model: bytes, crops: np.ndarray, encoder_name: str, method: str = DEFAULT_CALIBRATION_METHOD) -> bytes:
    """An exported fp32 encoder -> static int8 QDQ (per-channel weights), calibrated on crops.

    crops: uint8 [n, 3, crop, crop], preprocessed exactly as extraction does.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = calibration_batches(crops)
    with tempfile.TemporaryDirectory(prefix="imgsearch-quant-") as tmp:
        raw, prepared, quantised = (os.path.join(tmp, name) for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        with open(raw, "wb") as f:
            f.write(fp32_model)
        quant_pre_process(raw, prepared)
        with open(prepared, "rb") as f:
            keep_float = float_nodes(f.read(), encoder_name)
        quantize_static(
            prepared,
            quantised,
            _BatchReader(batches),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=_method(method),
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            nodes_to_exclude=keep_float,
            extra_options={"CalibStridedMinMax": 1},  # one batch per collect (every method)
        )
        with open(quantised, "rb") as f:
            return f.read()


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------
def session(model_bytes: bytes, threads: int | None = None):
    """An onnxruntime CPU session (threads: intra-op threads, default onnxruntime's own choice)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def run_batch(sess, crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Features float32 [n, dim] of uint8 CHW crops (numpy arrays or CPU tensors)."""
    batch = np.ascontiguousarray(np.stack([np.asarray(c) for c in crops]), dtype=np.uint8)
    return np.asarray(sess.run([OUTPUT_NAME], {INPUT_NAME: batch})[0], dtype=np.float32)
