"""`imgsearch build`: every stage in order on a user's own collection, as the demo does.

    imgsearch build --input MANIFEST --word-vectors PATH --out OUT [--image-model resnet50]
                    [--ground-truth GT.jsonl] [Beam flags: --runner, --project, ...]

index -> fetch -> extract-images -> extract-text -> neighbours -> train -> export -> rank (which
evaluates what it publishes). Each stage is called through its own entry point with the flags a
user would type, so a build is exactly a sequence of stage runs: any stage can be rerun alone
afterwards. Beam's flags go to the Beam stages (index, extract-images, extract-text, rank)
untouched. A rerun is incremental where a stage is (extract-images only extracts images
without features), and the other stages are cheap next to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from typing import Any, Callable

from model import devices
from model.out_lock import OutLock
from model.report import StageReport

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BuildResult(StageReport):
    """Every stage's result in order (rows_in/out: the stages planned and run), and through the
    last one, rank, the evaluation of what was published."""

    stages: list[Any] = dataclasses.field(default_factory=list)

    @property
    def rank(self) -> Any:
        return self.stages[-1]

    def summary_line(self) -> str:
        return f"{self.stage}: {self.rows_out} of {self.rows_in} stages run in {self.seconds:.0f} s"

    def to_json(self) -> dict[str, Any]:
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(StageReport)}
        return {**own, "stages": [getattr(r, "stage", None) for r in self.stages]}

    def report(self) -> str:
        report = getattr(self.rank, "report", None)
        return report() if callable(report) else ""


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags build passes on to its stages (demo shares them)."""
    parser.add_argument("--image-model", default="resnet50", help="extract-images --image-model")
    parser.add_argument("--weights", default="imagenet", help="extract-images --weights: imagenet, random or a PATH")
    parser.add_argument("--precision", default="auto", help="extract-images --precision")
    parser.add_argument("--calibration-method", default=None, help="extract-images --calibration-method (int8)")
    parser.add_argument(
        "--device",
        default=None,
        type=devices.parse_device,
        choices=devices.DEVICES,
        help="extract-images --device: where the workers encode images (train, on this machine, picks its own)",
    )
    parser.add_argument("--neighbours", type=int, default=None, help="neighbours --k (nearest images per image)")
    parser.add_argument("--folds", type=int, default=None, help="train --folds (cross-fitting folds)")
    parser.add_argument("--epochs", type=int, default=None, help="train --epochs (at most; early stopping may end sooner)")
    parser.add_argument("--seed", type=int, default=0, help="train --seed")
    parser.add_argument("--ranker", default=None, help="rank --ranker (combined, matcher or neighbours)")
    parser.add_argument("--ground-truth", default=None, help="JSON lines {uri, tag, true_tag}: evaluation with AUC and P@10")
    parser.add_argument("--no-thumbnails", action="store_true", help="rank --no-thumbnails")


def _optional(flag: str, value: Any) -> list[str]:
    return [] if value is None else [flag, str(value)]


def stage_plan(args: argparse.Namespace, beam_args: list[str]) -> list[tuple[str, str, str, list[str]]]:
    """(label, module, function, argv) of every stage, in order."""
    out = args.out
    index_argv = ["--input", args.input, "--out", out] + _optional("--images-dir", getattr(args, "images_dir", None))
    extract_argv = ["--out", out, "--image-model", args.image_model, "--weights", args.weights, "--precision", args.precision]
    extract_argv += _optional("--device", args.device) + _optional("--calibration-method", getattr(args, "calibration_method", None))
    train_argv = ["--out", out, "--seed", str(args.seed)] + _optional("--folds", args.folds) + _optional("--epochs", args.epochs)
    rank_argv = ["--out", out] + _optional("--ranker", args.ranker) + _optional("--ground-truth", args.ground_truth)
    rank_argv += ["--no-thumbnails"] if args.no_thumbnails else []
    return [
        ("index", "pipelines.index", "run", index_argv + beam_args),
        # downloads http(s) images into the store; other uris pass by reference (cheap)
        ("fetch", "pipelines.fetch", "run", ["--out", out] + beam_args),
        ("extract-images", "pipelines.extract_images", "run", extract_argv + beam_args),
        ("extract-text", "pipelines.extract_text", "run", ["--out", out, "--word-vectors", args.word_vectors] + beam_args),
        ("neighbours", "model.neighbours", "run", ["--out", out] + _optional("--k", args.neighbours)),
        ("train", "model.train", "main_cli", train_argv),
        ("export", "export.onnx_export", "run", ["--out", out]),
        ("rank", "pipelines.rank", "run", rank_argv + beam_args),
    ]


def run_plan(plan: list[tuple[str, str, str, list[str]]], say: Callable[[str], None]) -> BuildResult:
    import importlib

    started = time.monotonic()
    results = []
    for label, module, function, argv in plan:
        say(f"[build] {label} ...")
        result = getattr(importlib.import_module(module), function)(argv)
        line = getattr(result, "summary_line", None)
        if callable(line):
            say(line())
        results.append(result)
    return BuildResult(stage="build", rows_in=len(plan), rows_out=len(results), seconds=time.monotonic() - started, stages=results)


def _say(text: str) -> None:
    print(text, flush=True)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="the manifest (JSON lines, CSV, Parquet or a folder), as for index")
    parser.add_argument("--word-vectors", required=True, help="gensim KeyedVectors file for the tags, as for extract-text")
    parser.add_argument("--out", required=True, help="output root (local path or gs://...)")
    parser.add_argument("--images-dir", default=None, help="index --images-dir (the prototype's manifests)")
    add_build_arguments(parser)
    return parser


def run(argv: list[str] | None = None) -> BuildResult:
    args, beam_args = get_args_parser().parse_known_args(argv)
    # one build at a time into one OUT: a second is refused, naming the first (model/out_lock.py)
    with OutLock(args.out, "imgsearch build"):
        result = run_plan(stage_plan(args, beam_args), _say)
    report = result.report()
    if report:
        _say("\n" + report)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(run().summary_line())
