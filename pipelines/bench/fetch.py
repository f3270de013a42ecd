"""The fetch phase of `imgsearch bench`: how fast `fetch` downloads into the store, and what bounds it.

    imgsearch bench --fetch-only [--images N] [--fetch-threads 16] [--fetch-per-host 16]

The parent serves bench's generated JPEG photos from a static HTTP server on 127.0.0.1 (in a
thread of its own process), indexes them by their http uris, and runs one child process
(`python -m pipelines.bench.fetch ...`) that fetches them twice:

- (raw) fetcher.Fetcher on a thread pool alone, no Beam: the download, sniff and row-building cost;
- (stage) the real `fetch` stage end to end into a fresh OUT (Beam, Parquet store, report).

CPU seconds are measured per side: the child's own (getrusage of the process, every thread) for
each part, and the server's (the parent's getrusage over the child's lifetime, while its main
thread only waits). With both sides on one machine, images/s per core is the stage's rate over
the cores, and the share of the cores the two sides kept busy says whether the CPU bounds it.
A loopback server is not the internet: no latency, no slow hosts, no TLS, no DNS; on a real crawl
waiting dominates and --threads is what buys throughput.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import resource
import shutil
import socket
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

from pipelines.bench import harness

DEFAULT_THREADS = 16
DEFAULT_PER_HOST = 16  # one host here: the cap would otherwise be the whole pool's limit
BUSY_SHARE = 0.85  # the cores count as the bound when the two sides kept this share of them busy


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with keep-alive and TCP_NODELAY, as a real web server sends them (http.server's
    defaults, one connection per request and Nagle's algorithm, measured 2.4 times slower here)."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args) -> None:
        pass


def start_server(root: Path) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="bench-fetch-server", daemon=True).start()
    return server


def machine_cpu() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat (every process, ours or not)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            values = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    return sum(values) - idle, sum(values)


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------
# The child: raw pool, then the stage
# ---------------------------------------------------------------------------
def phase_fetch(index_out: str, out: str, threads: int, per_host: int) -> dict[str, Any]:
    from model import schema
    from pipelines import fetch, fetcher

    shutil.copytree(Path(index_out) / "index", Path(out) / "index")
    import pyarrow.parquet as pq

    table = pq.read_table(Path(out) / schema.IMAGES_DIR)
    refs = sorted(set(zip(table[schema.IMAGE_ID].to_pylist(), table[schema.URI].to_pylist())))
    config = fetcher.FetchConfig(threads=threads, per_host=per_host)
    client = fetcher.Fetcher(config)
    cpu0, t0 = _cpu_self(), time.perf_counter()
    with futures.ThreadPoolExecutor(max_workers=threads) as pool:
        outcomes = list(pool.map(lambda ref: fetcher.fetch_uri(client, *ref), refs))
    raw_seconds, raw_cpu = time.perf_counter() - t0, _cpu_self() - cpu0
    client.close()
    raw_ok = sum(1 for o in outcomes if o.row is not None)
    raw_bytes = sum(len(o.row[schema.IMAGE_BYTES]) for o in outcomes if o.row is not None)

    argv = ["--out", out, "--threads", str(threads), "--per-host", str(per_host)]
    cpu1, t1 = _cpu_self(), time.perf_counter()
    report = fetch.run(argv, save_main_session=False)
    wall, stage_cpu = time.perf_counter() - t1, _cpu_self() - cpu1
    return {
        "images": len(refs),
        "raw": {"ok": raw_ok, "seconds": raw_seconds, "cpu_seconds": raw_cpu, "bytes": raw_bytes},
        "stage": {
            "ok": report.rows_out,
            "failed": report.rows_failed,
            "seconds": report.seconds,
            "wall_seconds": wall,
            "cpu_seconds": stage_cpu,
            "bytes": report.details.get("bytes_stored", 0),
            "requests": report.details.get("http_requests", 0),
        },
    }


# ---------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------
def _http_index(work_dir: Path, manifest: Path, base_url: str) -> Path:
    from pipelines import index

    out = Path(tempfile.mkdtemp(prefix="fetch-index-", dir=work_dir))
    http_manifest = out / "manifest_http.jsonl"
    lines = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        row["uri"] = f"{base_url}/{Path(row['uri']).name}"
        lines.append(json.dumps(row) + "\n")
    http_manifest.write_text("".join(lines), encoding="utf-8")
    index.run(["--input", str(http_manifest), "--out", str(out)], save_main_session=False)
    return out


def measure(work_dir: str, manifest: Path, threads: int = DEFAULT_THREADS, per_host: int = DEFAULT_PER_HOST, cores: int | None = None) -> dict[str, Any]:
    """Serve the manifest's images, index them by http uri, run the child; the figures."""
    work = Path(work_dir) / "fetch"
    work.mkdir(parents=True, exist_ok=True)
    folder = Path(json.loads(manifest.read_text(encoding="utf-8").splitlines()[0])["uri"]).parent
    server = start_server(folder)
    base_url = f"http://127.0.0.1:{server.server_address[1]}"
    index_out = _http_index(work, manifest, base_url)
    out = index_out / "out"
    try:
        argv = ["--index-out", str(index_out), "--out", str(out), "--threads", str(threads), "--per-host", str(per_host)]
        server_cpu0, machine0 = _cpu_self(), machine_cpu()
        # the server's CPU: this process's while the child runs (its main thread only waits)
        result, usage = harness.run_json_child("pipelines.bench.fetch", argv, "bench fetch phase")
        server_cpu, machine1 = _cpu_self() - server_cpu0, machine_cpu()
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(index_out, ignore_errors=True)
    cores = cores or len(os.sched_getaffinity(0))
    result.update(
        {
            "threads": threads,
            "per_host": per_host,
            "cores": cores,
            "server_cpu_seconds": server_cpu,
            "server_requests": result["images"] * 2,
            "child_cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_mib": usage.ru_maxrss / 1024.0,
            # the whole machine's busy share over the child's life: other processes count too
            "machine_busy": (machine1[0] - machine0[0]) / (machine1[1] - machine0[1]) if machine0 and machine1 and machine1[1] > machine0[1] else None,
        }
    )
    return result


