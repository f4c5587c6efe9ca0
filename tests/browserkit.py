"""One page of a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) for tests that open a
single page; any uncaught script error on it fails the test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Page, async_playwright

CHROMIUM = Path("/usr/bin/chromium")


@asynccontextmanager
async def browser_page(url: str) -> AsyncIterator[Page]:
    assert os.access(CHROMIUM, os.X_OK), "run scripts/install-browser.sh (Debian's chromium) before the browser tests"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(url)
            yield page
            assert errors == [], errors
        finally:
            await browser.close()
