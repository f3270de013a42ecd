"""Peak memory of extract-text's word vectors on one worker: shared mapping against one copy each.

    python tools/word_vectors_memory.py [--words 1000000] [--dim 300] [--processes 4] [--work DIR]

Generates a word2vec binary file of --words random vectors (1M x 300-d is 1.2 GB, GoogleNews'
shape at a third of its vocabulary), then starts --processes processes at once, as a Dataflow
worker starts one SDK process per core, each doing what TagVectorFn.setup does and then
looking up tags. Reported per process: peak RSS (VmHWM), and at the end its PSS (its fair share
of pages shared with the others) and USS (pages only it holds); for the machine, the rise in
used memory. Two modes:

- `shared`: pipelines.extract_text.load_word_vectors, the stage's way: converted once to a
  memory-mapped .kv on local disk (the first process converts, the others wait, then all map it).
  The conversion is timed apart (`convert`), then the processes are measured on the cached copy.
- `private`: model.text_vectors.load_keyed_vectors per process (what each DoFn instance did before).

Not a test: it needs minutes and gigabytes. Linux only (PSS from /proc).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def generate(path: str, words: int, dim: int, seed: int = 0) -> None:
    """word2vec binary: header, then `word<space><dim float32>` per word, written in chunks."""
    rng = np.random.default_rng(seed)
    chunk = 50_000
    with open(path, "wb") as f:
        f.write(f"{words} {dim}\n".encode("ascii"))
        for start in range(0, words, chunk):
            n = min(chunk, words - start)
            vectors = rng.standard_normal((n, dim)).astype("<f4")
            parts = []
            for i in range(n):
                parts.append(f"w{start + i}_x ".encode("ascii"))
                parts.append(vectors[i].tobytes())
            f.write(b"".join(parts))


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _worker(mode: str, path: str, start: mp.Barrier, done: mp.Barrier, results: mp.Queue) -> None:
    start.wait()
    t = time.monotonic()
    if mode == "shared":
        from pipelines.extract_text import load_word_vectors

        kv = load_word_vectors(path)
    else:
        from model.text_vectors import load_keyed_vectors

        kv = load_keyed_vectors(path)
    from model.text_vectors import tag_vector

    # look tags up across the vocabulary, as a run over many distinct tags does
    found = sum(tag_vector(kv, f"w{i}_x").vector is not None for i in range(0, len(kv), 997))
    seconds = time.monotonic() - t
    info = psutil.Process().memory_full_info()
    results.put({"pid": os.getpid(), "seconds": seconds, "found": found, "peak_rss": _peak_rss_bytes(), "pss": info.pss, "uss": info.uss})
    done.wait()  # all alive together when measured, as on a worker


def measure(mode: str, path: str, processes: int) -> dict:
    ctx = mp.get_context("spawn")
    start, done, results = ctx.Barrier(processes + 1), ctx.Barrier(processes + 1), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(mode, path, start, done, results)) for _ in range(processes)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # interpreters started and imports done before the baseline
    used_before = psutil.virtual_memory().total - psutil.virtual_memory().available
    t = time.monotonic()
    start.wait()
    rows = [results.get() for _ in procs]
    used_after = psutil.virtual_memory().total - psutil.virtual_memory().available
    wall = time.monotonic() - t
    done.wait()
    for p in procs:
        p.join()
    return {"mode": mode, "processes": rows, "machine_used_rise": used_after - used_before, "wall": wall}


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def report(result: dict) -> None:
    rows = result["processes"]
    print(f"\n{result['mode']}: {len(rows)} processes, wall {result['wall']:.1f} s")
    for r in rows:
        print(f"  pid {r['pid']}: load+lookups {r['seconds']:.1f} s, peak RSS {_gb(r['peak_rss'])}, PSS {_gb(r['pss'])}, USS {_gb(r['uss'])}")
    print(f"  sum of PSS {_gb(sum(r['pss'] for r in rows))}; machine's used memory rose {_gb(result['machine_used_rise'])}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--words", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=300)
    parser.add_argument("--processes", type=int, default=4, help="SDK processes on the worker")
    parser.add_argument("--work", default="/tmp/imgsearch-wv-memory")
    parser.add_argument("--modes", default="shared,private")
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    os.environ["IMGSEARCH_WORD_VECTORS_CACHE"] = os.path.join(args.work, "cache")
    path = os.path.join(args.work, f"vectors-{args.words}x{args.dim}.bin")
    if not os.path.exists(path):
        t = time.monotonic()
        generate(path, args.words, args.dim)
        print(f"generated {path}: {_gb(os.path.getsize(path))} in {time.monotonic() - t:.0f} s")
    print(f"file {path}: {_gb(os.path.getsize(path))}; machine: {os.cpu_count()} cores, {_gb(psutil.virtual_memory().total)}")
    modes = args.modes.split(",")
    if "shared" in modes:
        convert = measure("shared", path, 1)  # the one conversion (or a cache hit when rerun)
        print(f"\nconvert once to a mapped .kv (one process): {convert['wall']:.1f} s, peak RSS {_gb(convert['processes'][0]['peak_rss'])}")
    for mode in modes:
        report(measure(mode, path, args.processes))


if __name__ == "__main__":
    main()
