"""The polite HTTP client behind `imgsearch fetch`: one image at a time, many at once.

Per-host concurrency caps, connect and read timeouts with a deadline per attempt, bounded retries
with backoff for 5xx, 429 and timeouts (Retry-After honoured, capped) and none for other 4xx, a
streamed size cap, redirects followed by hand (loops and non-http targets caught), X-Robots-Tag
honoured, and the content sniffed from the bytes with the allowed image formats. Every uri ends
as an Outcome: stored bytes, or a failure or skip reason. No Beam here: pipelines/fetch.py runs
it in a thread pool per worker.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import errno
import hashlib
import io
import os
import socket
import stat
import threading
import time
import urllib.parse
from typing import Any, Callable, Sequence

import urllib3
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from model import preprocess, schema
from pipelines import common

USER_AGENT = "imgsearch-fetch/0.1 (image search indexer; +https://github.com/imgsearch)"
HTTP_SCHEMES = ("http", "https")
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
