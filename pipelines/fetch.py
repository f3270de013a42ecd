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
import datetime as dt
import email.utils
import errno
import hashlib
import io
import logging
import os
import socket
import stat
import threading
import time
import urllib.parse
from concurrent import futures
from typing import Any, Callable, Iterator, Sequence

import apache_beam as beam
import pyarrow.parquet as pq
import urllib3
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue
from PIL import Image

from model import preprocess, schema
from pipelines import common, image_store

log = logging.getLogger(__name__)

STAGE = "fetch"
USER_AGENT = "imgsearch-fetch/0.1 (image search indexer; +https://github.com/imgsearch)"
HTTP_SCHEMES = ("http", "https")
FAILED = "failed"  # tag of the failure outputs
SKIPPED = "skipped"  # tag of the skip rows (written with the failures: the reason says skip)

# outcomes
OK = "ok"
# failure reasons (the failures' `error` column) and the skip reason
HTTP_404 = "http_404"
HTTP_4XX = "http_4xx"
HTTP_429_AFTER_RETRIES = "http_429_after_retries"
HTTP_5XX_AFTER_RETRIES = "http_5xx_after_retries"
HTTP_OTHER = "http_other"  # 1xx, 204, a 3xx without Location...: not an image response
TIMEOUT = "timeout"
TOO_LARGE = "too_large"
NOT_AN_IMAGE = "not_an_image"
REDIRECT_LOOP = "redirect_loop"
BAD_REDIRECT = "bad_redirect"  # a Location that is not http(s)
DNS = "dns"
CONNECTION = "connection"
UNREADABLE = "unreadable"  # --copy-local: a local file that could not be read
ROBOTS_NOINDEX = "robots_noindex"
SKIP_REASONS = (ROBOTS_NOINDEX,)

# counters (besides the standard four and failed_<reason> / skipped_<reason>)
SKIPPED_FETCHED = "skipped_already_fetched"
SKIPPED_FAILED_BEFORE = "skipped_failed_before"
INDEX_ROWS = "index_rows"
HTTP_REQUESTS = "http_requests"
HTTP_RETRIES = "http_retries"
BYTES_FETCHED = "bytes_fetched"
BYTES_STORED = "bytes_stored"
REFERENCES = "references"  # non-http uris passed through by reference
COPIED_LOCAL = "copied_local"
RESIZED = "resized"
DUPLICATE_CONTENT = "duplicate_content"  # stored rows whose bytes another row of this run has too

DEFAULT_THREADS = 16
DEFAULT_PER_HOST = 4
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 20.0
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF_S = 1.0
DEFAULT_MAX_RETRY_AFTER_S = 30.0
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_REDIRECTS = 5
# crawled links die routinely (img2dataset sees 10-30% fail): this gate catches a broken run
# (the network down, every host refusing), not ordinary link rot
DEFAULT_MAX_FAILURE_RATE = 0.5
RESIZE_JPEG_QUALITY = 90
READ_CHUNK = 64 * 1024
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
ROBOTS_DIRECTIVES = ("noindex", "noimageindex", "none")
_FORMAT_MIME = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


# ---------------------------------------------------------------------------
# Helpers: paths
# ---------------------------------------------------------------------------
def images_pattern(out: str) -> str:
    return schema.out_path(out, schema.IMAGES_DIR, "*" + schema.PARQUET_SUFFIX)


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


def is_http(uri: str) -> bool:
    return urllib.parse.urlsplit(uri).scheme.lower() in HTTP_SCHEMES


# ---------------------------------------------------------------------------
# Helpers: one download (plain Python, no Beam: tests and the bench call it directly)
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FetchConfig:
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    timeout_s: float = DEFAULT_TIMEOUT_S  # deadline of one attempt, headers and body together
    retries: int = DEFAULT_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S
    max_bytes: int = DEFAULT_MAX_BYTES
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    per_host: int = DEFAULT_PER_HOST
    threads: int = DEFAULT_THREADS
    user_agent: str = USER_AGENT
    resize_to: int | None = None
    copy_local: bool = False


