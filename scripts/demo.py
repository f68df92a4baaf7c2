"""See the point of seamline in seconds: a broken upstream, streamed directly and through it.

Starts a local simulated upstream that breaks the OpenAI stream contract in the ways
real providers do, starts seamline in front of it, then streams the same request with
the openai client directly and through seamline, and prints what each yields.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import textwrap

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


async def compare() -> list[tuple[str, str, str, str]]:
    """Each scenario: (name, what the upstream does, direct result, result through seamline)."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    upstream = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
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


def _quiet_logs() -> None:
    import io

    from proxy.logs import configure

    configure(json_lines=True, stream=io.StringIO())


if __name__ == "__main__":
    _quiet_logs()
    asyncio.run(main())
