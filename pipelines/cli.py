"""The `imgsearch` console script: one sub-command per stage, plus serve, demo and bench.

Each stage keeps its own flags (and passes Beam's through untouched), so this module only picks
the stage and hands it the rest of the command line. Stages are imported lazily: `imgsearch serve`
must not pay for importing torch and Beam.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Callable

# the exit status of a stage that refused its run (too many failed rows, a failed health check,
# an input it cannot use); a crash exits 1; argparse's usage errors use 2 (pipelines/failures_line.py)
EXIT_REFUSED = 3

log = logging.getLogger(__name__)

# commands that print their stages' reports as they go
PRINT_THEIR_OWN_REPORT = ("demo", "build")

# command -> (module, function taking argv and returning an object with summary_line())
STAGES: dict[str, tuple[str, str, str]] = {
    "index": ("pipelines.index", "run", "build the images table and the inverted index from a manifest"),
    "fetch": ("pipelines.fetch", "run", "download http(s) images into sharded Parquet image stores"),
    "extract-images": ("pipelines.extract_images", "run", "image features with RunInference"),
    "extract-text": ("pipelines.extract_text", "run", "tag vectors from gensim KeyedVectors"),
    "neighbours": ("model.neighbours", "run", "k nearest images and neighbour agreement"),
    "train": ("model.train", "main_cli", "train the cross-fitted two-tower matcher"),
    "export": ("export.onnx_export", "run", "export both towers to ONNX and check parity"),
    "rank": ("pipelines.rank", "run", "score, rank, evaluate and publish rankings and the site"),
    "evaluate": ("export.evaluate", "run", "evaluate the published rankings and write the report"),
    "build": ("pipelines.build", "run", "run every stage in order on a manifest and word vectors"),
    "demo": ("pipelines.demo.command", "run", "generate the demo corpus and run every stage on it"),
    "bench": ("pipelines.bench.command", "run", "measure image feature extraction"),
}


def _drop_known_noise(record: logging.LogRecord) -> bool:
    # Beam warns at import that the optional GCP client libraries are absent; local runs never
    # need them (the `gcp` extra installs them for Dataflow).
    return not str(record.msg).startswith("apitools not found")


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_drop_known_noise)
    if not verbose:
        # Beam and friends log every bundle at INFO; a user wants our progress lines.
        for noisy in ("apache_beam", "gensim", "urllib3", "fsspec", "onnxruntime", "smart_open", "faiss", "matplotlib"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _stage_function(command: str) -> Callable:
    module_name, function_name, _ = STAGES[command]
    return getattr(importlib.import_module(module_name), function_name)


def _serve(argv: list[str]) -> int:
    from pipelines.serve import serve

    parser = argparse.ArgumentParser(prog="imgsearch serve", description="serve a published site folder")
    parser.add_argument("site_dir", help="OUT/site, as written by `imgsearch rank`")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1", help="use 0.0.0.0 to reach it from other machines")
    args = parser.parse_args(argv)
    serve(args.site_dir, host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgsearch",
        allow_abbrev=False,
        description="Image search for crawled, tagged collections. Each command takes its own "
        "flags (see `imgsearch COMMAND --help`); Beam stages pass Beam's flags "
        "(--runner, --project, --region, --temp_location, --setup_file, ...) through.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, Beam's included")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, _, help_text) in STAGES.items():
        sub.add_parser(name, help=help_text, add_help=False)
    sub.add_parser("serve", help="serve OUT/site on http://localhost:8000", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Split at the command so its own flags (and Beam's) reach it untouched.
    args, rest = parser.parse_known_args(argv)
    configure_logging(args.verbose)
    if args.command == "serve":
        return _serve(rest)
    # here, not at the top: serve must stay light
    from model.report import StageRefused
    from pipelines.failures_line import exit_status, failure_line

    try:
        result = _stage_function(args.command)(rest)
    except StageRefused as exc:
        # an expected refusal (too many failures, a failed health check), not a bug: the summary
        # and the reason, no traceback
        print(exc.report.summary_line(), flush=True)
        print(f"imgsearch {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    except Exception as exc:
        # a refused start (exit 3) or a crash (exit 1): one line that says what failed, where and
        # what to do; the traceback only with -v
        log.debug("imgsearch %s failed", args.command, exc_info=True)
        summary = getattr(getattr(exc, "report", None), "summary_line", None)
        if callable(summary):
            print(summary(), flush=True)
        print(failure_line(args.command, exc), file=sys.stderr, flush=True)
        return exit_status(exc)
    report = getattr(result, "report", None)
    if callable(report) and args.command not in PRINT_THEIR_OWN_REPORT:
        text = report()
        if text:
            print(text, flush=True)
    line = getattr(result, "summary_line", None)
    if callable(line):
        print(line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
