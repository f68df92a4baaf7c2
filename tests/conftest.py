"""Real parts on loopback: a scripted upstream that writes exact bytes, and seamline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import hypothesis  # noqa: F401
import openai
import pytest
import uvloop
from aiohttp import web

from proxy import config as cfg

# ``hypothesis`` is imported up front: its pytest plugin otherwise imports its settings
# at the session's end, and on CPython 3.11 compiling them there, after the Agents SDK
# ran, fails with "AST constructor recursion depth mismatch" (a run of only the tests
# that use neither).
from proxy.gateway.app import Runner, start


@dataclass
class Script:
    """What the fake upstream answers: status, headers, then body pieces with pauses."""

    pieces: list[bytes] = field(default_factory=list)
    status: int = 200
    content_type: str = "text/event-stream"
    pause: float = 0.01
    headers: dict[str, str] = field(default_factory=dict)
    delay_headers: float = 0.0
    # After the pieces: "end" finishes cleanly, "reset" aborts the connection,
    # "hang" keeps the connection open and silent.
    ending: str = "end"


class Reply(NamedTuple):
    """An HTTP answer as a test saw it: status, headers and every byte of its body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Upstream:
    """An in-process upstream whose answers tests script; it records what it got."""

    url: str
    scripts: list[Script]
    requests: list[dict[str, Any]] = field(default_factory=list)
    closed: list[float] = field(default_factory=list)

    def script(self, *pieces: bytes, **kw: Any) -> Script:
        s = Script(list(pieces), **kw)
        self.scripts.append(s)
        return s


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> bytes:
    """One chat.completion.chunk as compact JSON bytes."""
    delta: dict[str, Any] = {}
    if content is not None:
        delta["content"] = content
    obj = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sse_stream(*contents: str, done: bool = True) -> list[bytes]:
    """A well-formed chat stream: one event per content piece, a finish, [DONE]."""
    out = [b"data: " + chunk(c) + b"\n\n" for c in contents]
    out.append(b"data: " + chunk(finish="stop") + b"\n\n")
    if done:
        out.append(b"data: [DONE]\n\n")
    return out


def make_upstream_app(up: Upstream) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        up.requests.append(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": dict(request.headers),
                "body": body,
            }
        )
        script = up.scripts.pop(0) if len(up.scripts) > 1 else up.scripts[0]
        if script.delay_headers:
            await asyncio.sleep(script.delay_headers)
        resp = web.StreamResponse(status=script.status, headers=script.headers)
        resp.content_type = script.content_type
        await resp.prepare(request)
        try:
            for piece in script.pieces:
                await resp.write(piece)
                await asyncio.sleep(script.pause)
            if script.ending == "reset":
                assert request.transport is not None
                request.transport.abort()
                return resp
            if script.ending == "hang":
                await asyncio.sleep(3600)
            await resp.write_eof()
        finally:
            up.closed.append(asyncio.get_running_loop().time())
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@pytest.fixture
async def upstream(aiohttp_server: Any) -> Upstream:
    up = Upstream(url="", scripts=[])
    server = await aiohttp_server(make_upstream_app(up))
    up.url = str(server.make_url("/v1"))
    return up


def config_text(*accounts: tuple[str, str], extra: str = "", server: str = "") -> str:
    text = f"[server]\nport = 0\n{server}\n"
    if "[state]" not in extra:
        text += '[state]\npath = ":memory:"\n'
    text += f"{extra}\n"
    for name, url in accounts:
        text += f'[[accounts]]\nname = "{name}"\nbase_url = "{url}"\n'
        text += f'api_key = "sk-test-{name}-secret"\n'
    return text


StartSeamline = Callable[..., Awaitable[str]]


@pytest.fixture
async def seamline() -> AsyncIterator[StartSeamline]:
    """Start seamline (the real runner) on a free port; returns its /v1 base URL."""
    runners: list[Runner] = []

    async def _start(text: str, env: dict[str, str] | None = None) -> str:
        conf = cfg.parse(text, "test.toml", env or {})
        runner = await start(conf, "127.0.0.1", 0)
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}/v1"

    yield _start
    for r in runners:
        await r.cleanup()


@pytest.fixture
async def proxied(upstream: Upstream, seamline: StartSeamline) -> str:
    """seamline in front of the scripted upstream, one account."""
    return await seamline(config_text(("acc1", upstream.url)))


def client(base_url: str, key: str = "client-key") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=10)


async def collect(base_url: str, **kw: Any) -> list[Any]:
    """Stream a chat completion through the real openai client; return its chunks."""
    async with client(base_url) as c:
        stream = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True, **kw
        )
        return [ch async for ch in stream]


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


_PROXY_VARIABLES = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
)


@pytest.fixture(autouse=True)
def _no_proxy_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's upstreams are on loopback: the proxy settings of whoever runs it must
    not route them (nor the processes tests start, nor the openai client) through a
    proxy. Tests that want proxies set them."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# Modules whose tests also run on uvloop, the loop seamline serves on: their code
# works the transports directly, and uvloop's differ from asyncio's.
_BOTH_LOOPS = frozenset({"test_wire.py", "test_wire_hostile.py", "test_proxies.py"})


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name in _BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
