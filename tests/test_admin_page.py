"""The admin page in a real headless Chromium (Debian's, driven by Playwright) against a
real seamline and scripted upstreams: what an operator sees and does."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import aiohttp
import demo_admin
from playwright.async_api import Browser, expect

from support.admin import (
    CLIENT_KEYS,
    MakePair,
    Pair,
    account_rows,
    answer,
    chat,
    fingerprint,
    rate_limit,
)
from support.browser import chromium, log_in, open_page
from support.builders import ADMIN_KEY, chunk


async def test_the_page_loads_with_no_console_error_and_shows_the_accounts(
    browser: Browser, pair: MakePair
) -> None:
    p = await pair()
    page, seen = await open_page(browser, p.root)
    await expect(page.locator("#login")).to_be_visible()
    await log_in(page)
    for name in ("A", "B"):
        state = page.locator(f'#accounts tr[data-account="{name}"] .state')
        # Words and a symbol, not colour alone.
        await expect(state).to_have_text("\u2713 available")
    await expect(page.locator("#status")).to_contain_text("Updated")
    await page.wait_for_timeout(2500)  # a refresh or more
    assert seen.errors == []
    assert seen.urls and all(u.startswith(p.root + "/admin") for u in seen.urls), seen.urls


async def test_a_429_shows_its_countdown_and_reset_clears_it_and_the_next_request_goes_there(
    browser: Browser, pair: MakePair
) -> None:
    p = await pair()
    p.a.scripts.clear()
    rate_limit(p.a)  # Retry-After: 600
    answer(p.a, "from A")
    await chat(p.base)  # A answers 429, B takes the request
    page, seen = await open_page(browser, p.root)
    await log_in(page)
    a = page.locator('#accounts tr[data-account="A"]')
    await expect(a.locator(".state")).to_have_text("\u25f7 rate limited")
    clock = a.locator(".countdown")
    await expect(clock).to_have_text(re.compile(r"^cooldown (10:00|9:5\d)$"))
    first = await clock.text_content()
    await expect(clock).not_to_have_text(first or "", timeout=3000)  # it counts down

    await a.get_by_role("button", name="Reset A").click()
    await expect(a.locator(".state")).to_have_text("\u2713 available")
    await expect(a.locator(".countdown")).to_have_count(0)
    await expect(page.locator("#notice")).to_have_text("A: reset.")
    assert (await account_rows(p.root))["A"]["cooling_down_until"] is None
    assert (await chat(p.base)).json()["choices"][0]["message"]["content"] == "from A"
    assert seen.errors == []


async def test_a_wrong_admin_key_shows_a_clear_message_and_asks_again(
    browser: Browser, pair: MakePair
) -> None:
    p = await pair()
    page, _ = await open_page(browser, p.root)
    await log_in(page, "not-the-admin-key")
    error = page.locator("#login-error")
    await expect(error).to_be_visible()
    await expect(error).to_have_text(
        "The admin key was refused (401). Check server.admin_key and enter it again."
    )
    await expect(page.locator("#board")).to_be_hidden()
    assert await page.evaluate("sessionStorage.length") == 0
    await log_in(page)  # the right one now
    await expect(page.locator("#board")).to_be_visible()
    await expect(error).to_be_hidden()


async def test_the_key_is_asked_once_and_kept_only_in_the_tabs_session(
    browser: Browser, pair: MakePair
) -> None:
    p = await pair()
    page, _ = await open_page(browser, p.root)
    await log_in(page)
    await expect(page.locator("#board")).to_be_visible()
    await page.reload()  # the same tab: not asked again
    await expect(page.locator("#board")).to_be_visible()
    await expect(page.locator("#login")).to_be_hidden()
    stored = await page.evaluate(
        "[sessionStorage.getItem('seamline-admin-key'), localStorage.length, document.cookie]"
    )
    assert stored == [ADMIN_KEY, 0, ""]
    other, _ = await open_page(browser, p.root)  # another browser session: asked
    await expect(other.locator("#login")).to_be_visible()
    await page.click("#forget")
    await expect(page.locator("#login")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0


async def test_disable_with_a_reason_then_enable_from_the_page(
    browser: Browser, pair: MakePair
) -> None:
    p = await pair()
    page, seen = await open_page(browser, p.root)
    await log_in(page)
    b = page.locator('#accounts tr[data-account="B"]')
    await b.get_by_role("button", name="Disable B").click()
    dialog = page.locator("#disable-dialog")
    await expect(dialog).to_be_visible()
    await page.fill("#reason", "provider down")
    await page.click("#disable-confirm")
    await expect(b.locator(".state")).to_contain_text("\u2298 disabled")
    await expect(b.locator(".reason")).to_have_text("by an operator: provider down")
    assert (await account_rows(p.root))["B"]["state"] == "disabled"

    await b.get_by_role("button", name="Enable B").click()
    await expect(b.locator(".state")).to_have_text("\u2713 available")
    await expect(b.get_by_role("button", name="Disable B")).to_be_visible()
    assert seen.errors == []


async def test_in_a_narrow_window_rows_are_labelled_cards_and_nothing_overflows(
    browser: Browser, pair: MakePair
) -> None:
    p = await pair()
    page, seen = await open_page(browser, p.root, width=360)
    await log_in(page)
    state = page.locator('#accounts tr[data-account="A"] td[data-label="State"]')
    await expect(state).to_be_visible()
    label = await state.evaluate("td => getComputedStyle(td, '::before').content")
    assert label == '"State"'
    wide = await page.evaluate("document.documentElement.scrollWidth")
    assert wide <= 360
    reset = page.get_by_role("button", name="Reset A")
    box = await reset.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360
    assert seen.errors == []


async def test_streams_in_flight_and_usage_per_client_key_show_and_refresh(
    browser: Browser, pair: MakePair
) -> None:
    p: Pair = await pair()
    p.a.scripts.clear()
    p.a.script(b"data: " + chunk("hello") + b"\n\n", ending="hang")
    page, seen = await open_page(browser, p.root)
    await log_in(page)
    await expect(page.locator("#no-streams")).to_be_visible()
    await expect(page.locator("#no-usage")).to_be_visible()
    body = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]}'
    headers = {
        "Authorization": f"Bearer {CLIENT_KEYS[1]}",
        "X-Request-ID": "req-on-the-page",
        "Content-Type": "application/json",
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(p.base + "/chat/completions", data=body, headers=headers) as r,
    ):
        await r.content.readany()  # the first event is out: the stream is in flight
        stream = page.locator('#streams tr[data-request="req-on-the-page"]')
        await expect(stream).to_be_visible(timeout=5000)  # the next refresh shows it
        await expect(stream.locator('td[data-label="Account"]')).to_have_text("A")
        await expect(stream.locator('td[data-label="Client key"]')).to_have_text(
            fingerprint(CLIENT_KEYS[1])
        )
        await expect(stream.locator('td[data-label="Events"]')).to_have_text("1")
    await expect(stream).to_have_count(0, timeout=5000)
    client = page.locator(f'#usage tr[data-client="{fingerprint(CLIENT_KEYS[1])}"]')
    await expect(client.locator('td[data-label="Requests today"]')).to_have_text("1")
    html = await page.content()
    assert CLIENT_KEYS[1] not in html and "hello" not in html
    assert seen.errors == []


async def test_scripts_demo_admin_writes_the_screenshot_of_the_readme(tmp_path: Path) -> None:
    chromium()
    shot = tmp_path / "admin.png"
    await demo_admin.admin_screenshot(str(shot))
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    width, height = struct.unpack(">II", data[16:24])
    assert width == 1280 and height >= 700
