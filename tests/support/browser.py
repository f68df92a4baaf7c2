"""A real headless Chromium (Debian's ``chromium``, driven by Playwright, which downloads
no browser of its own), and the admin page opened in it."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from playwright.async_api import Browser, Page, async_playwright

from support.builders import ADMIN_KEY

# CI installs Debian's chromium, and sets this so a missing browser fails instead of skipping.
REQUIRE = "SEAMLINE_REQUIRE_BROWSER"


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        reason = "chromium is not installed (apt-get install chromium)"
        if os.environ.get(REQUIRE):
            pytest.fail(f"{reason}, and {REQUIRE} is set")
        pytest.skip(reason)
    return found


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    path = chromium()
    # Chromium's sandbox refuses to start as root (CI runs as root).
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=path, args=args)
        try:
            yield b
        finally:
            await b.close()


@dataclass
class Seen:
    """What the page did besides showing itself: console errors, requests."""

    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)


async def open_page(browser: Browser, root: str, width: int = 1280) -> tuple[Page, Seen]:
    context = await browser.new_context(viewport={"width": width, "height": 900})
    page = await context.new_page()
    seen = Seen()
    page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen.errors.append(str(e)))
    page.on("request", lambda r: seen.urls.append(r.url))
    await page.goto(root + "/admin")
    return page, seen


async def log_in(page: Page, key: str = ADMIN_KEY) -> None:
    await page.fill("#key", key)
    await page.click("#login-form button[type=submit]")
