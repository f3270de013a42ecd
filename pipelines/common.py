"""What every Beam stage shares: option parsing, the stage report, counters, small file I/O.

A stage's `run()` returns a StageReport built from its Beam counters, so the accounting a user
sees (rows in, out, failed, skipped) is the pipeline's own, on any runner.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import time
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

from model import schema, storage
from model.report import StageReport  # noqa: F401 - every stage's run() returns one
from model.report import (  # noqa: F401 - the failure-rate gate every stage shares
    DEFAULT_MAX_FAILURE_RATE,
    REMEDY_FOLDER,
    MAX_FAILURE_RATE_FLAG,
    FailureRateExceeded,
    StageRefused,
    check_failure_rate,
)

log = logging.getLogger(__name__)

# Set to a local Cloud Storage emulator's address (http://127.0.0.1:PORT), gs:// goes there.
STORAGE_EMULATOR_HOST = "STORAGE_EMULATOR_HOST"


def use_anonymous_gcs_for_emulator() -> bool:
    """With STORAGE_EMULATOR_HOST set, Beam's gs:// client connects anonymously (the emulator
    wants no credentials) instead of looking for Google credentials first, which without any
    retries for about 30 s in every process. Runs at import, so Beam's worker processes do it too.
    Returns whether it applied."""
    if not os.environ.get(STORAGE_EMULATOR_HOST):
        return False
    try:
        from apache_beam.internal.gcp import auth
    except ImportError:  # no gcp extra: no gs:// either
        return False
    credentials = getattr(auth, "_Credentials", None)
    if credentials is None:
        return False
    with credentials._credentials_lock:
        credentials._credentials_init = True
        credentials._credentials = None  # None: Beam creates an anonymous storage client
    return True


use_anonymous_gcs_for_emulator()

# Counter names every stage uses in its own namespace (the stage name).
ROWS_IN = "rows_in"
ROWS_OUT = "rows_out"
ROWS_FAILED = "rows_failed"
ROWS_SKIPPED = "rows_skipped"
STANDARD_COUNTERS = (ROWS_IN, ROWS_OUT, ROWS_FAILED, ROWS_SKIPPED)
INDEX_ROWS = "index_rows"  # rows of the images table a per-image stage read (several may name one image)


MAX_MESSAGE_CHARS = 2000  # a failure's message is for a person: the start says what went wrong


def failure_row(stage: str, image_id: str | None, uri: str | None, error: str, message: str) -> dict[str, Any]:
    """One row of schema.FAILURES_SCHEMA."""
    return {
        schema.IMAGE_ID: image_id,
        schema.URI: uri,
        schema.STAGE: stage,
        schema.ERROR: error,
        schema.MESSAGE: message[:MAX_MESSAGE_CHARS],
    }


def error_name(exc: BaseException | type | str) -> str:
    """A failure's `error`: the exception's class name (or the name given)."""
    if isinstance(exc, str):
        return exc
    return exc.__name__ if isinstance(exc, type) else type(exc).__name__


def record_failure(
    stage: str, image_id: str | None, uri: str | None, exc: BaseException | type | str, message: str, rows: int = 1
) -> dict[str, Any]:
    """Count a failure (rows_failed and failed_<error>, `rows` rows of the stage's input) and
    build its failure row: every stage records failures this one way."""
    error = error_name(exc)
    counter(stage, ROWS_FAILED).inc(rows)
    counter(stage, f"failed_{error}").inc(rows)
    return failure_row(stage, image_id, uri, error, message)


def dead_letter_rows(dead_letter: tuple[Sequence[tuple[Any, Any]], tuple]) -> Iterator[tuple[Any, str, str]]:
    """RunInference's dead letter (the failed batch, (exception class, repr, traceback)) ->
    (key, error, message) for each element of the batch."""
    batch, (exc_type, exc_repr, _traceback) = dead_letter
    for key, _example in batch:
        yield key, error_name(exc_type), exc_repr


class WriteFailures(beam.PTransform):
    """Failure rows -> OUT/failures/<name>-SSSSS-of-NNNNN.parquet (schema.FAILURES_SCHEMA).

    `name` is the stage, or a staging path's prefix when the stage swaps its failures in later."""

    def __init__(self, prefix: str):
        super().__init__()
        self._prefix = prefix

    @classmethod
    def for_stage(cls, out: str, stage: str) -> "WriteFailures":
        return cls(schema.out_path(out, schema.FAILURES_DIR, stage))

    def expand(self, rows: beam.PCollection) -> Any:
        return rows | "WriteParquet" >> beam.io.WriteToParquet(
            self._prefix, schema.FAILURES_SCHEMA, file_name_suffix=schema.PARQUET_SUFFIX
        )


def _keyed_true(row: dict[str, Any]) -> tuple[str, bool]:
    return row[schema.IMAGE_ID], True


def _not_done_before(joined: tuple[str, dict[str, list]], stage: str, reasons: Sequence[str]) -> Iterator[tuple[str, str]]:
    image_id, groups = joined
    for uri in groups["refs"]:
        reason = next((r for r in reasons if groups[r]), None)
        if reason is None:
            yield image_id, uri
        else:
            counter(stage, ROWS_SKIPPED).inc()
            counter(stage, reason).inc()


class SkipDoneBefore(beam.PTransform):
    """(image_id, uri) -> those whose image_id is in none of the given shards (an anti-join in the
    pipeline: a collection of any size is compared without the driver holding ids).

    `done` maps a skip counter to the Parquet shards (with an image_id column) of what an earlier
    run did, checked in order; a skipped ref counts as rows_skipped and under the first counter
    whose shards hold its id.
    """

    def __init__(self, stage: str, done: dict[str, Sequence[str]]):
        super().__init__()
        self._stage = stage
        self._done = {reason: list(shards) for reason, shards in done.items() if shards}

    def expand(self, refs: beam.PCollection) -> beam.PCollection:
        if not self._done:
            return refs
        groups = {"refs": refs}
        for reason, shards in self._done.items():
            groups[reason] = (
                refs.pipeline
                | f"Shards_{reason}" >> beam.Create(shards)
                | f"ReadIds_{reason}" >> beam.io.ReadAllFromParquet(columns=[schema.IMAGE_ID])
                | f"Key_{reason}" >> beam.Map(_keyed_true)
            )
        return (
            groups
            | "JoinEarlierRuns" >> beam.CoGroupByKey()
            | "NotDoneBefore" >> beam.FlatMap(_not_done_before, self._stage, list(self._done))
        )


class ReadImageRefs(beam.PTransform):
    """OUT/index/images -> distinct (image_id, uri) for a stage that works per image.

    Counts the images table's rows as `index_rows` and each distinct image as the stage's rows_in.
    Finished shards only (schema.shard_pattern), never a running index's files.
    """

    def __init__(self, out: str, stage: str):
        super().__init__()
        self._pattern = schema.shard_pattern(out, schema.IMAGES_DIR, schema.IMAGES_PREFIX)
        self._stage = stage

    def _ref(self, row: dict[str, Any]) -> tuple[str, str]:
        counter(self._stage, INDEX_ROWS).inc()
        return row[schema.IMAGE_ID], row[schema.URI]

    def _count_in(self, ref: tuple[str, str]) -> tuple[str, str]:
        counter(self._stage, ROWS_IN).inc()
        return ref

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "ReadImages" >> beam.io.ReadFromParquet(self._pattern, columns=[schema.IMAGE_ID, schema.URI])
            | "ImageRef" >> beam.Map(self._ref)
            | "DistinctImages" >> beam.Distinct()
            | "CountImages" >> beam.Map(self._count_in)
        )


