"""The front end's pure helpers (site/js/text.js), run in the browser itself: one page, each
table evaluated in one call."""

from __future__ import annotations

from typing import Any

import pytest

from model.tags import normalize_tag

CALL_ALL = """async ([fn, rows]) => {
  const mod = await import('./js/text.js');
  return rows.map((args) => mod[fn](...args));
}"""

SAFE_URL_CASES = [
    ("thumbs/ab/x.jpg", True, "{root}thumbs/ab/x.jpg"),
    ("./thumbs/ab/x.jpg", True, "{root}thumbs/ab/x.jpg"),
    ("thumbs/ab/x.jpg", False, None),  # a source link must be absolute
    ("https://cdn.example/x.jpg", False, "https://cdn.example/x.jpg"),
    ("HTTP://cdn.example/x.jpg", True, "http://cdn.example/x.jpg"),
    ("javascript:alert(1)", True, None),
    ("  JaVaScRiPt:alert(1)", True, None),
    ("java\tscript:alert(1)", True, None),
    ("data:text/html,<b>x</b>", True, None),
    ("data:image/png;base64,AAAA", True, None),
    ("vbscript:x", True, None),
    ("//evil.example/x.jpg", True, None),
    ("/\\evil.example/x.jpg", True, None),
    ("\\\\evil.example\\x.jpg", True, None),
    ("/srv/crawl/x.jpg", True, None),
    ("../outside.jpg", True, None),
    ("thumbs/../../outside.jpg", True, None),
    ("%2e%2E/outside.jpg", True, None),
    ("gs://bucket/x.jpg", True, None),
    ("file:///etc/passwd", True, None),
    ("", True, None),
    (None, True, None),
    (42, True, None),
]


@pytest.fixture
def call_all(site_page, small_site):
    site_page.goto(small_site.url)

    def run(fn: str, rows: list[list[Any]]) -> list[Any]:
        return site_page.evaluate(CALL_ALL, [fn, rows])

    return run


def test_normalize_tag_agrees_with_python(call_all):
    raws = ["  Red\tCAR  ", "ＣＯＮ", "Straße", "ΌΣΟΣ", "Café  au\u00a0lait", "ﬁsh", "①②", "<IMG SRC=x>"]
    assert call_all("normalizeTag", [[r] for r in raws]) == [normalize_tag(r) for r in raws]


def test_safe_url_lets_through_only_http_and_paths_under_the_root(call_all, small_site):
    got = call_all("safeUrl", [[raw, small_site.url, rel] for raw, rel, _ in SAFE_URL_CASES])
    want = [exp.format(root=small_site.url) if exp else None for _, _, exp in SAFE_URL_CASES]
    assert [(c[0], g) for c, g in zip(SAFE_URL_CASES, got)] == [(c[0], w) for c, w in zip(SAFE_URL_CASES, want)]


def test_edit_distance_counts_transpositions_and_stops_early(call_all):
    cases = [("red cat", "red car", 2, 1), ("dgo", "dog", 1, 1), ("kitten", "sitting", 3, 3), ("abc", "xyz12", 2, 3)]
    assert call_all("editDistance", [list(c[:3]) for c in cases]) == [c[3] for c in cases]


def test_the_hub_refuses_event_names_outside_the_closed_set(site_page, small_site):
    site_page.goto(small_site.url)
    got = site_page.evaluate(
        """async () => {
      const { createHub } = await import('./js/hub.js');
      const { EVENTS } = await import('./js/events.js');
      const hub = createHub();
      const seen = [];
      hub.on(EVENTS.SEARCH, (d) => seen.push(d.text));
      hub.emit(EVENTS.SEARCH, { text: 'cat' });
      const refused = [];
      for (const call of [() => hub.on('serach', () => {}), () => hub.emit('results:pgae', {})]) {
        try { call(); refused.push(false); } catch (err) { refused.push(String(err.message).includes('unknown event')); }
      }
      return { seen, refused };
    }"""
    )
    assert got == {"seen": ["cat"], "refused": [True, True]}


def test_every_event_the_front_end_uses_is_in_the_closed_set():
    """No string-literal event names outside events.js (each component names events through it)."""
    import re
    from pathlib import Path

    js = Path(__file__).resolve().parents[2] / "site" / "js"
    for path in js.glob("*.js"):
        assert not re.search(r"hub\.(on|emit)\(\s*['\"`]", path.read_text()), path.name
