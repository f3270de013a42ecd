"""A real HTTP server on 127.0.0.1 (port 0, in a thread) that serves images and faults, for fetch.

Paths (GET):
  /img/<name>        an image from `images` (Content-Type image/jpeg or image/png)
  /dup/a.jpg, /dup/b.jpg   the same image bytes at two URLs
  /redirect-ok       301 to /img/redirected.jpg
  /missing           404                      /forbidden        403
  /flaky             500 the first time, then the image
  /always500         500 every time
  /busy              429 with Retry-After: 1 the first time, then the image
  /slow              headers and a few bytes, then silence past any small read timeout
  /trickle           one byte every 0.1 s: each read is quick, the whole body is not
  /loop/a, /loop/b   302 to each other
  /html              an HTML page served as image/jpeg
  /big               a declared body over the cap     /big-stream   the same, no Content-Length
  /reset             the connection reset (RST) before any answer
  /noindex           the image with X-Robots-Tag: noindex
  /noimageindex      the image with X-Robots-Tag: noimageindex
  /scoped            the image with X-Robots-Tag: otherbot: noindex (not addressed to us)

Every request is recorded (path, time, User-Agent), so tests count what a run fetched.
"""

from __future__ import annotations

import collections
import dataclasses
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BIG_BYTES = 300_000
SLOW_SECONDS = 1.5


@dataclasses.dataclass
class Request:
    path: str
    at: float
    user_agent: str


class FaultServer:
    def __init__(self, images: dict[str, bytes]):
        self.images = dict(images)
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.httpd.daemon_threads = True
        # clients that hang up (timeouts, size caps) are part of the test, not server errors
        self.httpd.handle_error = _quiet  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fetch-fault-server", daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def count(self, path: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests if path is None or r.path == path)

    def counts(self) -> collections.Counter:
        with self.lock:
            return collections.Counter(r.path for r in self.requests)

    def times(self, path: str) -> list[float]:
        with self.lock:
            return [r.at for r in self.requests if r.path == path]

    def seen(self, path: str) -> int:
        """How many requests for path came before this one (the handler's own is counted)."""
        return self.count(path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _quiet(request, client_address) -> None:
    pass


def _handler_for(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes = b"", content_type: str = "image/jpeg", headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _image(self, name: str = "photo.jpg", headers: dict | None = None) -> None:
            data = server.images[name]
            self._send(200, data, "image/png" if data.startswith(b"\x89PNG") else "image/jpeg", headers)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path
            with server.lock:
                server.requests.append(Request(path, time.monotonic(), self.headers.get("User-Agent", "")))
                n = sum(1 for r in server.requests if r.path == path)
            try:
                self._route(path, n)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _route(self, path: str, n: int) -> None:
            if path.startswith("/img/"):
                name = path[len("/img/") :]
                if name in server.images:
                    self._image(name)
                else:
                    self._send(404, b"not found", "text/plain")
            elif path in ("/dup/a.jpg", "/dup/b.jpg"):
                self._image("dup.jpg")
            elif path == "/redirect-ok":
                self._send(301, b"", "text/plain", {"Location": "/img/redirected.jpg"})
            elif path == "/missing":
                self._send(404, b"not here", "text/plain")
            elif path == "/forbidden":
                self._send(403, b"no", "text/plain")
            elif path == "/flaky":
                self._send(500, b"oops", "text/plain") if n == 1 else self._image("flaky.jpg")
            elif path == "/always500":
                self._send(500, b"down", "text/plain")
            elif path == "/busy":
                if n == 1:
                    self._send(429, b"slow down", "text/plain", {"Retry-After": "1"})
                else:
                    self._image("busy.jpg")
            elif path == "/slow":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "10000")
                self.end_headers()
                self.wfile.write(b"\xff\xd8\xff")
                self.wfile.flush()
                time.sleep(SLOW_SECONDS)
                self.close_connection = True
            elif path == "/trickle":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "40")
                self.end_headers()
                for _ in range(40):
                    self.wfile.write(b"\x00")
                    self.wfile.flush()
                    time.sleep(0.1)
            elif path.startswith("/loop/"):
                target = "/loop/b" if path == "/loop/a" else "/loop/a"
                self._send(302, b"", "text/plain", {"Location": target})
            elif path == "/html":
                self._send(200, b"<!doctype html><html><body>a page, not a picture</body></html>", "image/jpeg")
            elif path == "/big":
                self._send(200, b"\xff\xd8\xff" + b"\x00" * BIG_BYTES, "image/jpeg")
            elif path == "/big-stream":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                chunk = b"\x00" * 16384
                for _ in range(BIG_BYTES // len(chunk) + 1):
                    self.wfile.write(chunk)
            elif path == "/reset":
                # SO_LINGER 0: close() sends RST instead of FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
            elif path == "/noindex":
                self._image("photo.jpg", {"X-Robots-Tag": "noindex"})
            elif path == "/noimageindex":
                self._image("photo.jpg", {"X-Robots-Tag": "noarchive, noimageindex"})
            elif path == "/scoped":
                self._image("scoped.jpg", {"X-Robots-Tag": "otherbot: noindex"})
            else:
                self._send(404, b"unknown", "text/plain")

    return Handler


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
