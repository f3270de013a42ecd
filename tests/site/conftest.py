"""Browser fixtures for the site tests: one headless Debian chromium per session, the generated
sites served from 127.0.0.1, and pages that fail their test on any console error, page error
or JavaScript dialog."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pytest

from tests import site_fixture

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}  # the phone
TIMEOUT_MS = 10_000


@dataclass
class Watched:
    """A page plus everything it said that a person must never see."""

    page: Any
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (`make chromium` installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # never Playwright's own browser download: it cannot work offline
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def small_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[site_fixture.SmallSite]:
    server, (manifest, counts) = site_fixture.start_site(
        tmp_path_factory.mktemp("small-site"), site_fixture.build_small_site
    )
    yield site_fixture.SmallSite(server, manifest, counts)
    server.stop()


@pytest.fixture(scope="session")
def full_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[site_fixture.FullShapeSite]:
    server, built = site_fixture.start_site(
        tmp_path_factory.mktemp("full-site"), lambda root, _url: site_fixture.build_full_shape_site(root)
    )
    yield site_fixture.FullShapeSite(server, *built)
    server.stop()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., Watched]]:
    """open_page(viewport=DESKTOP) -> Watched: a page in a fresh context (empty cache).

    After the test, every page must have logged no console error, thrown no page error and
    opened no alert/confirm/prompt.
    """
    contexts = []
    watched: list[Watched] = []

    def make(viewport: dict[str, int] = DESKTOP) -> Watched:
        ctx = browser.new_context(viewport=viewport)
        ctx.set_default_timeout(TIMEOUT_MS)
        contexts.append(ctx)
        page = ctx.new_page()
        w = Watched(page)
        page.on("console", lambda msg: msg.type == "error" and w.errors.append(f"console: {msg.text}"))
        page.on("pageerror", lambda exc: w.errors.append(f"pageerror: {exc}"))

        def on_dialog(dialog: Any) -> None:
            w.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        watched.append(w)
        return w

    yield make
    for ctx in contexts:
        ctx.close()
    problems = [p for w in watched for p in w.errors + w.dialogs]
    assert not problems, problems


@pytest.fixture
def site_page(open_page: Callable[..., Watched], small_site: site_fixture.SmallSite) -> Any:
    """A desktop page on the small site (not yet navigated)."""
    small_site.server.delays.clear()
    return open_page().page
