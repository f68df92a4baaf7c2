"""What the admin tests share: two scripted upstreams behind one seamline with an admin key,
and the admin endpoints as a client calls them."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from conftest import Reply, StartSeamline, Upstream, make_upstream_app

ADMIN_KEY = "admin-key-5b0e9d-secret"
CLIENT_KEYS = ("client-key-one-4f1a", "client-key-two-8c2e")
RETRY_AFTER = 600


def key_of(name: str) -> str:
    return f"sk-test-{name}-secret"


def fingerprint(secret: str) -> str:
    """As the README tells operators to compute it."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def completion(text: str, prompt: int = 3, completion_tokens: int = 2) -> bytes:
    """A non-streamed chat.completion with usage."""
    obj = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        },
    }
    return json.dumps(obj).encode()


def answer(up: Upstream, text: str) -> None:
    up.script(completion(text), content_type="application/json")


def rate_limit(up: Upstream) -> None:
    """A 429 whose Retry-After puts the account in a cooldown of RETRY_AFTER seconds."""
    body = json.dumps({"error": {"message": "slow down", "type": "rate_limit", "code": None}})
    up.script(
        body.encode(),
        status=429,
        content_type="application/json",
        headers={"Retry-After": str(RETRY_AFTER)},
    )


def config(*accounts: tuple[str, str], server: str = "", strategy: str = "fill_first") -> str:
    """fill_first: a request goes to the first account that can take it, so a test can tell
    where the next one goes."""
    text = f"[server]\nport = 0\nadmin_key = {json.dumps(ADMIN_KEY)}\n{server}\n"
    text += f'[routing]\nstrategy = "{strategy}"\n[state]\npath = ":memory:"\n'
    for name, url in accounts:
        text += f"[[accounts]]\nname = {json.dumps(name)}\nbase_url = {json.dumps(url)}\n"
        text += f"api_key = {json.dumps(key_of(name))}\n"
    return text


@dataclass
class Pair:
    """Accounts A and B, each with its own scripted upstream, behind one seamline."""

    a: Upstream
    b: Upstream
    base: str  # seamline's /v1 URL

    @property
    def root(self) -> str:
        return self.base.removesuffix("/v1")


MakePair = Callable[..., Awaitable[Pair]]


@pytest.fixture
def pair(aiohttp_server: Any, seamline: StartSeamline) -> MakePair:
    async def make(server: str = "") -> Pair:
        ups = []
        for _ in range(2):
            up = Upstream(url="", scripts=[])
            srv = await aiohttp_server(make_upstream_app(up))
            up.url = str(srv.make_url("/v1"))
            answer(up, "ok")
            ups.append(up)
        a, b = ups
        base = await seamline(config(("A", a.url), ("B", b.url), server=server))
        return Pair(a, b, base)

    return make


async def fetch(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> Reply:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, url, data=body, headers=headers) as r,
    ):
        return Reply(r.status, dict(r.headers), await r.read())


def admin_headers(key: str = ADMIN_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def admin(method: str, root: str, path: str, body: Any = None) -> Reply:
    data = json.dumps(body).encode() if body is not None else None
    return await fetch(method, root + path, data, admin_headers())


async def accounts(root: str) -> dict[str, dict[str, Any]]:
    reply = await admin("GET", root, "/admin/accounts")
    assert reply.status == 200, reply.body
    return {row["name"]: row for row in reply.json()["accounts"]}


_ASKED = itertools.count()


async def chat(base: str, key: str = CLIENT_KEYS[0], stream: bool = False) -> Reply:
    """A chat completion with a new prompt each time (the breaker counts a request that
    fails again once)."""
    prompt = [{"role": "user", "content": f"hi {next(_ASKED)}"}]
    body = {"model": "m", "messages": prompt, "stream": stream}
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return await fetch("POST", base + "/chat/completions", json.dumps(body).encode(), headers)
