"""A real browser for the dashboard tests: Debian's chromium driven by the Python `playwright`
package (`playwright install` is never run: it downloads browsers).

Without /usr/bin/chromium the browser tests skip, saying how to install it, unless
MOESERVE_REQUIRE_BROWSER=1 (set by `.ci/run`, which installs it), where they fail instead.
Screenshots go to MOESERVE_ARTIFACTS (default `.artifacts/` in the repository)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]


def artifacts() -> Path:
    """Where screenshots and measured figures are saved (created on demand)."""
    folder = Path(os.environ.get("MOESERVE_ARTIFACTS", REPO / ".artifacts")) / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)"
        if os.environ.get("MOESERVE_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()
