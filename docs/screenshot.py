"""Regenerate docs/screenshot.png from a built demo site (`make demo` first).

    .venv/bin/python docs/screenshot.py demo-out/site [QUERY]

Serves the folder on 127.0.0.1, opens it in Debian's chromium through Playwright and saves the
results grid for QUERY (default: the demo's `fish`). `site_page` (the served site and a browser
page on it) is shared with docs/screenshot_discovery.py.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

from playwright.sync_api import sync_playwright

from pipelines.serve import make_server

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]
VIEWPORT = {"width": 1200, "height": 800}


@contextlib.contextmanager
def site_page(site_dir: str, viewport: dict[str, int]) -> Iterator[tuple[Any, str]]:
    """site_dir served on 127.0.0.1 and a headless chromium page of that viewport: (page, the
    site's base URL, ending in /). The browser and the server are closed afterwards."""
    server = make_server(site_dir, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            try:
                yield browser.new_page(viewport=viewport), f"http://127.0.0.1:{server.server_address[1]}/"
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()


def main(site_dir: str, query: str = "fish") -> Path:
    target = Path(__file__).resolve().parent / "screenshot.png"
    with site_page(site_dir, VIEWPORT) as (page, base):
        page.goto(f"{base}?q={query}")
        page.wait_for_selector(".tile img", timeout=15000)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(target))
    return target


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
