"""seamline's own wire client (``proxy.upstream.wire``), driven against raw upstreams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import pytest

from proxy.upstream import wire


@pytest.fixture
async def wire_client() -> AsyncIterator[wire.ConnectionPool]:
    """A wire client, closed after the test."""
    c = wire.ConnectionPool()
    yield c
    c.close()


async def call(
    client: wire.ConnectionPool,
    url: str,
    method: str = "GET",
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    *,
    head: float = 5.0,
    total: float = 0.0,
) -> wire.Response:
    return await client.request(
        method, url, headers or {}, body, connect=5.0, head=head, total=total
    )


async def read_all(resp: wire.Response) -> bytes:
    parts: list[bytes] = []
    async with asyncio.timeout(5):
        while piece := await resp.read():
            parts.append(piece)
    return b"".join(parts)


async def fetch(
    client: wire.ConnectionPool,
    url: str,
    method: str = "GET",
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> tuple[wire.Response, bytes]:
    """One whole exchange: the answer and its body, the answer closed."""
    resp = await call(client, url, method, body, headers)
    try:
        return resp, await read_all(resp)
    finally:
        resp.close()
