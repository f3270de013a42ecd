"""bench's three phases, each measured on its own: (a) the prototype's loop, (b) the model alone,
(c) the extract-images stage end to end; and what the machine is.

Each phase returns a JSON-able dict and runs in a process of its own (harness.py), so torch, Beam
and the stages are imported inside the phases, not here: a phase's peak RSS holds only what that
phase needs (phase (a) never loads Beam).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from model import devices
from pipelines.bench.images import manifest_uris

DEFAULT_MODEL_SECONDS = 10.0  # how long (b) times the model, after its warm-up batch
# int8: images the quantisation is calibrated on, in (b) and (c) alike (the stage's default is 256;
# fewer keep the bench short, and calibration happens before the stage's pipeline starts)
DEFAULT_CALIBRATION_IMAGES = 64
MIN_TIMED_BATCHES = 3
MODEL_BATCHES = 2  # distinct pre-made batches (b) cycles through
# the CPU flags that decide the precisions: shown in the header
SHOWN_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16")

PHASE_PROTOTYPE, PHASE_MODEL, PHASE_STAGE = "a", "b", "c"
PHASES = (PHASE_PROTOTYPE, PHASE_MODEL, PHASE_STAGE)
PHASE_NAMES = {
    PHASE_PROTOTYPE: "prototype loop (batch 1, fp32, eager)",
    PHASE_MODEL: "model alone",
    PHASE_STAGE: "extract-images end to end",
}


# ---------------------------------------------------------------------------
# Machine description
# ---------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def cpu_precision_flags() -> list[str]:
    """Which of the flags that decide int8 and bf16 speed (VNNI, AMX, AVX-512 BF16) this CPU has."""
    from model import quantize

    found = quantize.cpu_flags()
    return [flag for flag in SHOWN_CPU_FLAGS if flag in found]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def torch_info(device: str) -> dict[str, Any]:
    """What torch sees in this process: version, threads, bf16 support, the GPU if one is used."""
    import torch

    from model import inference

    info = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": inference.cpu_supports_bf16(),
        "torch_device": str(inference.torch_device(device)),
    }
    if info["torch_device"] == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------------------
# The three phases
# ---------------------------------------------------------------------------
def _rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else 0.0


def phase_prototype(uris: Sequence[str], encoder_name: str, weights: str, device: str) -> dict[str, Any]:
    """(a) The prototype's loop: one file, one PIL image, one transform, one fp32 forward at a time.

    One untimed image first, as a warm-up, so the figure is the loop's steady rate.
    """
    import torch

    from model import encoders, inference

    spec = encoders.build_encoder(encoder_name, weights)
    dev = inference.torch_device(device)
    module = spec.module.to(dev)

    def one(uri: str) -> None:
        with Image.open(uri) as img:
            x = spec.transform(img.convert("RGB")).unsqueeze(0).to(dev)
        with torch.inference_mode():
            module(x).cpu().numpy()

    one(uris[0])
    started = time.perf_counter()
    for uri in uris:
        one(uri)
    seconds = time.perf_counter() - started
    return {"images": len(uris), "seconds": seconds, "images_per_s": _rate(len(uris), seconds), **torch_info(device)}


def _premade_batches(uris: Sequence[str], spec: Any, crop: Any, batch_size: int) -> list[Any]:
    """Up to MODEL_BATCHES uint8 batches, decoded and cropped the stage's way, cycling the images."""
    import torch

    from model import preprocess

    crops = []
    for uri in uris[: batch_size * MODEL_BATCHES]:
        with open(uri, "rb") as f:
            crops.append(preprocess.crop_uint8(preprocess.decode_image(f.read(), spec.resize_size), crop))
    n_batches = max(1, min(MODEL_BATCHES, len(crops) // batch_size))
    need = n_batches * batch_size
    crops = [crops[i % len(crops)] for i in range(need)]
    return [torch.stack(crops[k * batch_size : (k + 1) * batch_size]) for k in range(n_batches)]


def _model_forward(spec: Any, crop: Any, device: str, precision: str, uris: Sequence[str], calibration_images: int) -> Callable[[Any], Any]:
    """batch uint8 NCHW -> features, with the model as the stage runs it at this precision."""
    from model import inference, preprocess, quantize

    if precision != inference.INT8:
        module = inference.prepare_model(spec.module, device, precision)
        return lambda batch: inference.forward_features(module, batch, crop, device)
    sample = []
    for uri in uris[:calibration_images]:
        with open(uri, "rb") as f:
            sample.append(preprocess.crop_uint8(preprocess.decode_image(f.read(), crop.resize_size, keep_mode=True), crop).numpy())
    model = quantize.quantize(quantize.export_onnx(spec.module, crop), np.stack(sample), spec.name)
    session = quantize.session(model)
    return lambda batch: quantize.run_batch(session, batch.numpy())


def phase_model(
    uris: Sequence[str],
    encoder_name: str,
    weights: str,
    device: str,
    precision: str,
    batch_size: int,
    min_seconds: float = DEFAULT_MODEL_SECONDS,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
) -> dict[str, Any]:
    """(b) The model alone, as the stage runs it: prepare_model + forward_features on uint8 batches
    (int8: the quantised encoder through onnxruntime, calibrated as the stage does on the first
    calibration_images images).

    The batches are made before timing (decoding excluded); the first forward is an untimed
    warm-up (oneDNN builds its kernels then); then batches are timed until min_seconds have passed
    and at least MIN_TIMED_BATCHES ran.
    """
    from model import encoders, inference, preprocess

    spec = encoders.build_encoder(encoder_name, weights)
    crop = preprocess.CropSpec.from_transform(spec.transform)
    resolved = inference.worker_precision(precision, device, encoder_name)  # as a stage's worker would
    decode_started = time.perf_counter()
    batches = _premade_batches(uris, spec, crop, batch_size)
    decode_seconds = time.perf_counter() - decode_started  # read + decode + crop, one thread
    decoded = min(len(uris), batch_size * MODEL_BATCHES)
    forward = _model_forward(spec, crop, device, resolved, uris, calibration_images)

    forward(batches[0])
    timed, images = 0, 0
    started = time.perf_counter()
    while True:
        features = forward(batches[timed % len(batches)])
        timed += 1
        images += features.shape[0]
        seconds = time.perf_counter() - started
        if seconds >= min_seconds and timed >= MIN_TIMED_BATCHES:
            break
    return {
        "images": images,
        "batches": timed,
        "batch_size": batch_size,
        "seconds": seconds,
        "images_per_s": _rate(images, seconds),
        "decode_images_per_s": _rate(decoded, decode_seconds),
        "precision": resolved,
        **torch_info(device),
    }


def phase_stage(
    index_out: str | Path,
    out: str | Path,
    encoder_name: str,
    weights: str,
    device: str,
    precision: str,
    batch_size: int,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
) -> dict[str, Any]:
    """(c) extract-images end to end into a fresh OUT holding a copy of a cached index.

    The rate is rows_out / the stage report's seconds: the pipeline's wall time (worker start,
    model load, read, decode, preprocess, RunInference, Parquet), not the driver's encoder build
    before it; the wall time around run() is reported beside it.
    """
    from model import schema
    from pipelines import extract_images

    index_dir = Path(schema.out_path(str(index_out), "index"))
    shutil.copytree(index_dir, Path(schema.out_path(str(out), "index")))
    argv = [
        "--out", str(out),
        "--image-model", encoder_name,
        "--weights", weights,
        "--device", device,
        "--batch-size", str(batch_size),
        "--precision", precision,
        "--calibration-images", str(calibration_images),
    ]  # fmt: skip
    started = time.perf_counter()
    report = extract_images.run(argv, save_main_session=False)
    wall = time.perf_counter() - started
    return {
        "images": report.rows_out,
        "rows_in": report.rows_in,
        "rows_failed": report.rows_failed,
        "seconds": report.seconds,
        "wall_seconds": wall,
        "images_per_s": _rate(report.rows_out, report.seconds),
        "precision": report.details.get("precision"),
        "decode": report.details.get("decode"),
        **torch_info(device),
    }


# ---------------------------------------------------------------------------
# A phase's own command line (harness.py runs it in a child process)
# ---------------------------------------------------------------------------
def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The model's flags, the same in bench's command line and in a phase's."""
    from model import encoders, inference  # the registries; torch, so only when a parser is built

    parser.add_argument("--image-model", default=encoders.RESNET50, choices=encoders.ENCODERS)
    parser.add_argument(
        "--weights",
        default="random",
        help="random (default: the same speed as imagenet, no download), imagenet, or a state-dict PATH",
    )
    parser.add_argument("--device", default=devices.CPU, type=devices.parse_device, choices=devices.DEVICES)
    parser.add_argument("--batch-size", type=int, default=None, help="inference batch (default: extract-images' default for the device)")
    parser.add_argument("--precision", default=inference.AUTO, choices=inference.PRECISIONS)
    parser.add_argument(
        "--calibration-images",
        type=positive_int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help=f"int8: images the quantisation is calibrated on, in (b) and (c) (default {DEFAULT_CALIBRATION_IMAGES})",
    )


def get_phase_parser() -> argparse.ArgumentParser:
    """The internal command line of one phase (`python -m pipelines.bench.harness --phase ...`)."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.bench.harness --phase", description="run one bench phase")
    parser.add_argument("--phase", required=True, choices=PHASES)
    parser.add_argument("--manifest", action="append", default=[], help="(a, b) images to use; b takes several")
    parser.add_argument("--index-out", help="(c) an OUT holding the index to copy")
    parser.add_argument("--out", help="(c) the fresh OUT to extract into")
    add_model_flags(parser)
    parser.add_argument("--model-seconds", type=float, default=DEFAULT_MODEL_SECONDS)
    return parser


def _interleaved(lists: Sequence[Sequence[str]]) -> list[str]:
    out = []
    for i in range(max((len(x) for x in lists), default=0)):
        out.extend(x[i] for x in lists if i < len(x))
    return out


def execute_phase(argv: Sequence[str]) -> dict[str, Any]:
    """Run one phase from its internal command line and return its JSON-able result."""
    args = get_phase_parser().parse_args(list(argv))
    common_args = (args.image_model, args.weights, args.device)
    if args.phase == PHASE_PROTOTYPE:
        return phase_prototype(manifest_uris(args.manifest[0]), *common_args)
    if args.phase == PHASE_MODEL:
        uris = _interleaved([manifest_uris(m) for m in args.manifest])
        return phase_model(uris, *common_args, args.precision, args.batch_size, args.model_seconds, args.calibration_images)
    return phase_stage(args.index_out, args.out, *common_args, args.precision, args.batch_size, args.calibration_images)
