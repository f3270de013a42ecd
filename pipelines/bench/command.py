"""`imgsearch bench`: how fast image features are extracted, measured three ways on the same images.

    imgsearch bench [--image-model resnet50|efficientnet_lite0] [--weights random|imagenet|PATH]
        [--images N] [--kinds jpeg,png] [--batch-size N] [--precision auto|fp32|bf16|fp16]
        [--device CPU|GPU] [--work-dir DIR] [--model-seconds S] [--memory-sizes N,M,...] [--json PATH]

It generates seeded test images (no download): "photos" as JPEG of typical web sizes and
"graphics" as PNG with transparency, like crawled clip-art. Per kind of input it measures

- (a) the prototype's loop: per image, read the file, PIL open and convert to RGB, the encoder's
  torchvision transform, a batch of one, an fp32 eager forward;
- (b) the model alone at our settings (model.inference: the resolved precision, channels_last,
  batches of --batch-size made beforehand, so decoding is excluded);
- (c) the real extract-images stage end to end (read, decode, preprocess, RunInference, Parquet)
  on an index of the same images, in a fresh OUT;

and prints images/s for each, the ratios c/a and c/b, and each phase's peak RSS. Every phase runs
in its own Python process (`python -m pipelines.bench.harness --phase a|b|c ...`, which prints
JSON), so each peak RSS is that phase's own: the parent reads the child's ru_maxrss from os.wait4.

`--memory-sizes 1000,8000` runs only (c), once per size, and prints the peak RSS side by side:
extract-images' memory must not grow with the number of images.

Generated images and the index built from them are cached under --work-dir (by a hash of what
they are made from), so a rerun skips generation.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from pipelines.bench import fetch as fetch_phase
from pipelines.bench import phases
from pipelines.bench.harness import PhaseRunner, run_phase_subprocess
from pipelines.bench.images import KIND_JPEG, KINDS, SEED, ensure_images, ensure_index
from pipelines.bench.phases import PHASE_MODEL, PHASE_NAMES, PHASE_PROTOTYPE, PHASE_STAGE
from pipelines.bench.results import BenchResult, ratio

log = logging.getLogger(__name__)

# Sized so the default run (resnet50, both kinds) takes about 2 minutes on 2 cores (measured: 240
# per kind took 63 s with the images cached): (a) runs at ~19 images/s there, (c) at ~35-50, and
# each phase's process start and Beam's start-up (about a second of (c)'s time) are fixed costs.
DEFAULT_IMAGES = 500
DEFAULT_WORK_DIR = str(Path(tempfile.gettempdir()) / "imgsearch-bench")


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _subset_of(choices: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """argparse type: a comma-separated subset of choices (any case), in the order given, once each."""

    def parse(text: str) -> list[str]:
        picked = _csv_list(text.lower())
        if not picked or any(p not in choices for p in picked):
            raise argparse.ArgumentTypeError(f"{what} must be a comma-separated subset of {','.join(choices)}")
        return list(dict.fromkeys(picked))

    return parse


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError("memory sizes must be comma-separated integers, e.g. 1000,8000") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("memory sizes must be positive")
    return sorted(dict.fromkeys(sizes))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgsearch bench",
        description="measure image feature extraction: the prototype's loop (a), the model alone (b) and "
        "the extract-images stage end to end (c), on the same generated images",
    )
    from model import inference  # the precisions' registry (torch: only when the parser is built)

    phases.add_model_flags(parser)
    parser.add_argument("--images", type=phases.positive_int, default=DEFAULT_IMAGES, help="images per input kind")
    parser.add_argument("--kinds", type=_subset_of(KINDS, "kinds"), default=list(KINDS), help="jpeg (photos), png (graphics with transparency), or both: jpeg,png")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="generated images, indexes and scratch OUTs (cached between runs)")
    parser.add_argument("--model-seconds", type=float, default=phases.DEFAULT_MODEL_SECONDS, help="how long (b) times the model")
    parser.add_argument("--memory-sizes", type=_sizes, default=None, help="e.g. 1000,8000: run only (c) at each size and compare peak RSS")
    parser.add_argument(
        "--precisions",
        type=_subset_of(inference.PRECISIONS, "precisions"),
        default=None,
        help="e.g. fp32,bf16,int8: (b) and (c) at each precision, on the same images in the same run, "
        "beside one (a) per kind (instead of --precision)",
    )
    parser.add_argument("--json", default=None, help="also save the result as JSON here")
    parser.add_argument("--fetch", default="on", choices=("on", "off", "only"), help="the fetch phase (a local HTTP server): after the rest, not at all, or alone")
    parser.add_argument("--fetch-threads", type=phases.positive_int, default=fetch_phase.DEFAULT_THREADS, help="fetch --threads in the fetch phase")
    parser.add_argument("--seed", type=int, default=SEED, help=argparse.SUPPRESS)
    return parser


def _default_batch_size(device: str) -> int:
    from pipelines import extract_images

    return extract_images.DEFAULT_BATCH_SIZE[device]


def _model_argv(args: argparse.Namespace, precision: str | None = None) -> list[str]:
    return [
        "--image-model", args.image_model,
        "--weights", args.weights,
        "--device", args.device,
        "--batch-size", str(args.batch_size),
        "--precision", precision or args.precision,
        "--calibration-images", str(args.calibration_images),
    ]  # fmt: skip


def _stage_phase(args: argparse.Namespace, runner: PhaseRunner, manifest: Path, kind: str, precision: str | None = None) -> dict[str, Any]:
    index_out = ensure_index(args.work_dir, manifest)
    runs = Path(args.work_dir) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=runs))
    try:
        log.info("bench: (c) %s on %s images", PHASE_NAMES[PHASE_STAGE], kind)
        return runner(["--phase", PHASE_STAGE, "--index-out", str(index_out), "--out", str(out / "out"), *_model_argv(args, precision)])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _throughput_rows(args: argparse.Namespace, runner: PhaseRunner, machine: dict[str, Any]) -> list[dict[str, Any]]:
    manifests = {kind: ensure_images(args.work_dir, kind, args.images, args.seed) for kind in args.kinds}
    log.info("bench: (b) %s, %.0f s of batches of %d", PHASE_NAMES[PHASE_MODEL], args.model_seconds, args.batch_size)
    b_argv = ["--phase", PHASE_MODEL, *(f"--manifest={m}" for m in manifests.values())]
    precisions = args.precisions or [args.precision]
    b_by = {p: runner([*b_argv, *_model_argv(args, p), "--model-seconds", str(args.model_seconds)]) for p in precisions}
    b0 = b_by[precisions[0]]
    machine.update({k: v for k, v in b0.items() if k in ("torch", "torch_threads", "cpu_bf16", "torch_device", "gpu", "precision")})
    if len(precisions) > 1:
        machine["precision"] = ", ".join(b["precision"] for b in b_by.values())
    rows = []
    for kind, manifest in manifests.items():
        log.info("bench: (a) %s on %d %s images", PHASE_NAMES[PHASE_PROTOTYPE], args.images, kind)
        a = runner(["--phase", PHASE_PROTOTYPE, f"--manifest={manifest}", *_model_argv(args)])
        for precision, b in b_by.items():
            c = _stage_phase(args, runner, manifest, kind, precision)
            machine.setdefault("decode", c.get("decode"))
            if c["images"] != args.images:
                log.warning("bench: extract-images wrote %d of %d %s images (%d failed)", c["images"], args.images, kind, c["rows_failed"])
            rows.append(
                {
                    "kind": kind,
                    "precision": b.get("precision", precision),
                    "images": args.images,
                    "a": a,
                    "b": b,
                    "c": c,
                    "c/a": ratio(c["images_per_s"], a["images_per_s"]),
                    "c/b": ratio(c["images_per_s"], b["images_per_s"]),
                }
            )
    return rows


def _memory_rows(args: argparse.Namespace, runner: PhaseRunner, machine: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for kind in args.kinds:
        for n in args.memory_sizes:
            manifest = ensure_images(args.work_dir, kind, n, args.seed)
            c = _stage_phase(args, runner, manifest, kind)
            machine.update({k: v for k, v in c.items() if k in ("torch", "torch_threads", "cpu_bf16", "torch_device", "gpu")})
            machine.setdefault("precision", c.get("precision"))
            machine.setdefault("decode", c.get("decode"))
            rows.append({"kind": kind, "images": n, "c": c})
    return rows


def run(argv: list[str] | None = None, phase_runner: PhaseRunner = run_phase_subprocess) -> BenchResult:
    """Generate (or reuse) the images, run the phases, return the result (its table() is what is printed).

    phase_runner runs one phase from its internal command line; tests pass run_phase_in_process.
    """
    args = get_args_parser().parse_args(argv)
    args.batch_size = args.batch_size or _default_batch_size(args.device)
    started = time.monotonic()
    machine: dict[str, Any] = {"cpu": phases.cpu_model(), "cores": phases.usable_cores(), "cpu_flags": phases.cpu_precision_flags()}
    if args.fetch == "only":
        mode, rows = "fetch", []
    elif args.memory_sizes:
        mode, rows = "memory", _memory_rows(args, phase_runner, machine)
    else:
        mode, rows = "throughput", _throughput_rows(args, phase_runner, machine)
    config = {k: getattr(args, k) for k in ("image_model", "weights", "device", "batch_size", "precision", "precisions", "calibration_images", "images", "kinds", "memory_sizes", "model_seconds", "work_dir")}
    fetch = None
    if args.fetch != "off" and not args.memory_sizes:
        log.info("bench: fetch from a local HTTP server, %d JPEG photos", args.images)
        fetch = fetch_phase.measure(args.work_dir, ensure_images(args.work_dir, KIND_JPEG, args.images, args.seed), args.fetch_threads, cores=machine["cores"])
    result = BenchResult(mode=mode, config=config, machine=machine, rows=rows, seconds=time.monotonic() - started, fetch=fetch)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_json(), indent=2), encoding="utf-8")
    return result
