"""Regenerate docs/screenshot.png from a built demo site (`make demo` first).

    .venv/bin/python docs/screenshot.py demo-out/site [QUERY]

Serves the folder on 127.0.0.1, opens it in Debian's chromium through Playwright and saves the
results grid for QUERY (default: the demo's `fish`).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from playwright.sync_api import sync_playwright

from pipelines.serve import make_server

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]


def main(site_dir: str, query: str = "fish") -> Path:
    server = make_server(site_dir, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = Path(__file__).resolve().parent / "screenshot.png"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/?q={query}")
            page.wait_for_selector(".tile img", timeout=15000)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(target))
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return target


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
