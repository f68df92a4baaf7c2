"""Real clients in front of seamline: the openai SDK, aiohttp, and a raw socket that
sends exact bytes; each gives back what it got."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Any, NamedTuple

import aiohttp
import openai
from openai.types.chat import ChatCompletionMessageParam

from support.builders import ADMIN_KEY


class Reply(NamedTuple):
    """An HTTP answer as a test saw it: status, headers and every byte of its body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


# -- the openai SDK -------------------------------------------------------------------


def client(base_url: str, key: str = "client-key") -> openai.AsyncOpenAI:
    """The openai client, without retries: what it raises is what seamline answered."""
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=10)


async def collect(base_url: str, **kw: Any) -> list[Any]:
    """Stream a chat completion through the real openai client; return its chunks."""
    async with client(base_url) as c:
        stream = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True, **kw
        )
        return [ch async for ch in stream]


def text_of(chunks: list[Any]) -> str:
    """The text the chunks of a chat stream carry."""
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


_ASKED = itertools.count()


def prompt() -> list[ChatCompletionMessageParam]:
    """A new prompt each time: distinct requests, as real traffic is (the breaker counts
    one request failing again, a client's retry, once)."""
    return [{"role": "user", "content": f"hi {next(_ASKED)}"}]


async def ask(base: str, stream: bool = False, model: str = "m") -> str:
    """One chat completion through the real openai client; the answer's text."""
    async with client(base) as c:
        if stream:
            s = await c.chat.completions.create(model=model, messages=prompt(), stream=True)
            return text_of([ch async for ch in s])
        r = await c.chat.completions.create(model=model, messages=prompt())
        return r.choices[0].message.content or ""


# -- aiohttp --------------------------------------------------------------------------


def request_body(stream: bool = False, model: str = "m", **extra: Any) -> bytes:
    obj = {"model": model, "messages": prompt(), "stream": stream, **extra}
    return json.dumps(obj, separators=(",", ":")).encode()


async def post(
    base: str, body: bytes | None = None, session: aiohttp.ClientSession | None = None
) -> Reply:
    """POST raw bytes to /v1/chat/completions; the answer's status, headers and bytes."""
    if session is None:
        async with aiohttp.ClientSession() as s:
            return await post(base, body, s)
    headers = {"Content-Type": "application/json"}
    async with session.post(
        base + "/chat/completions", data=body or request_body(), headers=headers
    ) as r:
        return Reply(r.status, dict(r.headers), await r.read())


async def admin_get(base: str, **headers: str) -> tuple[int, str]:
    url = base.removesuffix("/v1") + "/admin/accounts"
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, await r.text()


async def accounts(base: str) -> dict[str, dict[str, Any]]:
    """GET /admin/accounts with the admin key: each account's row by name."""
    status, text = await admin_get(base, Authorization=f"Bearer {ADMIN_KEY}")
    assert status == 200, text
    return {row["name"]: row for row in json.loads(text)["accounts"]}


async def fetch_ready(base: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(base.removesuffix("/v1") + "/readyz") as r:
        return r.status


async def get_json(url: str) -> tuple[int, Any]:
    """GET ``url`` with the Redis configs' admin key; the status and the JSON body."""
    async with (
        aiohttp.ClientSession() as s,
        s.get(url, headers={"Authorization": "Bearer adm"}) as r,
    ):
        return r.status, await r.json()


# -- a raw socket ---------------------------------------------------------------------


def root(base: str) -> str:
    """The server's root URL, from its /v1 base URL."""
    return base.removesuffix("/v1")


async def raw_request(url: str, start: bytes, body: bytes = b"", *headers: bytes) -> Reply:
    """Send exactly these bytes (no client-side normalisation of the path); parse the answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = [start + b" HTTP/1.1", b"Host: seamline", b"Connection: close", *headers]
        if body or start.startswith(b"POST"):
            head.append(b"Content-Length: %d" % len(body))
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        async with asyncio.timeout(10):
            answer = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return parse_answer(answer)


def parse_answer(answer: bytes) -> Reply:
    """Status, headers (lower-cased names) and body of one HTTP/1.1 answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, val = line.partition(":")
        headers[name.strip().lower()] = val.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return Reply(status, headers, body)


def dechunk(data: bytes) -> bytes:
    """The body of a chunked transfer encoding."""
    out: list[bytes] = []
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if not size:
            return b"".join(out)
        out.append(data[:size])
        data = data[size + 2 :]
