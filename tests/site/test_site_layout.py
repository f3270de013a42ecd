"""A phone-sized screen: no horizontal scrolling, results and the viewer fit."""

from __future__ import annotations

from playwright.sync_api import expect

from tests import site_fixture as sf
from tests.site.conftest import PHONE
from tests.site.helpers import TILE, open_query, type_query

NO_OVERFLOW = "document.documentElement.scrollWidth <= window.innerWidth"


def test_phone_viewport_has_no_horizontal_overflow(open_page, small_site):
    page = open_page(PHONE).page
    open_query(page, small_site.url, "red car")
    first = page.locator(TILE).first
    expect(first).to_be_in_viewport()
    box = first.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    assert page.evaluate(NO_OVERFLOW)

    type_query(page, "re")
    expect(page.locator("#suggestions")).to_be_visible()
    assert page.evaluate(NO_OVERFLOW)
    page.keyboard.press("Escape")

    open_query(page, small_site.url, sf.LONG_TAG)
    assert page.evaluate(NO_OVERFLOW)
    page.locator(TILE).first.click()
    dialog = page.locator("#viewer").bounding_box()
    assert dialog["x"] >= 0 and dialog["x"] + dialog["width"] <= PHONE["width"]
    assert page.evaluate(NO_OVERFLOW)
