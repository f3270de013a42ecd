"""Beam's portable path on this machine: a job service and a pool of SDK worker processes, as
Dataflow v2, Flink and Spark run a pipeline (serialised through the Job API, DoFns in separate
workers over the Fn API). tests/conftest.py loads this module as a plugin, so each fixture
below is made once however many modules use it.

    portable_services  a job service and a worker pool on 127.0.0.1, stopped after the module
    quick_corpus       16 generated images over 4 tags, their manifest and word vectors (session)
    in_process_build   `imgsearch build` of the quick corpus on the in-process runner (session)

The worker pool starts workers with a bare `python`, so the interpreter running the tests has
its folder first on the pool's PATH (a worker without apache_beam would leave the job waiting
for about 300 s), and the repository root on its PYTHONPATH (the `tests` package is never
installed; an editable install finds the project either way).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import apache_beam as beam
import pytest

from tests.builders import QUICK_BUILD_FLAGS
from tests.conftest import make_keyed_vectors, write_image_collection, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK_BEAM = Path(__file__).with_name("loopback_beam.py")
WORKER_POOL = "apache_beam.runners.worker.worker_pool_main"
JOB_SERVICE = "apache_beam.runners.portability.local_job_service_main"
START_TIMEOUT_S = 60
QUICK_TAGS = ["cat", "dog", "red car", "tree"]
QUICK_IMAGES = 16
PROBE_NAMESPACE = "portable-probe"


@dataclasses.dataclass(frozen=True)
class PortableServices:
    job_endpoint: str
    worker_pool: str
    logs: Path

    def beam_args(self, workers: int = 1) -> list[str]:
        """The Beam flags that send a stage to these services."""
        args = ["--runner", "PortableRunner", "--job_endpoint", self.job_endpoint,
                "--environment_type", "EXTERNAL", "--environment_config", self.worker_pool]  # fmt: skip
        return args + (["--direct_num_workers", str(workers)] if workers > 1 else [])

    def workers_started(self) -> int:
        return (self.logs / "worker-pool.log").read_text().count("Starting worker with command")


def worker_environment() -> dict[str, str]:
    """The pool's environment: this interpreter's folder first on PATH, the repository on PYTHONPATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    return env


def _start(module: str, args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    # its own session: the workers it starts are stopped with it, by its process group
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, str(LOOPBACK_BEAM), module, *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT, start_new_session=True)  # fmt: skip


def _wait_for_port(path: Path, process: subprocess.Popen, log: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text())
        if process.poll() is not None:
            raise RuntimeError(f"{log.name} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"no port after {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    """SIGINT first (the pool then stops its workers), the process group's SIGKILL if it lingers."""
    for sig, wait_s in ((signal.SIGINT, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; workers left in its group go with a last SIGKILL
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


@pytest.fixture(scope="module")
def portable_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortableServices]:
    """Beam's worker pool and local job service on free ports of 127.0.0.1, stopped after the module."""
    logs = tmp_path_factory.mktemp("portable")
    env = worker_environment()
    started: list[subprocess.Popen] = []
    try:
        pool = _start(WORKER_POOL, ["--service_port", "0"], logs / "worker-pool.log", {**env, "LOOPBACK_PORT_FILE": str(logs / "pool.port")})
        started.append(pool)
        jobs = _start(JOB_SERVICE, ["--port", "0", "--port_file", str(logs / "job.port"), "--staging_dir", str(logs / "staging")],
                      logs / "job-service.log", env)  # fmt: skip
        started.append(jobs)
        pool_port = _wait_for_port(logs / "pool.port", pool, logs / "worker-pool.log")
        job_port = _wait_for_port(logs / "job.port", jobs, logs / "job-service.log")
        yield PortableServices(job_endpoint=f"127.0.0.1:{job_port}", worker_pool=f"127.0.0.1:{pool_port}", logs=logs)
    finally:
        for process in reversed(started):
            _stop(process)


# ---------------------------------------------------------------------------
# The quick build, once a session on the in-process runner (the baseline other runners match)
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class QuickCorpus:
    manifest: Path
    vectors: Path

    def build_argv(self, out: Path) -> list[str]:
        return ["--input", str(self.manifest), "--word-vectors", str(self.vectors), "--out", str(out),
                *QUICK_BUILD_FLAGS, "--seed", "0"]  # fmt: skip


@pytest.fixture(scope="session")
def quick_corpus(tmp_path_factory: pytest.TempPathFactory) -> QuickCorpus:
    root = tmp_path_factory.mktemp("quick-corpus")
    rows = write_image_collection(root / "images", QUICK_IMAGES, QUICK_TAGS)
    manifest = write_jsonl(root / "manifest.jsonl", rows)
    vectors = root / "vectors.bin"
    make_keyed_vectors(["cat", "dog", "red", "car", "tree"]).save_word2vec_format(str(vectors), binary=True)
    return QuickCorpus(manifest, vectors)


@pytest.fixture(scope="session")
def in_process_build(quick_corpus: QuickCorpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT of `imgsearch build` on the quick corpus, in-process: the baseline."""
    from pipelines import build

    out = tmp_path_factory.mktemp("in-process") / "out"
    build.run(quick_corpus.build_argv(out))
    return out


def rankings(out: Path) -> list[tuple[str, int, str]]:
    """Sorted (tag, rank, image_id) of OUT's published rankings."""
    from model import schema, storage

    table = storage.read_parquet_dir(str(out / schema.RANKINGS_DIR), columns=[schema.TAG, schema.RANK, schema.IMAGE_ID])
    return sorted(zip(*(table.column(c).to_pylist() for c in (schema.TAG, schema.RANK, schema.IMAGE_ID))))


# ---------------------------------------------------------------------------
# Which worker took a bundle
# ---------------------------------------------------------------------------
class CountByWorkerFn(beam.DoFn):
    """Counts each element under a counter named after the worker process that took it."""

    def process(self, element):
        beam.metrics.Metrics.counter(PROBE_NAMESPACE, f"pid-{os.getpid()}").inc()
        yield element
