"""Debian's Chromium under Playwright, for the browser tests of every app.

Playwright's own browser download does not work on our machines; the tests drive the
distribution's /usr/bin/chromium (installed by scripts/test.sh) and fail, rather than
skip, when it is missing.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings

# Playwright's sync API runs an event loop in the test's thread; the ORM calls the tests
# make between browser steps are still plain synchronous calls.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling out, and this machine
# has no network beyond loopback.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"


@contextmanager
def chromium_launched():
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium package "
            "(Playwright's own browser download does not work here)."
        )
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def drawn_pixels(page, canvas_id: str) -> int:
    """How many pixels of a canvas are not transparent: > 0 once a chart has drawn."""
    return page.evaluate(
        """(id) => {
            const canvas = document.getElementById(id);
            const pixels = canvas.getContext("2d")
                .getImageData(0, 0, canvas.width, canvas.height).data;
            let drawn = 0;
            for (let i = 3; i < pixels.length; i += 4) { if (pixels[i] !== 0) drawn++; }
            return drawn;
        }""",
        canvas_id,
    )
