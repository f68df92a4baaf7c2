"""scripts/demo --admin: the admin page over a simulated pool in every state, as a
screenshot (docs/admin.png, the README's), taken in Debian's chromium through Playwright.

Five accounts whose simulated upstreams answer, rate-limit, run out of quota, fail with
500s and (one) answer but are disabled by the operator; two client keys' traffic; a
stream in flight while the page is shot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from typing import Any

import aiohttp
import openai
from aiohttp import web
from broken_upstreams import WORDS, chunk, completion_json

from proxy import config as cfg
from proxy.gateway.app import start

ADMIN_KEY = "demo-admin-key"
# Accounts of the simulated pool, and what each one's upstream does.
POOL = {
    "dashscope-1": "answers",
    "dashscope-2": "429 with Retry-After: 840",
    "deepseek-1": "out of quota",
    "vllm-local": "500s, until its circuit opens",
    "openrouter-1": "answers (disabled by the operator)",
}
CLIENTS = ("sk-team-search-5e1f0c", "sk-team-support-9a7d21")


async def pool_upstream(request: web.Request) -> web.StreamResponse:
    """Each account's upstream, by its path: /NAME/v1/chat/completions."""
    name = request.match_info["name"]
    body = await request.json()
    if name == "dashscope-2":
        return web.json_response(
            {"error": {"message": "Requests rate limit exceeded", "code": "Throttling"}},
            status=429,
            headers={"Retry-After": "840"},
        )
    if name == "deepseek-1":
        error = {"message": "You exceeded your current quota", "code": "insufficient_quota"}
        return web.json_response({"error": error}, status=429)
    if name == "vllm-local":
        return web.json_response({"error": {"message": "CUDA out of memory"}}, status=500)
    if body.get("stream"):  # a long answer, still streaming while the page is shot
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionResetError):  # the demo ends it midway
            for word in WORDS * 60:
                await resp.write(b"data: " + chunk(word) + b"\n\n")
                await asyncio.sleep(0.2)
        return resp
    answer = json.loads(completion_json())
    answer["usage"] = {"prompt_tokens": 812, "completion_tokens": 233, "total_tokens": 1045}
    return web.json_response(answer)


async def admin_screenshot(path: str, width: int = 1280) -> None:
    """A seamline over the simulated pool, traffic from two client keys, an operator's
    disable, a stream in flight: the admin page as an operator sees it, saved at ``path``."""
    from playwright.async_api import async_playwright

    runner, upstream = await serve("/{name}/v1/chat/completions", pool_upstream)
    text = f'[server]\nadmin_key = "{ADMIN_KEY}"\napi_keys = {json.dumps(list(CLIENTS))}\n'
    text += '[state]\npath = ":memory:"\n'
    for name in POOL:
        text += f'[[accounts]]\nname = "{name}"\nbase_url = "{upstream}/{name}/v1"\n'
        text += f'api_key = "sk-demo-{name}"\nquota_reset = "00:00 Asia/Shanghai"\n'
    proxy_runner = await start(cfg.parse(text, "demo", {}), "127.0.0.1", 0)
    root = f"http://127.0.0.1:{proxy_runner.addresses[0][1]}"
    clients = [openai.AsyncOpenAI(base_url=root + "/v1", api_key=k, max_retries=0) for k in CLIENTS]
    streaming: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession() as s:
            await s.post(
                root + "/admin/accounts/openrouter-1/disable",
                json={"reason": "key rotated, the new one is pending"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
        for i in range(14):  # round robin: each failing account fails over to dashscope-1
            prompt: Any = [{"role": "user", "content": f"question {i}"}]
            await clients[i % 3 == 0].chat.completions.create(model="qwen-plus", messages=prompt)

        async def stream() -> None:
            prompt: Any = [{"role": "user", "content": "a long answer"}]
            s = await clients[0].chat.completions.create(
                model="qwen-max", messages=prompt, stream=True
            )
            async for _ in s:
                pass

        streaming = asyncio.get_running_loop().create_task(stream())
        async with async_playwright() as p:
            args = ["--no-sandbox"] if os.geteuid() == 0 else []  # as root, as CI runs
            browser = await p.chromium.launch(executable_path=shutil.which("chromium"), args=args)
            page = await browser.new_page(viewport={"width": width, "height": 860})
            await page.goto(root + "/admin")
            await page.fill("#key", ADMIN_KEY)
            await page.click("#login-form button[type=submit]")
            await page.wait_for_selector("#streams tr[data-request]")
            await page.wait_for_timeout(2500)  # a refresh or two: the stream's counts grow
            await page.screenshot(path=path, full_page=True)
            await browser.close()
        print(f"wrote {path}")
    finally:
        if streaming is not None:
            streaming.cancel()
            with contextlib.suppress(asyncio.CancelledError, openai.APIError):
                await streaming
        for c in clients:
            await c.close()
        await proxy_runner.cleanup()
        await runner.cleanup()


async def serve(path: str, handler: Any) -> tuple[web.AppRunner, str]:
    """A simulated upstream answering POSTs to ``path`` on a free port, and its root URL."""
    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"
