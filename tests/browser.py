"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by playwright.

Never downloads a browser. Missing ``/usr/bin/chromium`` fails the test under CI and
skips it elsewhere (``require_service``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tests.conftest import require_service

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

__all__ = ["ARTIFACTS", "CHROMIUM", "chromium", "collect_page_errors"]

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).parent / "artifacts"
_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium() -> Iterator[Browser]:
    """A launched headless Chromium, closed on exit."""
    if not CHROMIUM.exists():
        require_service("chromium", f"{CHROMIUM} is missing (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def collect_page_errors(page: Page) -> list[str]:
    """Uncaught errors and console errors of ``page``, appended as they happen."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on(
        "console",
        lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    return errors
