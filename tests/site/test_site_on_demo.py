"""The site as `imgsearch demo` publishes it (real pipeline output), in Chromium."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

import pyarrow.compute as pc
import pytest

from model import schema, storage
from pipelines.serve import make_server
from tests.site.helpers import TILE, open_query, tiles


@pytest.fixture(scope="module")
def demo_site(small_demo_run: Path) -> Iterator[str]:
    server = make_server(str(small_demo_run / schema.SITE_DIR), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _ranking(out: Path, tag: str) -> list[dict]:
    table = storage.read_parquet_dir(str(out / schema.RANKINGS_DIR))
    rows = table.filter(pc.equal(table.column(schema.TAG), tag)).sort_by(schema.RANK).to_pylist()
    assert rows, tag
    return rows


def test_a_demo_tag_shows_its_ranking_with_thumbnails(open_page: Any, demo_site: str, small_demo_run: Path):
    page = open_page().page
    open_query(page, demo_site, "fish")
    expected = _ranking(small_demo_run, "fish")
    shown = tiles(page)
    assert [r for r, _ in shown] == [row[schema.RANK] for row in expected[: len(shown)]]
    assert [s for _, s in shown] == pytest.approx([row[schema.SCORE] for row in expected[: len(shown)]], abs=1e-3)
    page.wait_for_function(
        f"[...document.querySelectorAll('{TILE} img')].every(i => i.complete && i.naturalWidth > 0)"
    )


def test_the_demo_oov_tag_is_ranked_without_the_matcher(open_page: Any, demo_site: str, small_demo_run: Path):
    """hourglass has no word vector: its images are ranked by the mean feature and their neighbours."""
    page = open_page().page
    open_query(page, demo_site, "hourglass")
    expected = _ranking(small_demo_run, "hourglass")
    assert all(row[schema.SCORE] is not None and row[schema.MATCHER] is None for row in expected)
    shown = tiles(page)
    assert [r for r, _ in shown] == [row[schema.RANK] for row in expected[: len(shown)]]
    assert all(s is not None for _, s in shown)
    assert "index" not in page.locator("main").inner_text().lower()


def test_the_demo_viewer_shows_the_rendition_rank_made(open_page: Any, demo_site: str):
    page = open_page().page
    open_query(page, demo_site, "fish")
    page.locator(TILE).first.focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        "(() => { const i = document.querySelector('#viewer-figure img');"
        " return i && i.currentSrc.includes('/views/') && i.complete && i.naturalWidth > 0; })()"
    )


def test_the_header_links_to_the_report_once_and_the_report_links_back(open_page: Any, demo_site: str):
    page = open_page().page
    page.goto(demo_site)
    page.wait_for_selector("#report-link")
    assert page.get_by_role("link", name="How this ranking was made").count() == 1
    page.locator("#report-link").click()
    page.wait_for_selector("text=← Back to the search")
    page.get_by_role("link", name="← Back to the search").click()
    page.wait_for_selector("#popular .pop")
    assert page.url.rstrip("/") == demo_site.rstrip("/")
