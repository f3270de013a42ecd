"""Stage `fetch`: download every distinct http(s) image of the index once, into Parquet shards.

    imgsearch fetch --out OUT [--threads 16] [--per-host 4] [--connect-timeout S] [--read-timeout S]
        [--timeout S] [--retries 2] [--backoff S] [--max-retry-after S] [--max-bytes N]
        [--max-redirects 5] [--resize-to N] [--copy-local] [--retry-failed] [--user-agent UA]
        [--max-failure-rate F] [Beam flags]

Run after `index`. Reads OUT/index/images, keeps each (image_id, uri) once and writes

- OUT/images/store-<run>-SSSSS-of-NNNNN.parquet (schema.IMAGE_STORE_SCHEMA): image_id, uri, the
  bytes, their sha256, the content type sniffed from the bytes (the server's header is never
  trusted), the HTTP status, width, height and fetched_at; with --resize-to N the stored image is
  a JPEG (quality 90) of at most N px on its longest side and original_width/original_height
  keep the size it had. Non-http uris (local paths, gs://) pass through by reference (a row
  with null bytes: readers open the uri) or, with --copy-local, are copied into the store.
- OUT/failures/fetch-<run>-SSSSS-of-NNNNN.parquet (schema.FAILURES_SCHEMA): every uri that did
  not end in the store, with its reason in `error`: http_404, http_4xx, http_429_after_retries,
  http_5xx_after_retries, http_other, timeout, too_large, not_an_image, redirect_loop,
  bad_redirect, dns, connection, unreadable; and the skip reason robots_noindex (the server
  answered X-Robots-Tag: noindex or noimageindex), counted as skipped, not failed.

Polite and bounded: a thread pool per worker (--threads) with at most --per-host requests in
flight to one host, connect and read timeouts plus a deadline per attempt (a body that trickles
in never holds a thread for ever), bounded retries with exponential backoff for 5xx, 429,
timeouts and dropped connections (Retry-After honoured, capped at --max-retry-after), none for
other 4xx; bodies are streamed and cut off past --max-bytes; a User-Agent naming the project.

Incremental: a rerun fetches only the uris that have no store row yet; uris that failed (or were
skipped) in an earlier run are retried only with --retry-failed, whose run then replaces the
earlier failure rows. Every run writes new shard names, and readers match finished shards only
(Beam writes into a temporary folder and renames), so a running or killed fetch never makes
the store unreadable. The books balance: rows_in = rows_out + rows_failed + rows_skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from concurrent import futures
from typing import Any, Callable, Iterator, Sequence

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from model import schema
from pipelines import common, fetcher, image_store

log = logging.getLogger(__name__)

STAGE = "fetch"
FAILED = "failed"  # tag of the failure outputs
SKIPPED = "skipped"  # tag of the skip rows (written with the failures: the reason says skip)


# counters (besides the standard four and failed_<reason> / skipped_<reason>)
SKIPPED_FETCHED = "skipped_already_fetched"
SKIPPED_FAILED_BEFORE = "skipped_failed_before"
INDEX_ROWS = common.INDEX_ROWS
HTTP_REQUESTS = "http_requests"
HTTP_RETRIES = "http_retries"
BYTES_FETCHED = "bytes_fetched"
BYTES_STORED = "bytes_stored"
REFERENCES = "references"  # non-http uris passed through by reference
COPIED_LOCAL = "copied_local"
RESIZED = "resized"
DUPLICATE_CONTENT = "duplicate_content"  # stored rows whose bytes another row of this run has too

# crawled links die routinely (img2dataset sees 10-30% fail): this gate catches a broken run
# (the network down, every host refusing), not ordinary link rot
DEFAULT_MAX_FAILURE_RATE = 0.5


# ---------------------------------------------------------------------------
# Helpers: paths
# ---------------------------------------------------------------------------
def store_shards(out: str) -> list[str]:
    """The finished store shards under OUT (never a running job's temporary files)."""
    return image_store.store_shards(out)


def failures_prefix(out: str) -> str:
    return schema.out_path(out, schema.FAILURES_DIR, STAGE)


def failure_shards(out: str) -> list[str]:
    return common.glob(failures_prefix(out) + "-*" + schema.PARQUET_SUFFIX)


def remove_empty_shards(paths: Sequence[str]) -> None:
    """Delete the shards among paths that hold no rows (Beam writes one even for no elements)."""
    empty = []
    for path in paths:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            if pq.ParquetFile(f).metadata.num_rows == 0:
                empty.append(path)
    common.delete(empty)


# ---------------------------------------------------------------------------
# DoFns
# ---------------------------------------------------------------------------
class FetchFn(beam.DoFn):
    """(image_id, uri) -> store rows; failures and skips to the FAILED output.

    Each uri is handed to this worker's thread pool as it arrives and its result emitted when it
    is done, so slow hosts never stall a batch; at most 2 x threads uris are in flight, and the
    bundle ends when all are done. Counters are incremented here, on the bundle's thread (Beam's
    metrics belong to the thread that processes the bundle, not to pool threads).
    """

    def __init__(self, config: fetcher.FetchConfig):
        self._config = config
        self._fetcher: fetcher.Fetcher | None = None
        self._pool: futures.ThreadPoolExecutor | None = None
        self._pending: set[futures.Future] = set()

    def setup(self) -> None:
        self._fetcher = fetcher.Fetcher(self._config)
        self._pool = futures.ThreadPoolExecutor(max_workers=max(1, self._config.threads), thread_name_prefix=f"{STAGE}-")

    def teardown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._fetcher is not None:
            self._fetcher.close()

    def start_bundle(self) -> None:
        self._pending = set()

    def _emit(self, outcome: fetcher.Outcome) -> Iterator[Any]:
        fetched = outcome.fetched
        if fetched is not None:
            common.counter(STAGE, HTTP_REQUESTS).inc(fetched.requests)
            common.counter(STAGE, HTTP_RETRIES).inc(fetched.retries)
            common.counter(STAGE, BYTES_FETCHED).inc(fetched.bytes_read)
        if outcome.row is not None:
            common.counter(STAGE, common.ROWS_OUT).inc()
            row = outcome.row
            if row[schema.IMAGE_BYTES] is None:
                common.counter(STAGE, REFERENCES).inc()
            else:
                common.counter(STAGE, BYTES_STORED).inc(len(row[schema.IMAGE_BYTES]))
                if fetched is None:
                    common.counter(STAGE, COPIED_LOCAL).inc()
                if row[schema.ORIGINAL_WIDTH] is not None:
                    common.counter(STAGE, RESIZED).inc()
            yield row
            return
        failure = common.failure_row(STAGE, outcome.image_id, outcome.uri, outcome.reason, outcome.message)
        if outcome.reason in fetcher.SKIP_REASONS:
            common.counter(STAGE, common.ROWS_SKIPPED).inc()
            common.counter(STAGE, f"skipped_{outcome.reason}").inc()
        else:
            common.counter(STAGE, common.ROWS_FAILED).inc()
            common.counter(STAGE, f"failed_{outcome.reason}").inc()
        yield beam.pvalue.TaggedOutput(FAILED, failure)

    def _drain(self, until: int) -> Iterator[Any]:
        while len(self._pending) > until:
            done, self._pending = futures.wait(self._pending, return_when=futures.FIRST_COMPLETED)
            for future in done:
                yield from self._emit(future.result())

    def process(self, ref: tuple[str, str]) -> Iterator[Any]:
        image_id, uri = ref
        self._pending.add(self._pool.submit(fetcher.fetch_uri, self._fetcher, image_id, uri))
        yield from self._drain(2 * max(1, self._config.threads) - 1)

    def finish_bundle(self) -> Iterator[Any]:
        for item in self._drain(0):
            if isinstance(item, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(item.tag, WindowedValue(item.value, MIN_TIMESTAMP, [GlobalWindow()]))
            else:
                yield WindowedValue(item, MIN_TIMESTAMP, [GlobalWindow()])


def _sha_of(row: dict[str, Any]) -> Iterator[tuple[str, int]]:
    if row[schema.SHA256] is not None:
        yield row[schema.SHA256], 1


def _count_duplicates(item: tuple[str, int]) -> None:
    _sha, count = item
    if count > 1:
        common.counter(STAGE, DUPLICATE_CONTENT).inc(count - 1)


# ---------------------------------------------------------------------------
# Composite transforms
# ---------------------------------------------------------------------------
class FetchImages(beam.PTransform):
    """(image_id, uri) -> {"rows": store rows, "failures": failure and skip rows}."""

    def __init__(self, config: fetcher.FetchConfig):
        super().__init__()
        self._config = config

    def expand(self, refs):
        fetched = (
            refs
            # spreads the uris over workers (Distinct grouped them by key)
            | "Spread" >> beam.Reshuffle()
            | "Fetch" >> beam.ParDo(FetchFn(self._config)).with_outputs(FAILED, main="rows")
        )
        _ = (
            fetched.rows
            | "ContentHash" >> beam.FlatMap(_sha_of)
            | "CountPerHash" >> beam.CombinePerKey(sum)
            | "CountDuplicates" >> beam.Map(_count_duplicates)
        )
        return {"rows": fetched.rows, "failures": fetched[FAILED]}


class WriteStore(beam.PTransform):
    """Store rows -> OUT/images/store-<run>-SSSSS-of-NNNNN.parquet (renamed into place when whole)."""

    def __init__(self, prefix: str, num_shards: int = 0):
        super().__init__()
        self._prefix = prefix
        self._num_shards = num_shards

    def parquet_write(self) -> beam.io.WriteToParquet:
        """Beam's Parquet sink: each bundle attempt writes its own temporary file, and only those
        of the attempts whose output was kept are renamed into place (a retry stores nothing twice)."""
        return beam.io.WriteToParquet(
            self._prefix,
            schema.IMAGE_STORE_SCHEMA,
            file_name_suffix=schema.PARQUET_SUFFIX,
            num_shards=self._num_shards,
        )

    def expand(self, rows):
        return rows | "WriteParquet" >> self.parquet_write()


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------
def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _non_negative(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
        return value

    return parse


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.stage_parser(STAGE, __doc__)
    parser.add_argument("--threads", type=_positive(int), default=fetcher.DEFAULT_THREADS, help="downloads in flight per worker")
    parser.add_argument("--per-host", type=_positive(int), default=fetcher.DEFAULT_PER_HOST, help="requests in flight to one host, per worker")
    parser.add_argument("--connect-timeout", type=_positive(float), default=fetcher.DEFAULT_CONNECT_TIMEOUT_S, help="seconds to connect")
    parser.add_argument("--read-timeout", type=_positive(float), default=fetcher.DEFAULT_READ_TIMEOUT_S, help="seconds one read may wait for data")
    parser.add_argument("--timeout", type=_positive(float), default=fetcher.DEFAULT_TIMEOUT_S, help="seconds one attempt may take in all (headers and body)")
    parser.add_argument("--retries", type=_non_negative(int), default=fetcher.DEFAULT_RETRIES, help="retries after a 5xx, 429, timeout or dropped connection (never after another 4xx)")
    parser.add_argument("--backoff", type=_non_negative(float), default=fetcher.DEFAULT_BACKOFF_S, help="seconds before the first retry, doubled for each next one")
    parser.add_argument("--max-retry-after", type=_non_negative(float), default=fetcher.DEFAULT_MAX_RETRY_AFTER_S, help="the longest wait before a retry, Retry-After included")
    parser.add_argument("--max-bytes", type=_positive(int), default=fetcher.DEFAULT_MAX_BYTES, help="largest body kept; longer ones are cut off and fail too_large")
    parser.add_argument("--max-redirects", type=_non_negative(int), default=fetcher.DEFAULT_MAX_REDIRECTS)
    parser.add_argument("--resize-to", type=_positive(int), default=None, help="store a JPEG (quality 90) of at most N px on its longest side; the original size is recorded")
    parser.add_argument("--copy-local", action="store_true", help="copy non-http images into the store too (by default they pass by reference)")
    parser.add_argument("--retry-failed", action="store_true", help="retry uris that failed or were skipped in an earlier run")
    parser.add_argument("--user-agent", default=fetcher.USER_AGENT)
    parser.add_argument("--num-shards", type=_non_negative(int), default=0, help="store shards this run writes (0: the runner decides)")
    common.add_max_failure_rate(parser)
    parser.set_defaults(max_failure_rate=DEFAULT_MAX_FAILURE_RATE)
    return parser


def config_from_args(args: argparse.Namespace) -> fetcher.FetchConfig:
    """Every FetchConfig field from the flag of its name (less the _s that says seconds)."""
    fields = dataclasses.fields(fetcher.FetchConfig)
    return fetcher.FetchConfig(**{f.name: getattr(args, f.name.removesuffix("_s")) for f in fields})


def run(
    argv: list[str] | None = None, save_main_session: bool = True, test_pipeline: beam.Pipeline | None = None
) -> common.StageReport:
    args, beam_options = common.split_args(get_args_parser(), argv)
    config = config_from_args(args)
    stored = store_shards(args.out)
    failed_before = failure_shards(args.out)
    if stored or failed_before:
        log.info(
            "%s: %d store shards and %d failure shards exist; fetching only uris without a row%s",
            STAGE, len(stored), len(failed_before), "" if args.retry_failed else " (--retry-failed retries the failed ones)",
        )  # fmt: skip
    run_id = common.run_id()
    store_prefix = schema.out_path(args.out, schema.STORE_DIR, f"{schema.STORE_PREFIX}-{run_id}")

    pipeline = test_pipeline or beam.Pipeline(options=common.make_options(beam_options, save_main_session))
    fetched = (
        pipeline
        | "ReadFetchRefs" >> common.ReadImageRefs(args.out, STAGE)
        | "SkipFetched" >> common.SkipDoneBefore(
            STAGE, {SKIPPED_FETCHED: stored, SKIPPED_FAILED_BEFORE: [] if args.retry_failed else failed_before}
        )
        | "FetchImages" >> FetchImages(config)
    )
    _ = fetched["rows"] | "WriteStore" >> WriteStore(store_prefix, args.num_shards)
    _ = fetched["failures"] | "WriteFailures" >> common.WriteFailures(f"{failures_prefix(args.out)}-{run_id}")

    _, counters, seconds = common.run_pipeline(pipeline, STAGE)
    # a rerun that found nothing new leaves no empty shards behind
    remove_empty_shards(common.glob(f"{store_prefix}-*{schema.PARQUET_SUFFIX}"))
    remove_empty_shards(common.glob(f"{failures_prefix(args.out)}-{run_id}-*{schema.PARQUET_SUFFIX}"))
    if args.retry_failed and failed_before:
        # their uris were all tried again: this run's failure rows say how they ended now
        common.delete(failed_before)
    return common.finish_stage(
        STAGE,
        args.out,
        counters,
        seconds,
        args.max_failure_rate,
        store_shards=len(store_shards(args.out)),
        threads=config.threads,
        per_host=config.per_host,
        resize_to=config.resize_to,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(run().summary_line())