@dataclasses.dataclass
class Fetched:
    """What one uri came to: OK with its bytes, or a failure/skip reason with a message."""

    outcome: str  # OK, or a failure or skip reason
    message: str = ""
    data: bytes | None = None
    http_status: int | None = None
    requests: int = 0
    retries: int = 0
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome == OK


class _Retryable(Exception):
    """An attempt that may succeed later: (reason, message, seconds the server asked us to wait)."""

    def __init__(self, reason: str, message: str, http_status: int | None = None, wait_s: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.http_status = http_status
        self.wait_s = wait_s


class _Final(Exception):
    """An attempt whose answer will not change: the uri ends with this reason."""

    def __init__(self, reason: str, message: str, http_status: int | None = None, bytes_read: int = 0):
        super().__init__(message)
        self.reason = reason
        self.http_status = http_status
        self.bytes_read = bytes_read


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def robots_forbids(values: Sequence[str], agent: str = "imgsearch") -> str | None:
    """The X-Robots-Tag directive that forbids indexing this image (noindex, noimageindex, none),
    or None. A value scoped to another crawler ("googlebot: noindex") does not apply to us."""
    for value in values:
        scope, sep, rest = value.partition(":")
        directives = value
        if sep and " " not in scope.strip() and scope.strip().lower() not in ROBOTS_DIRECTIVES:
            # "<agent>: directives"; unavailable_after: <date> has a colon too, but is a directive
            if scope.strip().lower() not in (agent.lower(), "unavailable_after"):
                continue
            directives = rest
        for directive in directives.split(","):
            if directive.strip().lower() in ROBOTS_DIRECTIVES:
                return directive.strip().lower()
    return None


def classify_exception(exc: BaseException) -> tuple[str, bool]:
    """(reason, retryable) of an exception raised while connecting or reading."""
    # urllib3's NewConnectionError subclasses ConnectTimeoutError: a refused connection is not a
    # timeout, so it is looked at first (and a failed name lookup is one of those)
    name_resolution = getattr(urllib3.exceptions, "NameResolutionError", ())
    if (name_resolution and isinstance(exc, name_resolution)) or isinstance(exc, socket.gaierror):
        return DNS, False
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, socket.gaierror):
            return DNS, False
        if isinstance(cause, (socket.timeout, TimeoutError)) or "timed out" in str(exc):
            return TIMEOUT, True
        return CONNECTION, True
    if isinstance(exc, (urllib3.exceptions.TimeoutError, socket.timeout, TimeoutError)):
        return TIMEOUT, True
    if isinstance(exc, urllib3.exceptions.LocationParseError):
        return CONNECTION, False
    return CONNECTION, True


def sniff_image(data: bytes) -> tuple[str, int, int]:
    """(MIME type, width, height) from the bytes themselves (magic numbers, then the header only);
    raises for anything that is not one of preprocess.ALLOWED_IMAGE_FORMATS."""
    with preprocess.open_image(data) as img:
        preprocess.check_pixel_limit(img.size)
        width, height = preprocess.displayed_size(img)
        return _FORMAT_MIME.get(img.format, "application/octet-stream"), width, height


def resize_longest(data: bytes, longest: int) -> tuple[bytes, int, int]:
    """A JPEG (quality 90) of the image with its longest side at most `longest` px, and its size.

    The picture is decoded as extraction decodes it (upright, transparency on white); a picture
    already small enough is re-encoded only if it is not a JPEG already.
    """
    decoded = preprocess.decode_image(data, longest)
    img = decoded.rgb
    if max(decoded.width, decoded.height) <= longest and preprocess.open_image(data).format == "JPEG":
        return data, decoded.width, decoded.height
    img.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=RESIZE_JPEG_QUALITY)
    return buf.getvalue(), img.width, img.height


