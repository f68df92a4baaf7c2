"""proxy.wire against upstreams that lie, flood, or talk out of turn (tests/hostile.py)."""

from __future__ import annotations

import asyncio
import os

from peers import (
    OK,
    STALE,
    Peer,
    Serve,
    answer,
    client,
    fetch,
    first_then_ok,
    large,
    serve,
)

from proxy import wire

__all__ = ["client", "serve"]  # fixtures, imported to be found by pytest


# -- the pool -------------------------------------------------------------------------


async def test_bytes_sent_on_an_idle_pooled_connection_never_reach_the_next_request(
    serve: Serve, client: wire.Client
) -> None:
    # A pulled answer that ends in the read that pauses the socket: before, its
    # connection was pooled with reading paused, and the unasked bytes became the next
    # request's answer nearly every time.
    sent = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(large(400 * 1024))
        await asyncio.sleep(0.05)
        await peer.send(STALE)
        sent.set()
        await peer.until_closed()

    for _ in range(3):
        sent.clear()
        up = await serve(first_then_ok(handler))
        _, body = await fetch(client, up.url())
        assert len(body) == 400 * 1024
        await asyncio.wait_for(sent.wait(), 5)
        assert await up.peers[0].closed(), "the idle connection was read, and closed"
        _, body = await fetch(client, up.url())
        assert body == b"ok"
        assert len(up.peers) == 2


async def test_a_pooled_connection_with_bytes_waiting_unseen_is_closed_not_reused(
    serve: Serve, client: wire.Client
) -> None:
    async def handler(peer: Peer) -> None:
        await answer(peer, OK)

    up = await serve(first_then_ok(handler))
    await fetch(client, up.url())
    await asyncio.sleep(0.05)
    # Written past the loop, and the request made before the loop runs again: the
    # bytes wait in the socket, and only a look at the socket itself finds them.
    os.write(up.peers[0].writer.get_extra_info("socket").fileno(), STALE)
    resp, body = await fetch(client, up.url())
    assert (resp.status, body) == (200, b"ok")
    assert len(up.peers) == 2
    assert await up.peers[0].closed()
