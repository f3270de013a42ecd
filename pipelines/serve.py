"""`imgsearch serve`: a plain static file server for a published site folder.

The site needs no server code; this exists so a user can look at OUT/site without installing
anything else. Any static host (a bucket, GitHub Pages, nginx) serves the same folder.
"""

from __future__ import annotations

import functools
import http.server
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# Browsers refuse ES modules served with a non-JavaScript MIME type, and some systems'
# mime.types map .js oddly, so the types the site needs are fixed here.
_MIME_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
}


class SiteRequestHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **_MIME_TYPES}

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("%s - %s", self.address_string(), format % args)

    def handle(self) -> None:
        # a browser cancels requests all the time (a thumbnail scrolled past, a page left): one
        # line, not a BrokenPipe traceback
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exn:
            log.info("%s cancelled %s (%s)", self.address_string(), getattr(self, "path", "a request"), type(exn).__name__)


def make_server(site_dir: str, host: str = "127.0.0.1", port: int = 8000) -> http.server.ThreadingHTTPServer:
    root = Path(site_dir)
    if "://" in site_dir:
        raise SystemExit(f"{site_dir} is not a local folder; serve it from its static host instead")
    if not (root / "index.html").is_file():
        raise SystemExit(f"{site_dir} has no index.html; run `imgsearch rank --out OUT` first")
    handler = functools.partial(SiteRequestHandler, directory=str(root))
    return http.server.ThreadingHTTPServer((host, port), handler)


def serve(site_dir: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (Ctrl-C)."""
    server = make_server(site_dir, host, port)
    shown_host = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    print(f"serving {site_dir} on http://{shown_host}:{server.server_address[1]}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
