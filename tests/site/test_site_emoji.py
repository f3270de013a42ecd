"""An emoji tag (one emoji sequence, joined by ZERO WIDTH JOINERs) is found from the search box:
the page keeps the joiners inside an emoji sequence exactly as Python's normalize_tag does."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from playwright.sync_api import expect

from model.tags import normalize_tag
from tests import site_fixture as sf
from tests.site.helpers import open_home, type_query, wait_tile_count

EMOJI = "👩🏽\u200d💻"  # woman, skin tone, ZWJ, laptop
COUNTS = {EMOJI: 3, "cat": 2}
CASES = [EMOJI, "❤️\u200d🔥", "🐱\u200b\u200d🐶", "🐱\u200d", "\u200d🐱", "a\u200db", "🇫🇷", "👍🏿\u200d👍", "Cat\u200d🐱"]

CALL_ALL = """async (rows) => {
  const mod = await import('./js/text.js');
  return rows.map((r) => mod.normalizeTag(r));
}"""


@pytest.fixture(scope="module")
def emoji_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sf.SiteServer]:
    def build(root: Path, _url: str) -> None:
        sf.write_front_end(root)
        for tag, n in COUNTS.items():
            sf.write_ranking(root, tag, sf.make_items(tag, n))
        sf.write_index(root, [(tag, n, 1) for tag, n in COUNTS.items()], per_shard=sf.SMALL_PER_SHARD, oov_tags=1)

    server, _ = sf.start_site(tmp_path_factory.mktemp("emoji-site"), build)
    yield server
    server.stop()


def test_the_page_keeps_the_joiners_of_an_emoji_sequence_as_python_does(open_page: Any, emoji_site: sf.SiteServer):
    page = open_page().page
    page.goto(emoji_site.url)
    got = page.evaluate(CALL_ALL, CASES)
    assert got == [normalize_tag(c) for c in CASES]
    assert got[0] == EMOJI


def test_typing_an_emoji_tag_finds_it(open_page: Any, emoji_site: sf.SiteServer):
    page = open_page().page
    open_home(page, emoji_site.url)
    type_query(page, EMOJI)
    page.keyboard.press("Enter")
    expect(page.locator("#results-title")).to_have_text(f"“{EMOJI}”")
    wait_tile_count(page, COUNTS[EMOJI])