def _per(part: dict[str, Any]) -> float:
    return part["ok"] / part["seconds"] if part["seconds"] > 0 else 0.0


def format_result(r: dict[str, Any]) -> str:
    """The fetch section of bench's output."""
    cores = r["cores"]
    server_per_request = r["server_cpu_seconds"] / max(1, r["server_requests"])
    rows = []
    for name, part in (("raw pool, no Beam", r["raw"]), ("fetch stage", r["stage"])):
        rate = _per(part)
        server = server_per_request * part["ok"]
        busy = (part["cpu_seconds"] + server) / (part["seconds"] * cores) if part["seconds"] > 0 else 0.0
        rows.append(
            f"{name:<18} {part['ok']:>6} {rate:>8.0f} {rate / cores:>10.0f} {part['bytes'] / part['seconds'] / 2**20 if part['seconds'] else 0:>7.1f}"
            f" {1000 * part['cpu_seconds'] / max(1, part['ok']):>11.2f} {1000 * server_per_request:>12.2f} {busy:>8.0%}"
        )
    stage = r["stage"]
    stage_busy = (stage["cpu_seconds"] + server_per_request * stage["ok"]) / (stage["seconds"] * cores) if stage["seconds"] else 0.0
    machine = r.get("machine_busy")
    if stage_busy >= BUSY_SHARE:
        bound = f"the CPU: fetch and the server kept {stage_busy:.0%} of the {cores} cores busy"
    elif machine is not None and machine >= BUSY_SHARE:
        bound = (
            f"the CPU, shared: fetch and the server used {stage_busy:.0%} of the {cores} cores, the whole machine "
            f"was {machine:.0%} busy (other processes took the rest)"
        )
    else:
        bound = f"waiting, not the CPU ({stage_busy:.0%} of {cores} cores busy): more --threads or workers would help"
    header = f"{'fetch':<18} {'images':>6} {'img/s':>8} {'img/s/core':>10} {'MiB/s':>7} {'fetch ms/img':>11} {'server ms/req':>12} {'cores busy':>8}"
    notes = [
        f"fetch: {r['images']} JPEG photos from a static server on 127.0.0.1 (same machine), {r['threads']} threads, "
        f"{r['per_host']} per host; stage = rows_out / the stage report's seconds (Beam start-up, Parquet included; "
        f"wall around run() {stage['wall_seconds']:.1f} s)",
        f"what bounds it: {bound}",
        "a loopback server is not the internet: no latency, no slow or failing hosts, no TLS or DNS",
    ]
    return "\n".join([header, *rows, "", *notes])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.bench.fetch", description="the child of bench's fetch phase")
    parser.add_argument("--index-out", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    parser.add_argument("--per-host", type=int, default=DEFAULT_PER_HOST)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(phase_fetch(args.index_out, args.out, args.threads, args.per_host)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
