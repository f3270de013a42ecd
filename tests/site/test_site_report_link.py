"""The header's "How this ranking was made" link: shown when the manifest names a report under
the site, absent without one, and never made from an absolute or climbing URL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from playwright.sync_api import expect

from export import site_data
from tests import site_fixture as sf
from tests.site.helpers import open_home

LINK = "#report-link"
LINK_TEXT = "How this ranking was made"
REPORT = "report/index.html"
REPORT_TITLE = "The report page"
# manifest "report" values that must not become a link
REJECTED = {
    "javascript": "javascript:alert(1)",
    "scheme-spaces": "  JaVaScRiPt:alert(1)",
    "data": "data:text/html,<script>alert(1)</script>",
    "other-host": "//evil.example/report.html",
    "absolute": "https://evil.example/report.html",
    "climbing": "../report/index.html",
    "root-path": "/report/index.html",
    "empty": "",
    "number": 42,
}


def build_site(root: Path, report: Any = None, *, with_key: bool) -> None:
    """A one-tag site whose manifest has "report" (with_key) or not."""
    sf.write_front_end(root)
    sf.write_ranking(root, "fish", sf.make_items("fish", 3))
    manifest = sf.write_index(root, [("fish", 3, 1)], per_shard=8, oov_tags=0)
    if with_key:
        manifest["report"] = report
        sf.write_file(root, site_data.MANIFEST_PATH, site_data.encode_json(manifest))
        sf.write_file(root, REPORT, f"<!doctype html><link rel=\"icon\" href=\"data:,\"><title>{REPORT_TITLE}</title><h1>report</h1>".encode())


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server, one site per folder: with-report/, without/, rejected-<name>/."""
    root = tmp_path_factory.mktemp("report-link-sites")
    server = sf.serve(root)
    build_site(root / "with-report", REPORT, with_key=True)
    build_site(root / "without", with_key=False)
    for name, value in REJECTED.items():
        build_site(root / f"rejected-{name}", value, with_key=True)
    yield server.url
    server.stop()


def test_link_shown_when_the_manifest_names_a_report(site_page: Any, sites: str) -> None:
    page = site_page
    base = sites + "with-report/"
    open_home(page, base)
    link = page.locator(f"header.top {LINK}")
    expect(link).to_be_visible()
    expect(link).to_have_text(LINK_TEXT)
    assert link.get_attribute("href") == base + REPORT
    link.click()
    expect(page).to_have_title(REPORT_TITLE)


def test_no_link_without_the_key(site_page: Any, sites: str) -> None:
    page = site_page
    open_home(page, sites + "without/")
    assert page.locator(LINK).count() == 0
    assert LINK_TEXT not in page.locator("header.top").inner_text()


@pytest.mark.parametrize("name", list(REJECTED))
def test_no_link_from_an_unsafe_report_value(site_page: Any, sites: str, name: str) -> None:
    page = site_page
    open_home(page, sites + f"rejected-{name}/")
    assert page.locator(LINK).count() == 0, json.dumps(REJECTED[name])
