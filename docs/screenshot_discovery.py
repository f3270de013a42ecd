"""Regenerate docs/home.png, docs/related.png and docs/viewer.png from a built demo site.

    .venv/bin/python docs/screenshot_discovery.py demo-out/site [WORD] [TAG]

Serves the folder on 127.0.0.1, opens it in Debian's chromium through Playwright and saves the
home page, the answer to a word that is not a tag (default: the demo's `automobile`) and the
viewer with "more like this" (default: the second image of `fish`). Each is saved as a small
palette PNG.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from PIL import Image
from screenshot import site_page  # docs/screenshot.py: this folder is on sys.path when run as a script

VIEWPORT = {"width": 1100, "height": 720}
COLOURS = 128


def save_small(png: bytes, target: Path) -> Path:
    """The screenshot as a palette PNG (a few hundred KB at most instead of a few MB)."""
    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(COLOURS, method=Image.Quantize.MEDIANCUT)
    img.save(target, optimize=True)
    return target


def main(site_dir: str, word: str = "automobile", tag: str = "fish") -> list[Path]:
    docs = Path(__file__).resolve().parent
    saved = []
    with site_page(site_dir, VIEWPORT) as (page, base):
        page.goto(base)
        page.wait_for_selector("#popular .pop img", timeout=15000)
        page.locator("#az-letters button[data-letter=f]").click()
        page.wait_for_selector("#az-list a")
        page.wait_for_load_state("networkidle")
        saved.append(save_small(page.screenshot(), docs / "home.png"))

        page.goto(f"{base}?q={word}")
        page.wait_for_selector(".tile img", timeout=15000)
        page.wait_for_load_state("networkidle")
        saved.append(save_small(page.screenshot(), docs / "related.png"))

        page.goto(f"{base}?q={tag}")
        page.wait_for_selector(".tile img", timeout=15000)
        page.locator(".tile").nth(1).click()
        page.wait_for_selector("#viewer-similar .mini img")
        page.wait_for_load_state("networkidle")
        page.wait_for_function("(document.querySelector('#viewer-figure img')?.currentSrc || '').includes('/views/')")
        saved.append(save_small(page.screenshot(), docs / "viewer.png"))
    return saved


if __name__ == "__main__":
    for path in main(*sys.argv[1:]):
        print(path, path.stat().st_size)
