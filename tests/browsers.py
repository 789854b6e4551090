"""A real headless Chromium for the browser tests, driven by Playwright.

Playwright does not download a browser here: it launches Debian's
``chromium-headless-shell`` package (``apt-get install -y
--no-install-recommends chromium-headless-shell``), found at
``$STREAMKIT_CHROMIUM`` (if set, only there),
``/usr/lib/chromium/chromium-headless-shell`` or on the PATH. A module's
tests share one browser; each test opens its own context.

A missing browser (or Playwright) skips the tests that need it, unless the
environment sets ``STREAMKIT_REQUIRE_SERVERS=1`` (as ``.ci/run`` does): then
it is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.servers import REQUIRE_SERVERS

if TYPE_CHECKING:
    from collections.abc import Iterator

    from playwright.sync_api import Browser, BrowserContext

_DEBIAN = Path("/usr/lib/chromium/chromium-headless-shell")
"""Where Debian's ``chromium-headless-shell`` puts the browser (``dpkg -L``)."""


def chromium_binary() -> Path | None:
    """The headless Chromium to launch, if there is one."""
    given = os.environ.get("STREAMKIT_CHROMIUM")
    if given:  # the one to use, and no other
        candidates = [Path(given)]
    else:
        candidates = [_DEBIAN]
        on_path = shutil.which("chromium-headless-shell")
        if on_path is not None:
            candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _unavailable(reason: str) -> None:
    if REQUIRE_SERVERS:
        pytest.fail(f"headless Chromium is required (STREAMKIT_REQUIRE_SERVERS=1) but {reason}")
    pytest.skip(f"headless Chromium unavailable: {reason}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless Chromium for the tests of one module.

    Not for the session: while Playwright's synchronous API is open, an event
    loop runs in the main thread, and the async tests of other modules could
    not start their own.
    """
    if importlib.util.find_spec("playwright") is None:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    binary = chromium_binary()
    if binary is None:
        given = os.environ.get("STREAMKIT_CHROMIUM")
        _unavailable(
            f"STREAMKIT_CHROMIUM={given} is not an executable file"
            if given
            else "no chromium-headless-shell (apt-get install -y --no-install-recommends "
            "chromium-headless-shell, or set STREAMKIT_CHROMIUM)"
        )
        raise AssertionError("unreachable")  # pragma: no cover
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=binary)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser context (its own pages, cookies and cache) for one test."""
    opened = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield opened
    finally:
        opened.close()