def run_id() -> str:
    """<UTC time>-<random>: names a run's output shards so they never clash with an earlier run's,
    which then stay in place until the new ones are complete."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def counter(stage: str, name: str) -> beam.metrics.metricbase.Counter:
    return beam.metrics.Metrics.counter(stage, name)


def read_counters(result: beam.runners.runner.PipelineResult, stage: str) -> dict[str, int]:
    """Committed counter values of one namespace (attempted where a runner has no committed)."""
    values: dict[str, int] = {}
    query = result.metrics().query(MetricsFilter().with_namespace(stage))
    for c in query["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        values[c.key.metric.name] = values.get(c.key.metric.name, 0) + int(value or 0)
    return values


def report_from_counters(stage: str, counters: dict[str, int], seconds: float, **extra: Any) -> StageReport:
    details = {k: v for k, v in counters.items() if k not in STANDARD_COUNTERS}
    details.update(extra)
    return StageReport(
        stage=stage,
        rows_in=counters.get(ROWS_IN, 0),
        rows_out=counters.get(ROWS_OUT, 0),
        rows_failed=counters.get(ROWS_FAILED, 0),
        rows_skipped=counters.get(ROWS_SKIPPED, 0),
        seconds=seconds,
        details=details,
    )


def finish_stage(
    stage: str, out: str, counters: dict[str, int], seconds: float, max_failure_rate: float, **extra: Any
) -> StageReport:
    """The end of a per-row stage's run: its report from the counters (extra in its details),
    saved to OUT/reports/<stage>.json and logged, then the --max-failure-rate gate (after the
    save: the numbers that explain a refusal are on disk)."""
    report = report_from_counters(stage, counters, seconds, **extra)
    report.save(out)
    log.info(report.summary_line())
    check_failure_rate(report, max_failure_rate)
    return report


# Shown under every Beam stage's --help (split_args adds it): what a Dataflow run adds to the
# stage's own flags. README's "Running on Dataflow" has one complete command per stage.
DATAFLOW_EPILOG = """\
running on Dataflow (any Beam flag passes through untouched):
  --runner DataflowRunner --project PROJECT --region REGION --temp_location gs://BUCKET/tmp
  --experiments=use_runner_v2 --sdk_location container
  --sdk_container_image REGION-docker.pkg.dev/PROJECT/REPO/worker-cpu:TAG   (make images; or
      --setup_file ./setup.py for index, fetch, extract-text, rank: their workers need no torch)
  --machine_type n2-standard-4 --disk_size_gb 50 --number_of_worker_harness_threads 8
  extract-images on GPUs: --device GPU --sdk_container_image .../worker-gpu:TAG
      --machine_type g2-standard-8 --number_of_worker_harness_threads 1
      --dataflow_service_options "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver:580"
  --out and every input path on gs:// (workers cannot read the launcher's disk).
  Launcher and image must have the same Python (3.11) and apache-beam (2.77.0)."""


def add_dataflow_epilog(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The stage's --help ends with DATAFLOW_EPILOG (line breaks kept)."""
    if DATAFLOW_EPILOG not in (parser.epilog or ""):
        parser.epilog = ((parser.epilog + "\n\n") if parser.epilog else "") + DATAFLOW_EPILOG
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def split_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, PipelineOptions]:
    """Our flags to argparse; everything else goes to PipelineOptions untouched. --help ends with
    how to run the stage on Dataflow."""
    known, beam_args = add_dataflow_epilog(parser).parse_known_args(argv)
    return known, PipelineOptions(beam_args)


