"""The admin tests' world: two scripted accounts behind one seamline with an admin key
(``pair``), and the admin endpoints as a client calls them."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from support.builders import ADMIN_KEY, FILL_FIRST, account, completion, conf, toml
from support.clients import Reply
from support.seamline import StartSeamline
from support.upstream import MakeUpstream, Upstream

CLIENT_KEYS = ("client-key-one-4f1a", "client-key-two-8c2e")
RETRY_AFTER = 600


def fingerprint(secret: str) -> str:
    """As the README tells operators to compute it."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def answer(up: Upstream, text: str) -> None:
    """Script a JSON completion of ``text`` with usage (3 prompt, 2 completion tokens)."""
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


def config(*accounts: tuple[str, str], server: str = "") -> str:
    """The admin key, fill_first (a request goes to the first account that can take it, so
    a test can tell where the next one goes), these accounts and ``server`` options."""
    text = conf(*(account(name, url) for name, url in accounts), routing=FILL_FIRST)
    return text.replace("[server]\n", f"[server]\n{server}\n", 1)


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
def pair(make_upstream: MakeUpstream, seamline: StartSeamline) -> MakePair:
    """Start a Pair; both upstreams answer "ok" until a test scripts them otherwise.
    ``api_keys``: the client keys seamline asks for (none: any)."""

    async def make(api_keys: tuple[str, ...] = ()) -> Pair:
        a, b = await make_upstream(), await make_upstream()
        for up in (a, b):
            answer(up, "ok")
        server = toml(api_keys=list(api_keys)) if api_keys else ""
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
    """An admin endpoint with the admin key; ``body`` is sent as JSON."""
    data = json.dumps(body).encode() if body is not None else None
    return await fetch(method, root + path, data, admin_headers())


async def account_rows(root: str) -> dict[str, dict[str, Any]]:
    """/admin/accounts, each row by its account's name."""
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
