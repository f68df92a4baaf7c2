"""See the point of seamline in seconds: a broken upstream, streamed directly and through it.

Starts a local simulated upstream that breaks the OpenAI stream contract in the ways
real providers do, starts seamline in front of it, then streams the same request with
the openai client directly and through seamline, and prints what each yields.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import openai
from aiohttp import web

from proxy import config as cfg
from proxy.gateway.app import start

WORDS = ["The ", "quick ", "brown ", "fox ", "jumps."]


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    obj = {
        "id": "demo",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "demo",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return json.dumps(obj, ensure_ascii=False).encode()


def events(sep: bytes = b"\n\n", done: bool = True) -> bytes:
    body = b"".join(b"data: " + chunk(w) + sep for w in WORDS)
    body += b"data: " + chunk(finish="stop") + sep
    return body + (b"data: [DONE]" + sep if done else b"")


def glued() -> bytes:
    lines = [b"data: " + chunk(w) for w in WORDS] + [b"data: " + chunk(finish="stop")]
    return b"\n".join(lines[:3]) + b"\n\n" + b"\n\n".join(lines[3:]) + b"\n\ndata: [DONE]\n\n"


def completion_json() -> bytes:
    return json.dumps(
        {
            "id": "demo",
            "object": "chat.completion",
            "created": 0,
            "model": "demo",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(WORDS)},
                    "finish_reason": "stop",
                }
            ],
        }
    ).encode()


# name -> (what the upstream does, content type, its bytes)
SCENARIOS: dict[str, tuple[str, str, bytes]] = {
    "bom": ("a UTF-8 BOM before the first event", "text/event-stream", b"\xef\xbb\xbf" + events()),
    "glued": ("two data: lines with no blank line between", "text/event-stream", glued()),
    "ping": (
        "`event: ping` blocks with no data",
        "text/event-stream",
        b"event: ping\n\n" + events(),
    ),
    "keepalive": ("empty `data:` keep-alives", "text/event-stream", b"data:\n\n" + events()),
    "retry": ("a `retry:` block", "text/event-stream", b"retry: 3000\n\n" + events()),
    "id-comment": (
        "an `id:` then a comment block",
        "text/event-stream",
        b"id: 1\n" + events().replace(b"\n\n", b"\n\n: hi\n\n", 1),
    ),
    "bad-utf8": (
        "a byte that is not UTF-8",
        "text/event-stream",
        events().replace(b"fox", b"f\xffx", 1),
    ),
    "json-body": (
        "a JSON completion where a stream was asked",
        "application/json",
        completion_json(),
    ),
    "no-done": ("no [DONE] after the finish_reason", "text/event-stream", events(done=False)),
    "truncated": (
        "the stream stops mid-answer",
        "text/event-stream",
        b"".join(b"data: " + chunk(w) + b"\n\n" for w in WORDS[:2]),
    ),
}


async def upstream_handler(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    _, ctype, raw = SCENARIOS[body["model"]]
    resp = web.StreamResponse(headers={"Content-Type": ctype})
    await resp.prepare(request)
    # Split the bytes into small reads, as real networks do.
    for i in range(0, len(raw), 7):
        await resp.write(raw[i : i + 7])
    await resp.write_eof()
    return resp


async def run(base_url: str, model: str) -> str:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="demo", max_retries=0, timeout=10)
    text = ""
    try:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        async for ch in stream:
            if ch.choices:
                text += ch.choices[0].delta.content or ""
        return f"ok: {text!r}"
    except Exception as exc:  # the point is to show what the SDK raises
        kind = type(exc).__name__
        return f"{kind}: {str(exc).splitlines()[0][:100]}" + (f" after {text!r}" if text else "")
    finally:
        await client.close()


async def serve(path: str, handler: Any) -> tuple[web.AppRunner, str]:
    """A simulated upstream answering POSTs to ``path`` on a free port, and its root URL."""
    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def compare() -> list[tuple[str, str, str, str]]:
    """Each scenario: (name, what the upstream does, direct result, result through seamline)."""
    runner, upstream = await serve("/v1/chat/completions", upstream_handler)
    upstream += "/v1"
    conf = cfg.parse(
        f'[server]\nheartbeat_s = 0\n[state]\npath = ":memory:"\n'
        f'[[accounts]]\nname = "simulated"\nbase_url = "{upstream}"\n',
        "demo",
        {},
    )
    proxy_runner = await start(conf, "127.0.0.1", 0)
    proxied = f"http://127.0.0.1:{proxy_runner.addresses[0][1]}/v1"
    try:
        return [
            (name, what, await run(upstream, name), await run(proxied, name))
            for name, (what, _, _) in SCENARIOS.items()
        ]
    finally:
        await proxy_runner.cleanup()
        await runner.cleanup()


async def main() -> None:
    results = await compare()
    width = max(60, shutil.get_terminal_size().columns) // 2 - 2
    print(f"\nExpected answer: {''.join(WORDS)!r}\n")
    print(f"{'DIRECT (openai SDK -> upstream)':<{width}}  THROUGH SEAMLINE")
    print(f"{'-' * (width - 1):<{width}}  {'-' * (width - 1)}")
    for name, what, direct, through in results:
        print(f"\n[{name}] upstream sends {what}")
        left = textwrap.wrap(direct, width) or [""]
        right = textwrap.wrap(through, width) or [""]
        for i in range(max(len(left), len(right))):
            a = left[i] if i < len(left) else ""
            b = right[i] if i < len(right) else ""
            print(f"{a:<{width}}  {b}")
    print(
        "\nThrough seamline every stream parses; a truncated one ends in an explicit error "
        "instead of passing for a complete answer.\n"
    )


# --- scripts/demo --admin: the admin page over a pool in every state, as a screenshot ---

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


def _quiet_logs() -> None:
    import io

    from proxy.logs import configure

    configure(json_lines=True, stream=io.StringIO())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--admin",
        nargs="?",
        const="docs/admin.png",
        metavar="PNG",
        help="instead: a screenshot of the admin page over a simulated pool "
        "(default docs/admin.png; needs Debian's chromium)",
    )
    parser.add_argument("--width", type=int, default=1280, help="of the --admin window")
    options = parser.parse_args()
    _quiet_logs()
    if options.admin:
        Path(options.admin).parent.mkdir(parents=True, exist_ok=True)
        asyncio.run(admin_screenshot(options.admin, options.width))
    else:
        asyncio.run(main())