def stage_parser(stage: str, doc: str) -> argparse.ArgumentParser:
    """A stage's argument parser: `imgsearch <stage>`, the first paragraph of its module's
    docstring as the description, and the --out every stage takes."""
    parser = argparse.ArgumentParser(prog=f"imgsearch {stage}", description=doc.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output root (local path or gs://...)")
    return parser


def failure_rate(text: str) -> float:
    """argparse type of --max-failure-rate: a fraction between 0 and 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a fraction between 0 and 1, got {text}")
    return value


def add_max_failure_rate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        MAX_FAILURE_RATE_FLAG,
        type=failure_rate,
        default=DEFAULT_MAX_FAILURE_RATE,
        help="exit with an error (after saving the report and the failures) when more than this "
        f"fraction of the rows in failed (default {DEFAULT_MAX_FAILURE_RATE})",
    )


# Beam's DirectRunner first tries Prism, which downloads a binary; this is the in-process runner
# it falls back to. Stages use it when no --runner is given.
LOCAL_RUNNER = "FnApiRunner"


def with_default_runner(options: PipelineOptions) -> PipelineOptions:
    """Sets the runner to LOCAL_RUNNER where the user named none (a --runner flag always wins)."""
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = LOCAL_RUNNER
    return options


def make_options(beam_options: PipelineOptions, save_main_session: bool) -> PipelineOptions:
    """The stage's PipelineOptions: the local runner unless --runner names one, main session saved."""
    with_default_runner(beam_options)
    __import__("pipelines.launcher").launcher.check_worker_python(beam_options)  # Dataflow: the worker image's Python
    beam_options.view_as(SetupOptions).save_main_session = save_main_session
    return beam_options


def run_pipeline(pipeline: beam.Pipeline, stage: str) -> tuple[beam.runners.runner.PipelineResult, dict[str, int], float]:
    """Run to completion and return the result, the stage's counters and the wall time."""
    start = time.monotonic()
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.monotonic() - start
    return result, read_counters(result, stage), seconds


# ---------------------------------------------------------------------------
# Reading committed feature chunks: a retried bundle may have committed the same rows twice
# ---------------------------------------------------------------------------
def _keyed_by(row: dict[str, Any], column: str) -> tuple[Any, dict[str, Any]]:
    return row[column], row


def _any_one(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    # the copies are the same image's features from the same run: any one will do
    return next(iter(rows))


class OnePerKey(beam.PTransform):
    """Rows -> one row per value of `column` (image_id by default).

    extract-images commits its features in chunks as it goes, so a bundle that Beam retries
    (a lost worker on Dataflow) can commit some images twice; every reader of image features
    keeps one row per image_id.
    """

    def __init__(self, column: str = schema.IMAGE_ID):
        super().__init__()
        self._column = column

    def expand(self, rows):
        return (
            rows
            | "KeyByColumn" >> beam.Map(_keyed_by, self._column)
            | "AnyOnePerKey" >> beam.CombinePerKey(_any_one)
            | "Rows" >> beam.Values()
        )


# ---------------------------------------------------------------------------
# Small file I/O through Beam's FileSystems (local paths and gs:// alike)
# ---------------------------------------------------------------------------
def read_bytes(path: str) -> bytes:
    with FileSystems.open(path) as f:
        return f.read()


def write_bytes(path: str, data: bytes, mime_type: str = "application/octet-stream") -> None:
    """A whole file, seen whole or not at all: a local one is written under a temporary name and
    renamed into place (storage.StagedOutput.file), so a full disk or a kill never leaves half of
    it under its name; an object store's object appears only once its upload completes."""
    if "://" in path and not path.startswith("file://"):
        with FileSystems.create(path, mime_type=mime_type) as f:
            f.write(data)
        return
    files = BeamFiles()
    with storage.StagedOutput.file(path, files=files) as temp:
        with files.open_write(temp, mime_type) as f:
            f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"), mime_type="application/json" if path.endswith(".json") else "text/plain")


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def glob(pattern: str) -> list[str]:
    """Sorted paths matching a pattern; empty when none (a missing local folder included).

    Errors are not swallowed: a gs:// authentication or permission error must not read as
    "no shards" and make a stage start from nothing.
    """
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def delete(paths: Iterable[str]) -> None:
    paths = list(paths)
    if paths:
        FileSystems.delete(paths)


class BeamFiles:
    """What storage.StagedOutput needs of a filesystem, through Beam's FileSystems: for code that
    runs on Beam workers (whose images need not carry fsspec's gs:// driver)."""

    def files(self, pattern: str) -> list[str]:
        return glob(pattern)

    def rename(self, sources: list[str], targets: list[str]) -> None:
        for parent in {t.rsplit("/", 1)[0] for t in targets}:
            # object stores have no folders; a local one must exist before a rename into it
            if "://" not in parent and not FileSystems.exists(parent):
                FileSystems.mkdirs(parent)
        FileSystems.rename(list(sources), list(targets))

    def delete(self, paths: list[str]) -> None:
        delete(p for p in paths if FileSystems.exists(p))

    def exists(self, path: str) -> bool:
        return FileSystems.exists(path)

    def open_write(self, path: str, mime_type: str = "application/octet-stream"):
        parent = path.rsplit("/", 1)[0]
        # object stores have no folders; a local parent must exist before create()
        if parent and "://" not in path and not FileSystems.exists(parent):
            FileSystems.mkdirs(parent)
        return FileSystems.create(path, mime_type=mime_type)
