"""`imgsearch demo`: generate the built-in corpus and run every stage on it, then serve the site.

It calls each stage's own entry point with the flags a user would type, so the demo exercises
exactly the code paths of a real run (Beam's local runner, the real encoder and word vectors).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any, Callable

from model import schema

log = logging.getLogger(__name__)

DEFAULT_IMAGES = 2400


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch demo", description=__doc__)
    parser.add_argument("--out", required=True, help="output root (local folder)")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="demo corpus size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-model", default="efficientnet_lite0", choices=["efficientnet_lite0", "resnet50"])
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="imagenet (efficientnet_lite0's ship with its package: no download), random or a PATH",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="image feature precision (extract-images --precision)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="matcher epochs (train's default if unset)")
    parser.add_argument("--no-thumbnails", action="store_true")
    parser.add_argument("--no-serve", action="store_true", help="build the site but do not serve it")
    parser.add_argument("--port", type=int, default=8000)
    return parser


def _timed(label: str, fn: Callable[[], Any]) -> Any:
    print(f"[demo] {label} ...", flush=True)
    result = fn()
    line = getattr(result, "summary_line", None)
    if callable(line):
        print(line(), flush=True)
    return result


def run(argv: list[str] | None = None) -> Any:
    from export import onnx_export
    from model import train
    from pipelines import demo_corpus, extract_images, extract_text, index, rank

    args = get_args_parser().parse_args(argv)
    out = args.out
    started = time.monotonic()

    corpus = _timed(
        f"generating the demo corpus ({args.images} images)",
        lambda: demo_corpus.generate_demo_corpus(Path(out) / "corpus", n_images=args.images, seed=args.seed),
    )
    _timed("index", lambda: index.run(["--input", str(corpus.manifest), "--out", out]))
    _timed(
        "extract-images",
        lambda: extract_images.run(
            ["--out", out, "--image-model", args.image_model, "--weights", args.weights, "--precision", args.precision]
        ),
    )
    _timed("extract-text", lambda: extract_text.run(["--out", out, "--word-vectors", str(corpus.word_vectors)]))
    train_argv = ["--out", out, "--ground-truth", str(corpus.ground_truth), "--seed", str(args.seed)]
    if args.epochs is not None:
        train_argv += ["--epochs", str(args.epochs)]
    trained = _timed("train", lambda: train.main_cli(train_argv))
    _timed("export", lambda: onnx_export.run(["--out", out]))
    rank_argv = ["--out", out] + (["--no-thumbnails"] if args.no_thumbnails else [])
    _timed("rank", lambda: rank.run(rank_argv))

    table = getattr(trained, "table", None)
    if table:
        print("\nEvaluation on the held-out split (mean over tags):\n" + table, flush=True)
    site_dir = schema.out_path(out, schema.SITE_DIR)
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; site in {site_dir}", flush=True)
    if not args.no_serve:
        from pipelines.serve import serve

        serve(site_dir, port=args.port)
    return None
