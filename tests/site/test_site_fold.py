"""The page folds a typed query exactly as Python folded the tags (model.tags.normalize_tag):
the casefold exceptions JavaScript's toLowerCase gets wrong come from the generated fold table
(site/js/fold.js), and invisible format characters are removed on both sides."""

from __future__ import annotations

import sys
import unicodedata
from pathlib import Path
from typing import Any, Iterator

import pytest
from playwright.sync_api import expect

from model import tags
from model.tags import normalize_tag
from tests import site_fixture as sf
from tests.site.helpers import open_home, type_query, wait_tile_count

REPO = Path(__file__).resolve().parents[2]
FOLDED_TAG = "αι"  # what Python stores for a crawled "ᾳ", "ΑΙ" or "αι"
FOLD_COUNTS = {FOLDED_TAG: 3, "strasse": 2, "cat": 4}

CALL_ALL = """async (rows) => {
  const mod = await import('./js/text.js');
  return rows.map((r) => mod.normalizeTag(r));
}"""


def _assigned(ch: str) -> bool:
    # characters this Python does not know (newer Unicode) never reach a tag: index rejects Cn
    return unicodedata.category(ch) != "Cn"


def fold_cases() -> list[str]:
    """Every character whose casefold is not itself, every format character, and a few words."""
    chars = [
        chr(cp)
        for cp in range(sys.maxunicode + 1)
        if not 0xD800 <= cp <= 0xDFFF and _assigned(chr(cp)) and (chr(cp).casefold() != chr(cp) or unicodedata.category(chr(cp)) == "Cf")
    ]
    words = ["ᾳ", "ΣΑΣ ΟΔΟΣ", "Straße", "ﬀ", "ǰ", "İstanbul", "c\u200bat", "\ufeffcat", "ca\u00adt", "Ｃａｔ"]
    return words + chars


@pytest.fixture(scope="module")
def fold_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sf.SiteServer]:
    def build(root: Path, _url: str) -> None:
        sf.write_front_end(root)
        for tag, n in FOLD_COUNTS.items():
            sf.write_ranking(root, tag, sf.make_items(tag, n))
        entries = [(tag, n, 1) for tag, n in FOLD_COUNTS.items()]
        sf.write_index(root, entries, per_shard=sf.SMALL_PER_SHARD, oov_tags=0)

    server, _ = sf.start_site(tmp_path_factory.mktemp("fold-site"), build)
    yield server
    server.stop()


def test_the_fold_table_is_what_this_python_generates():
    # regenerate with `python -m model.tags` when Python's Unicode version changes
    assert (REPO / tags.FOLD_JS_PATH).read_text(encoding="ascii") == tags.fold_module_source()


def test_the_page_folds_every_casefold_exception_as_python_does(open_page: Any, fold_site: sf.SiteServer):
    page = open_page().page
    page.goto(fold_site.url)
    cases = fold_cases()
    got = page.evaluate(CALL_ALL, cases)
    wrong = [(c, g, normalize_tag(c)) for c, g in zip(cases, got) if g != normalize_tag(c)]
    assert not wrong, wrong[:20]
    assert normalize_tag("ᾳ") == FOLDED_TAG


def test_typing_a_character_python_folds_differently_finds_the_tag(open_page: Any, fold_site: sf.SiteServer):
    page = open_page().page
    open_home(page, fold_site.url)
    type_query(page, "ᾳ")
    page.keyboard.press("Enter")
    expect(page.locator("#results-title")).to_have_text(f"“{FOLDED_TAG}”")
    wait_tile_count(page, FOLD_COUNTS[FOLDED_TAG])
    # a zero-width space typed (or pasted) into a query is as invisible as in the tags
    type_query(page, "stra\u200bße")
    page.keyboard.press("Enter")
    expect(page.locator("#results-title")).to_have_text("“strasse”")