class HostLimiter:
    """At most `per_host` requests in flight to one host from this process."""

    def __init__(self, per_host: int):
        self._per_host = max(1, per_host)
        self._lock = threading.Lock()
        self._semaphores: dict[str, threading.BoundedSemaphore] = {}

    def __call__(self, host: str) -> threading.BoundedSemaphore:
        with self._lock:
            sem = self._semaphores.get(host)
            if sem is None:
                sem = self._semaphores[host] = threading.BoundedSemaphore(self._per_host)
            return sem


class Fetcher:
    """Downloads one uri at a time, safely from many threads (one connection pool per host)."""

    def __init__(self, config: FetchConfig, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self._sleep = sleep
        self._limiter = HostLimiter(config.per_host)
        self._pool = urllib3.PoolManager(
            num_pools=max(64, config.threads * 2),
            maxsize=max(1, config.per_host),
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=config.connect_timeout_s, read=config.read_timeout_s),
            headers={"User-Agent": config.user_agent, "Accept": "image/*"},
        )

    def close(self) -> None:
        self._pool.clear()

    def backoff(self, attempt: int, wait_s: float | None) -> float:
        """Seconds before retry number `attempt` (1-based): exponential, or what the server asked
        (Retry-After), capped at max_retry_after_s."""
        delay = self.config.backoff_s * (2 ** (attempt - 1))
        if wait_s is not None:
            delay = max(delay, wait_s)
        return min(delay, self.config.max_retry_after_s)

    def fetch(self, uri: str) -> Fetched:
        requests = retries = 0
        last: _Retryable | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                retries += 1
                self._sleep(self.backoff(attempt, last.wait_s if last else None))
            try:
                data, status, n = self._attempt(uri)
                requests += n
                return Fetched(OK, data=data, http_status=status, requests=requests, retries=retries, bytes_read=len(data))
            except _Retryable as exc:
                requests += getattr(exc, "requests", 1)
                last = exc
            except _Final as exc:
                requests += getattr(exc, "requests", 1)
                return Fetched(exc.reason, str(exc), http_status=exc.http_status, requests=requests, retries=retries, bytes_read=exc.bytes_read)
        assert last is not None
        reason = last.reason
        if reason == "http_5xx":
            reason = HTTP_5XX_AFTER_RETRIES
        elif reason == "http_429":
            reason = HTTP_429_AFTER_RETRIES
        return Fetched(reason, f"{last} (after {retries} retries)", http_status=last.http_status, requests=requests, retries=retries)

    def _attempt(self, uri: str) -> tuple[bytes, int, int]:
        """One attempt, redirects followed by hand (a loop is caught, every hop host-limited).
        Returns (body, status, requests made) or raises _Retryable / _Final."""
        deadline = time.monotonic() + self.config.timeout_s
        seen = {uri}
        url = uri
        requests = 0
        for _hop in range(self.config.max_redirects + 1):
            requests += 1
            try:
                result = self._request(url, deadline)
            except (_Retryable, _Final) as exc:
                exc.requests = requests  # type: ignore[attr-defined]
                raise
            if isinstance(result, tuple):
                return result[0], result[1], requests
            location = urllib.parse.urljoin(url, result)
            if not is_http(location):
                raise _Final(BAD_REDIRECT, f"{url} redirects to {location!r}, not http(s)")
            if location in seen:
                err = _Final(REDIRECT_LOOP, f"redirect loop: {url} -> {location} (seen before)")
                err.requests = requests  # type: ignore[attr-defined]
                raise err
            seen.add(location)
            url = location
        err = _Final(REDIRECT_LOOP, f"more than {self.config.max_redirects} redirects from {uri}")
        err.requests = requests  # type: ignore[attr-defined]
        raise err

    def _request(self, url: str, deadline: float) -> tuple[bytes, int] | str:
        """(body, status) of a 200, the Location of a redirect, or raises."""
        host = urllib.parse.urlsplit(url).netloc.lower()
        with self._limiter(host):
            try:
                resp = self._pool.request("GET", url, preload_content=False, redirect=False, retries=False)
            except Exception as exc:  # connect, TLS, DNS, reset before the headers
                reason, retryable = classify_exception(exc)
                raise (_Retryable if retryable else _Final)(reason, f"{type(exc).__name__}: {exc}") from None
            try:
                result = self._response(url, resp, deadline)
            except BaseException:
                # a body left unread (robots, too large, cut off, a reset) must never be read
                # as the next response on a reused connection: close it
                resp.close()
                resp.release_conn()
                raise
            resp.release_conn()
            return result

    def _response(self, url: str, resp: Any, deadline: float) -> tuple[bytes, int] | str:
        status = resp.status
        if status in REDIRECT_STATUSES:
            location = resp.headers.get("Location")
            resp.drain_conn()
            if not location:
                raise _Final(HTTP_OTHER, f"HTTP {status} without a Location", status)
            return location
        if status == 429:
            wait = parse_retry_after(resp.headers.get("Retry-After"))
            resp.drain_conn()
            raise _Retryable("http_429", f"HTTP 429 Too Many Requests (Retry-After {resp.headers.get('Retry-After')})", status, wait)
        if 500 <= status <= 599:
            wait = parse_retry_after(resp.headers.get("Retry-After"))
            resp.drain_conn()
            raise _Retryable("http_5xx", f"HTTP {status}", status, wait)
        if status == 404:
            resp.drain_conn()
            raise _Final(HTTP_404, "HTTP 404 Not Found", status)
        if 400 <= status <= 499:
            resp.drain_conn()
            raise _Final(HTTP_4XX, f"HTTP {status}", status)
        if status != 200:
            raise _Final(HTTP_OTHER, f"HTTP {status}: not a full image response", status)
        robots = robots_forbids(resp.headers.getlist("X-Robots-Tag"))
        if robots:
            raise _Final(ROBOTS_NOINDEX, f"X-Robots-Tag: {robots}", status)
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.config.max_bytes:
            raise _Final(TOO_LARGE, f"Content-Length {declared} is over --max-bytes {self.config.max_bytes}", status)
        return self._read_body(resp, deadline), status

    def _read_body(self, resp: Any, deadline: float) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                if time.monotonic() > deadline:
                    raise _Retryable(TIMEOUT, f"the body took longer than --timeout {self.config.timeout_s:g} s ({size} bytes read)", resp.status)
                chunk = resp.read(READ_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.config.max_bytes:
                    raise _Final(TOO_LARGE, f"body cut off at {size} bytes, over --max-bytes {self.config.max_bytes}", resp.status, size)
                chunks.append(chunk)
        except (_Retryable, _Final):
            raise
        except Exception as exc:  # a read timeout, a reset mid-body, a short body
            reason, retryable = classify_exception(exc)
            raise (_Retryable if retryable else _Final)(reason, f"{type(exc).__name__} after {size} bytes: {exc}", resp.status) from None
        return b"".join(chunks)


def read_local(uri: str) -> bytes:
    """A non-http image's bytes (--copy-local); local paths must be regular files."""
    scheme = FileSystems.get_scheme(uri)
    if scheme in (None, "file"):
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise OSError(errno.EINVAL, f"{uri} is not a regular file")
    return common.read_bytes(uri)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def store_row(image_id: str, uri: str, data: bytes | None, http_status: int | None, resize_to: int | None) -> dict[str, Any]:
    """A store row: the bytes sniffed (and resized with resize_to); raises for non-images.
    data=None makes a reference row (the image stays at its uri)."""
    row: dict[str, Any] = {
        schema.IMAGE_ID: image_id,
        schema.URI: uri,
        schema.IMAGE_BYTES: None,
        schema.SHA256: None,
        schema.CONTENT_TYPE: None,
        schema.HTTP_STATUS: http_status,
        schema.WIDTH: None,
        schema.HEIGHT: None,
        schema.FETCHED_AT: now_utc(),
        schema.ORIGINAL_WIDTH: None,
        schema.ORIGINAL_HEIGHT: None,
    }
    if data is None:
        return row
    content_type, width, height = sniff_image(data)
    if resize_to and max(width, height) > resize_to:
        row[schema.ORIGINAL_WIDTH], row[schema.ORIGINAL_HEIGHT] = width, height
        data, width, height = resize_longest(data, resize_to)
        content_type = _FORMAT_MIME["JPEG"]
    row.update(
        {
            schema.IMAGE_BYTES: data,
            schema.SHA256: hashlib.sha256(data).hexdigest(),
            schema.CONTENT_TYPE: content_type,
            schema.WIDTH: width,
            schema.HEIGHT: height,
        }
    )
    return row


@dataclasses.dataclass
class Outcome:
    """One uri's end: a store row, or a failure/skip row with its reason; plus its accounting."""

    image_id: str
    uri: str
    row: dict[str, Any] | None = None
    reason: str | None = None
    message: str = ""
    fetched: Fetched | None = None


def fetch_uri(fetcher: Fetcher, image_id: str, uri: str) -> Outcome:
    """Everything one uri needs, on a pool thread: download (or reference / copy), sniff, resize."""
    config = fetcher.config
    fetched = None
    if is_http(uri):
        fetched = fetcher.fetch(uri)
        if not fetched.ok:
            return Outcome(image_id, uri, reason=fetched.outcome, message=fetched.message, fetched=fetched)
        data, status = fetched.data, fetched.http_status
    elif config.copy_local:
        try:
            data, status = read_local(uri), None
        except Exception as exc:
            return Outcome(image_id, uri, reason=UNREADABLE, message=f"{type(exc).__name__}: {exc}")
        if len(data) > config.max_bytes:
            return Outcome(image_id, uri, reason=TOO_LARGE, message=f"{len(data)} bytes, over --max-bytes {config.max_bytes}")
    else:
        return Outcome(image_id, uri, row=store_row(image_id, uri, None, None, None))
    try:
        row = store_row(image_id, uri, data, status, config.resize_to)
    except Exception as exc:  # HTML served as image/jpeg, an empty body, a format not allowed...
        return Outcome(image_id, uri, reason=NOT_AN_IMAGE, message=f"{type(exc).__name__}: {exc}"[:500], fetched=fetched)
    return Outcome(image_id, uri, row=row, fetched=fetched)


def image_ref(row: dict[str, Any]) -> tuple[str, str]:
    common.counter(STAGE, INDEX_ROWS).inc()
    return row[schema.IMAGE_ID], row[schema.URI]


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

    def __init__(self, config: FetchConfig):
        self._config = config
        self._fetcher: Fetcher | None = None
        self._pool: futures.ThreadPoolExecutor | None = None
        self._pending: set[futures.Future] = set()

    def setup(self) -> None:
        self._fetcher = Fetcher(self._config)
        self._pool = futures.ThreadPoolExecutor(max_workers=max(1, self._config.threads), thread_name_prefix=f"{STAGE}-")

    def teardown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._fetcher is not None:
            self._fetcher.close()

    def start_bundle(self) -> None:
        self._pending = set()

    def _emit(self, outcome: Outcome) -> Iterator[Any]:
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
        if outcome.reason in SKIP_REASONS:
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
        self._pending.add(self._pool.submit(fetch_uri, self._fetcher, image_id, uri))
        yield from self._drain(2 * max(1, self._config.threads) - 1)

    def finish_bundle(self) -> Iterator[Any]:
        for item in self._drain(0):
            if isinstance(item, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(item.tag, WindowedValue(item.value, MIN_TIMESTAMP, [GlobalWindow()]))
            else:
                yield WindowedValue(item, MIN_TIMESTAMP, [GlobalWindow()])


def _count_in(ref: tuple[str, str]) -> tuple[str, str]:
    common.counter(STAGE, common.ROWS_IN).inc()
    return ref


def _not_yet_fetched(joined: tuple[str, dict[str, list]]) -> Iterator[tuple[str, str]]:
    image_id, groups = joined
    for uri in groups["refs"]:
        if groups["stored"]:
            common.counter(STAGE, common.ROWS_SKIPPED).inc()
            common.counter(STAGE, SKIPPED_FETCHED).inc()
        elif groups["failed"]:
            common.counter(STAGE, common.ROWS_SKIPPED).inc()
            common.counter(STAGE, SKIPPED_FAILED_BEFORE).inc()
        else:
            yield image_id, uri


def _sha_of(row: dict[str, Any]) -> Iterator[tuple[str, int]]:
    if row[schema.SHA256] is not None:
        yield row[schema.SHA256], 1


def _count_duplicates(item: tuple[str, int]) -> None:
    _sha, count = item
    if count > 1:
        common.counter(STAGE, DUPLICATE_CONTENT).inc(count - 1)


def _keyed_true(row: dict[str, Any]) -> tuple[str, bool]:
    return row[schema.IMAGE_ID], True


# ---------------------------------------------------------------------------
# Composite transforms
# ---------------------------------------------------------------------------
class ReadFetchRefs(beam.PTransform):
    """OUT/index/images -> distinct (image_id, uri), counted as rows_in."""

    def __init__(self, out: str):
        super().__init__()
        self._out = out

    def expand(self, pbegin):
        return (
            pbegin
            | "ReadImages" >> beam.io.ReadFromParquet(images_pattern(self._out), columns=[schema.IMAGE_ID, schema.URI])
            | "ImageRef" >> beam.Map(image_ref)
            | "DistinctImages" >> beam.Distinct()
            | "CountIn" >> beam.Map(_count_in)
        )


class SkipFetched(beam.PTransform):
    """(image_id, uri) -> those with no store row in `stored_shards` and no failure row in
    `failed_shards` (an anti-join in the pipeline: no id set held by the driver)."""

    def __init__(self, stored_shards: Sequence[str], failed_shards: Sequence[str]):
        super().__init__()
        self._stored = list(stored_shards)
        self._failed = list(failed_shards)

    def _ids(self, pipeline: beam.Pipeline, label: str, shards: list[str]):
        return (
            pipeline
            | f"{label}Shards" >> beam.Create(shards)
            | f"Read{label}Ids" >> beam.io.ReadAllFromParquet(columns=[schema.IMAGE_ID])
            | f"Key{label}" >> beam.Map(_keyed_true)
        )

    def expand(self, refs):
        if not self._stored and not self._failed:
            return refs
        groups = {
            "refs": refs,
            "stored": self._ids(refs.pipeline, "Stored", self._stored),
            "failed": self._ids(refs.pipeline, "Failed", self._failed),
        }
        return groups | "JoinEarlierRuns" >> beam.CoGroupByKey() | "NotYetFetched" >> beam.FlatMap(_not_yet_fetched)


class FetchImages(beam.PTransform):
    """(image_id, uri) -> {"rows": store rows, "failures": failure and skip rows}."""

    def __init__(self, config: FetchConfig):
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

    def expand(self, rows):
        return rows | "WriteParquet" >> beam.io.WriteToParquet(
            self._prefix,
            schema.IMAGE_STORE_SCHEMA,
            file_name_suffix=schema.PARQUET_SUFFIX,
            num_shards=self._num_shards,
        )


class WriteFailures(beam.PTransform):
    def __init__(self, prefix: str):
        super().__init__()
        self._prefix = prefix

    def expand(self, rows):
        return rows | "WriteParquet" >> beam.io.WriteToParquet(
            self._prefix, schema.FAILURES_SCHEMA, file_name_suffix=schema.PARQUET_SUFFIX
        )


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
    parser = argparse.ArgumentParser(prog="imgsearch fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output root (local path or gs://...)")
    parser.add_argument("--threads", type=_positive(int), default=DEFAULT_THREADS, help="downloads in flight per worker")
    parser.add_argument("--per-host", type=_positive(int), default=DEFAULT_PER_HOST, help="requests in flight to one host, per worker")
    parser.add_argument("--connect-timeout", type=_positive(float), default=DEFAULT_CONNECT_TIMEOUT_S, help="seconds to connect")
    parser.add_argument("--read-timeout", type=_positive(float), default=DEFAULT_READ_TIMEOUT_S, help="seconds one read may wait for data")
    parser.add_argument("--timeout", type=_positive(float), default=DEFAULT_TIMEOUT_S, help="seconds one attempt may take in all (headers and body)")
    parser.add_argument("--retries", type=_non_negative(int), default=DEFAULT_RETRIES, help="retries after a 5xx, 429, timeout or dropped connection (never after another 4xx)")
    parser.add_argument("--backoff", type=_non_negative(float), default=DEFAULT_BACKOFF_S, help="seconds before the first retry, doubled for each next one")
    parser.add_argument("--max-retry-after", type=_non_negative(float), default=DEFAULT_MAX_RETRY_AFTER_S, help="the longest wait before a retry, Retry-After included")
    parser.add_argument("--max-bytes", type=_positive(int), default=DEFAULT_MAX_BYTES, help="largest body kept; longer ones are cut off and fail too_large")
    parser.add_argument("--max-redirects", type=_non_negative(int), default=DEFAULT_MAX_REDIRECTS)
    parser.add_argument("--resize-to", type=_positive(int), default=None, help="store a JPEG (quality 90) of at most N px on its longest side; the original size is recorded")
    parser.add_argument("--copy-local", action="store_true", help="copy non-http images into the store too (by default they pass by reference)")
    parser.add_argument("--retry-failed", action="store_true", help="retry uris that failed or were skipped in an earlier run")
    parser.add_argument("--user-agent", default=USER_AGENT)
    parser.add_argument("--num-shards", type=_non_negative(int), default=0, help="store shards this run writes (0: the runner decides)")
    common.add_max_failure_rate(parser)
    parser.set_defaults(max_failure_rate=DEFAULT_MAX_FAILURE_RATE)
    return parser


def config_from_args(args: argparse.Namespace) -> FetchConfig:
    return FetchConfig(
        connect_timeout_s=args.connect_timeout,
        read_timeout_s=args.read_timeout,
        timeout_s=args.timeout,
        retries=args.retries,
        backoff_s=args.backoff,
        max_retry_after_s=args.max_retry_after,
        max_bytes=args.max_bytes,
        max_redirects=args.max_redirects,
        per_host=args.per_host,
        threads=args.threads,
        user_agent=args.user_agent,
        resize_to=args.resize_to,
        copy_local=args.copy_local,
    )


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
        | "ReadFetchRefs" >> ReadFetchRefs(args.out)
        | "SkipFetched" >> SkipFetched(stored, [] if args.retry_failed else failed_before)
        | "FetchImages" >> FetchImages(config)
    )
    _ = fetched["rows"] | "WriteStore" >> WriteStore(store_prefix, args.num_shards)
    _ = fetched["failures"] | "WriteFailures" >> WriteFailures(f"{failures_prefix(args.out)}-{run_id}")

    _, counters, seconds = common.run_pipeline(pipeline, STAGE)
    # a rerun that found nothing new leaves no empty shards behind
    remove_empty_shards(common.glob(f"{store_prefix}-*{schema.PARQUET_SUFFIX}"))
    remove_empty_shards(common.glob(f"{failures_prefix(args.out)}-{run_id}-*{schema.PARQUET_SUFFIX}"))
    if args.retry_failed and failed_before:
        # their uris were all tried again: this run's failure rows say how they ended now
        common.delete(failed_before)
    report = common.report_from_counters(
        STAGE,
        counters,
        seconds,
        store_shards=len(store_shards(args.out)),
        threads=config.threads,
        per_host=config.per_host,
        resize_to=config.resize_to,
    )
    report.save(args.out)
    log.info(report.summary_line())
    common.check_failure_rate(report, args.max_failure_rate)
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(run().summary_line())
