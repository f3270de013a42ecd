"""Measure the `neighbours` stage on synthetic clustered features and extrapolate to 1.7M images.

    .venv/bin/python tools/bench_neighbours.py [--sizes 10000,100000] [--dim 2048] [--clusters 1000]
        [--methods exact,ivf] [--nprobes 8,32] [--keep DIR]

For each size it writes an index and 2048-d feature shards (cluster centres of unit length with
a decaying spectrum, plus isotropic noise of unit length, so images of one cluster have a cosine
near 0.5 and others near 0; each image's tag is its cluster's, 10% carry a wrong one) under a temporary folder, then runs
`imgsearch neighbours` in a subprocess per method and prints the stage's own read and search
seconds, the child's peak RSS, recall@k of ivf against exact, and the extrapolation to 1.7M.

Not a test: it takes minutes and measures the machine as much as the code.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model import schema  # noqa: E402

log = logging.getLogger("bench_neighbours")

TARGET = 1_700_000
ROWS_PER_FILE = 50_000
ROW_GROUP_ROWS = 2_000  # about 16 MiB at 2048-d, as extract-images caps its row groups
RECALL_QUERIES = 5_000
WRONG_TAG_SHARE = 0.10


# ---------------------------------------------------------------------------
# Synthetic collection
# ---------------------------------------------------------------------------
def write_collection(out: Path, n: int, dim: int, clusters: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    # a decaying spectrum (variance 1/j along dimension j), as learned features have: the top 256
    # principal directions hold about 3/4 of the centres' energy, not the 1/8 of a flat one
    centres = (rng.normal(size=(clusters, dim)) / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    label = rng.integers(clusters, size=n)
    tag = np.where(rng.random(n) < WRONG_TAG_SHARE, rng.integers(clusters, size=n), label)
    ids = [f"{i:012x}" for i in range(n)]

    images = pa.table(
        {
            schema.IMAGE_ID: ids,
            schema.URI: [f"/synthetic/{i}.jpg" for i in ids],
            schema.TAG: [f"tag{t}" for t in tag],
            schema.TAG_RAW: [f"tag{t}" for t in tag],
            schema.SPLIT: [schema.SPLIT_TRAIN] * n,
            schema.ORDINAL: np.arange(n, dtype=np.int64),
        },
        schema=schema.IMAGES_SCHEMA,
    )
    (out / schema.IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    pq.write_table(images, out / schema.IMAGES_DIR / "images-00000-of-00001.parquet")

    meta = {schema.META_ENCODER: b"synthetic", schema.META_WEIGHTS: b"clusters", schema.META_DIM: str(dim).encode()}
    feature_schema = schema.image_features_schema(dim, meta)
    folder = out / schema.IMAGE_FEATURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    files = math.ceil(n / ROWS_PER_FILE)
    for f in range(files):
        lo, hi = f * ROWS_PER_FILE, min(n, (f + 1) * ROWS_PER_FILE)
        noise = rng.normal(size=(hi - lo, dim)).astype(np.float32) / np.float32(math.sqrt(dim))
        x = centres[label[lo:hi]] + noise
        table = pa.table(
            {
                schema.IMAGE_ID: ids[lo:hi],
                schema.EMBEDDING: pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim),
                schema.CONTENT_HASH: [f"hash-{i}" for i in ids[lo:hi]],
                schema.WIDTH: pa.array(np.full(hi - lo, 224, np.int32)),
                schema.HEIGHT: pa.array(np.full(hi - lo, 224, np.int32)),
            },
            schema=feature_schema,
        )
        pq.write_table(table, folder / f"features-{f:05d}-of-{files:05d}.parquet", row_group_size=ROW_GROUP_ROWS)


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------
# Runs the stage as its only child and reports that child's peak RSS. The stage is not started
# from this process directly: on Linux a child's ru_maxrss starts from the high-water mark of the
# memory it was forked from (exec records it), so every child of this process, which holds
# generated data, would report at least this process's own peak.
LAUNCHER = """
import resource, subprocess, sys
rc = subprocess.call(sys.argv[1:])
print("maxrss_kib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)
sys.exit(rc)
"""


def run_stage(out: Path, method: str, k: int, nprobe: int | None) -> dict:
    """One stage run in a grandchild process: its report, wall seconds and peak RSS (MiB)."""
    cmd = [sys.executable, "-m", "pipelines.cli", "neighbours", "--out", str(out), "--method", method, "--k", str(k)]
    if nprobe:
        cmd += ["--nprobe", str(nprobe)]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], cwd=REPO, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    lines = done.stdout.strip().splitlines()
    maxrss_kib = int(lines[-1].split()[1])
    report = json.loads((out / schema.REPORTS_DIR / "neighbours.json").read_text())
    return {"report": report, "seconds": seconds, "rss_mib": maxrss_kib / 1024, "summary": lines[-2]}


def read_lists(out: Path) -> dict[str, list[str]]:
    lists: dict[str, list[str]] = {}
    for f in sorted((out / schema.NEIGHBOURS_DIR).glob("*.parquet")):
        t = pq.read_table(f, columns=[schema.IMAGE_ID, schema.NEIGHBOUR_IDS])
        lists.update(zip(t.column(0).to_pylist(), t.column(1).to_pylist()))
    return lists


def recall(approx: dict[str, list[str]], exact: dict[str, list[str]], queries: int, seed: int = 0) -> float:
    ids = sorted(exact)
    pick = np.random.default_rng(seed).choice(len(ids), size=min(queries, len(ids)), replace=False)
    hits = sum(len(set(approx.get(ids[i], [])) & set(exact[ids[i]])) for i in pick)
    return hits / sum(len(exact[ids[i]]) for i in pick)


# ---------------------------------------------------------------------------
# Extrapolation
# ---------------------------------------------------------------------------
def exponent(points: list[tuple[int, float]], default: float) -> float:
    """Measured growth exponent between the smallest and largest size (default with one size)."""
    if len(points) < 2 or min(p[1] for p in points) <= 0:
        return default
    (n0, t0), (n1, t1) = min(points), max(points)
    return math.log(t1 / t0) / math.log(n1 / n0)


def linear_fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(fixed, per image) from the smallest and largest size; proportional with one size."""
    if len(points) < 2:
        n, v = points[0]
        return 0.0, v / n
    (n0, v0), (n1, v1) = min(points), max(points)
    slope = (v1 - v0) / (n1 - n0)
    return v0 - slope * n0, slope


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--methods", default="exact,ivf")
    parser.add_argument("--nprobes", default="", help="extra ivf runs at these nprobe values (recall vs work)")
    parser.add_argument("--keep", default=None, help="write the collections here and keep them")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = args.methods.split(",")
    extra = [int(p) for p in args.nprobes.split(",") if p]

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-neighbours-"))
    rows = []
    try:
        for n in sizes:
            out = root / f"n{n}"
            started = time.monotonic()
            write_collection(out, n, args.dim, args.clusters)
            log.info("%d images: collection written in %.0f s", n, time.monotonic() - started)
            exact_lists = None
            runs = [(m, None) for m in methods] + [("ivf", p) for p in extra]
            for method, nprobe in runs:
                result = run_stage(out, method, args.k, nprobe)
                log.info("%d images, %s%s: %s", n, method, f" nprobe {nprobe}" if nprobe else "", result["summary"])
                lists = read_lists(out)
                if method == "exact":
                    exact_lists = lists
                d = result["report"]["details"]
                rows.append(
                    {
                        "n": n, "method": method, "nlist": d.get("nlist") or "", "nprobe": d.get("nprobe") or "",
                        "seconds": result["seconds"], "stage": result["report"]["seconds"],
                        "read": d["read_seconds"], "search": d["search_seconds"],
                        "rss": result["rss_mib"],
                        "recall": recall(lists, exact_lists, RECALL_QUERIES) if exact_lists and method == "ivf" else None,
                        "estimate": d.get("ivf_recall_estimate"), "default": nprobe is None,
                    }
                )
            if not args.keep:
                shutil.rmtree(out)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\nneighbours on synthetic {args.dim}-d features ({args.clusters} clusters, unit noise), k={args.k}, "
          f"{os.cpu_count()} CPUs, faiss threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print("images  | method | nlist | nprobe | wall s | stage s | read s | search s | peak RSS MiB | recall@k vs exact | stage's estimate")
    print("--------|--------|-------|--------|--------|---------|--------|----------|--------------|-------------------|-----------------")
    for r in rows:
        rec = "" if r["recall"] is None else f"{r['recall']:.3f}"
        est = "" if r["estimate"] is None else f"{r['estimate']:.3f}"
        print(f"{r['n']:>7} | {r['method']:<6} | {r['nlist']:>5} | {r['nprobe']:>6} | {r['seconds']:6.1f} | "
              f"{r['stage']:7.1f} | {r['read']:6.1f} | {r['search']:8.1f} | {r['rss']:12.0f} | {rec:>17} | {est:>15}")

    print(f"\nextrapolated to {TARGET:,} images from the largest size (start-up not scaled; memory a + b*n "
          "through the smallest and largest size):")
    for method in methods:
        mine = [r for r in rows if r["method"] == method and r["default"]]
        if not mine:
            continue
        # exact compares every pair: O(n^2). ivf with a fixed nprobe and nlist ~ 4 sqrt(n) scans
        # nprobe lists of ~ sqrt(n)/4 images per query: O(n^1.5).
        model_exp = 2.0 if method == "exact" else 1.5
        measured = exponent([(r["n"], r["search"]) for r in mine], float("nan"))
        largest = max(mine, key=lambda r: r["n"])
        scale = TARGET / largest["n"]
        search = largest["search"] * scale**model_exp
        rest = (largest["stage"] - largest["search"]) * scale
        fixed, per_image = linear_fit([(r["n"], r["rss"]) for r in mine])
        print(
            f"  {method:<5}: search x (n ratio)^{model_exp} (measured here: {measured:.2f}) = {search / 3600:.1f} h, "
            f"the rest x n ratio = {rest / 60:.0f} min; peak RSS {(fixed + per_image * TARGET) / 1024:.1f} GiB "
            f"({fixed:.0f} MiB + {per_image * 1024:.2f} KiB/image)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
