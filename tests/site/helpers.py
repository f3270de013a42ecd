"""Small page helpers shared by the site tests."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

TILE = "#grid button.tile"


def query_url(base: str, q: str | None = None) -> str:
    return base + (f"?{urlencode({'q': q})}" if q is not None else "")


def open_query(page: Any, base: str, q: str) -> None:
    page.goto(query_url(base, q))
    page.wait_for_selector(TILE)


def open_home(page: Any, base: str) -> None:
    page.goto(base)
    # the header fills in once the manifest is in: the page is ready for typing
    page.wait_for_function("document.getElementById('collection').textContent.includes('images')")


def type_query(page: Any, text: str) -> None:
    box = page.locator("#q")
    box.fill("")
    box.press_sequentially(text)


def tiles(page: Any) -> list[tuple[int, float | None]]:
    """(rank, score or None) of every grid tile, in DOM order (the score is the number the tile
    keeps behind its label)."""
    rows = page.eval_on_selector_all(
        TILE,
        "els => els.map(e => [e.querySelector('.rank').textContent,"
        " e.querySelector('.score') ? e.querySelector('.score').dataset.score : null])",
    )
    return [(int(r.lstrip("#")), None if s is None else float(s)) for r, s in rows]


def suggestions(page: Any) -> list[tuple[str, str]]:
    """(tag, count text) of every option in the listbox, in order."""
    rows = page.eval_on_selector_all(
        "#suggestions [role=option]",
        "els => els.map(e => [e.querySelector('.tag').textContent, e.querySelector('.count').textContent])",
    )
    return [tuple(row) for row in rows]


def wait_tile_count(page: Any, n: int) -> None:
    page.wait_for_function(f"document.querySelectorAll('{TILE}').length === {n}")


def offered(page: Any) -> list[tuple[str, str]]:
    """(tag, why) of the one list of tags offered for a query that is no tag, in order."""
    rows = page.eval_on_selector_all("#related li", "els => els.map(e => [e.querySelector('a').textContent, e.dataset.why])")
    return [tuple(row) for row in rows]
