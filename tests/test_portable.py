"""Every Beam stage on Beam's portable path, the one Dataflow v2, Flink and Spark share: the
pipeline serialised and submitted to a job service through the Job API, its DoFns run by SDK
worker processes of an EXTERNAL worker pool over the Fn API (tests/portable_fixtures.py).

`imgsearch build` runs as a user runs it, in its own process with a hard timeout, on two SDK
workers a job. Rankings must equal the in-process build's, every stage's report must come from
counters the workers sent back, and a refusal must still be exit status 3.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model import schema
from tests.portable_fixtures import PROBE_NAMESPACE, CountByWorkerFn, rankings, worker_environment

BUILD_TIMEOUT_S = 420  # a build takes about a minute here; a worker that cannot start hangs ~300 s
STAGE_TIMEOUT_S = 180
WORKERS = 2
BEAM_STAGES = ("index", "fetch", "extract-images", "extract-text", "rank")


def _imgsearch(argv: list[str], timeout_s: int) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], env=worker_environment(),
                          capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
    return done


@pytest.fixture(scope="module")
def portable_build(portable_services, quick_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("portable") / "out"
    started = portable_services.workers_started()
    done = _imgsearch(["build", *quick_corpus.build_argv(out), *portable_services.beam_args(WORKERS)], BUILD_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    # every Beam stage is one job, and each job asked the pool for its two workers
    assert portable_services.workers_started() - started == WORKERS * len(BEAM_STAGES)
    return out


def test_portable_build_ranks_as_the_in_process_build(portable_build: Path, in_process_build: Path):
    expected = rankings(in_process_build)
    assert expected
    assert rankings(portable_build) == expected


def test_every_stage_report_comes_from_the_workers_counters(portable_build: Path):
    for stage in BEAM_STAGES:
        report = json.loads((portable_build / schema.REPORTS_DIR / f"{stage}.json").read_text())
        assert report["rows_in"] > 0, (stage, report)
        assert report["rows_failed"] == 0, (stage, report)
        assert report["rows_in"] == report["rows_out"] + report["rows_failed"] + report["rows_skipped"], (stage, report)


def test_a_refused_stage_still_exits_3(portable_build: Path, portable_services, tmp_path: Path):
    from pipelines import cli
    from tests.conftest import make_keyed_vectors

    unrelated = tmp_path / "unrelated.txt"
    make_keyed_vectors(["zeppelin", "quux"]).save_word2vec_format(str(unrelated), binary=False)
    done = _imgsearch(["extract-text", "--out", str(portable_build), "--word-vectors", str(unrelated),
                       *portable_services.beam_args()], STAGE_TIMEOUT_S)  # fmt: skip
    assert done.returncode == cli.EXIT_REFUSED, done.stderr[-4000:]
    assert "every tag is oov" in done.stderr


def test_both_workers_take_bundles(portable_services):
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    pipeline = beam.Pipeline(options=PipelineOptions(portable_services.beam_args(WORKERS)))
    _ = pipeline | beam.Create(range(64)) | beam.Reshuffle() | beam.ParDo(CountByWorkerFn())
    result = pipeline.run()
    result.wait_until_finish(duration=STAGE_TIMEOUT_S * 1000)
    counters = result.metrics().query(MetricsFilter().with_namespace(PROBE_NAMESPACE))["counters"]
    per_worker = {c.key.metric.name: c.committed for c in counters}
    assert len(per_worker) == WORKERS and all(per_worker.values()), per_worker
    assert sum(per_worker.values()) == 64
    assert f"pid-{__import__('os').getpid()}" not in per_worker  # not the launcher
