"""proxy.upstream.wire against upstreams that lie, flood, or talk out of turn (the corpus
in support/hostile_upstreams.py, and more)."""

from __future__ import annotations

import asyncio
import os
import random
import socket

import pytest

from proxy.errors import UpstreamProtocolError
from proxy.upstream import conn as wire_conn
from proxy.upstream import response as wire_response
from proxy.upstream import wire
from support.builders import CHUNKED, LAST_CHUNK, OK, STALE, bomb, chunks, large
from support.hostile_upstreams import CASES, AiohttpDriver, Case, SeamlineDriver, run
from support.upstream import Peer, RawUpstream, StartRawUpstream, answer, first_then_ok
from support.wire_client import call, fetch, read_all


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_each_hostile_upstream_gets_the_verdict_the_corpus_gives_seamline(
    case: Case,
) -> None:
    driver = SeamlineDriver(within=5)
    try:
        outcome = await run(case, driver)
    finally:
        await driver.close()
    assert outcome.verdict == case.seamline, outcome.detail()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_aiohttp_against_the_same_corpus_does_what_was_recorded(case: Case) -> None:
    """Not a test of seamline: it keeps the comparison with aiohttp true. Should an
    aiohttp upgrade change a verdict, update ``Case.aiohttp`` (and the README)."""
    driver = AiohttpDriver(within=1.5)
    try:
        outcome = await run(case, driver)
    finally:
        await driver.close()
    assert outcome.verdict == case.aiohttp, outcome.detail()


# -- the pool -------------------------------------------------------------------------


async def test_bytes_sent_on_an_idle_pooled_connection_never_reach_the_next_request(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
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
        up = await raw_upstream(first_then_ok(handler))
        _, body = await fetch(wire_client, up.url())
        assert len(body) == 400 * 1024
        await asyncio.wait_for(sent.wait(), 5)
        assert await up.peers[0].closed(), "the idle connection was read, and closed"
        _, body = await fetch(wire_client, up.url())
        assert body == b"ok"
        assert len(up.peers) == 2


async def test_a_pooled_connection_with_bytes_waiting_unseen_is_closed_not_reused(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    async def handler(peer: Peer) -> None:
        await answer(peer, OK)

    up = await raw_upstream(first_then_ok(handler))
    await fetch(wire_client, up.url())
    await asyncio.sleep(0.05)
    # Written past the loop, and the request made before the loop runs again: the
    # bytes wait in the socket, and only a look at the socket itself finds them.
    os.write(up.peers[0].writer.get_extra_info("socket").fileno(), STALE)
    resp, body = await fetch(wire_client, up.url())
    assert (resp.status, body) == (200, b"ok")
    assert len(up.peers) == 2
    assert await up.peers[0].closed()


# -- what is not body -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "unit"),
    [
        pytest.param(chunks(b"hello") + b"0\r\nX-Trailer: ", b"a", id="trailer-line"),
        pytest.param(chunks(b"hello") + b"0\r\n", b"X-Pad: aaaaaaaa\r\n", id="trailer-fields"),
        pytest.param(chunks(b"hello") + b"5;ext=", b"a", id="chunk-extension"),
        pytest.param(chunks(b"hello"), b"0", id="chunk-size-zeros"),
    ],
)
@pytest.mark.parametrize("mode", ["pulled", "pushed"])
async def test_endless_bytes_outside_the_body_are_refused_past_the_head_bound(
    raw_upstream: StartRawUpstream,
    wire_client: wire.ConnectionPool,
    prefix: bytes,
    unit: bytes,
    mode: str,
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED)
        await asyncio.sleep(0.05)  # the push is set up before the body comes
        await peer.send(prefix)
        try:
            while peer.sent < 64 * 1024 * 1024:
                await peer.send(unit * 1024, pause=0.001)
        except ConnectionError:
            peer.eof.set()  # the client closed the connection
            return
        await peer.until_closed()

    up = await raw_upstream(handler)
    resp = await call(wire_client, up.url())
    got: list[bytes] = []
    with pytest.raises(UpstreamProtocolError, match=r"more than 65536 bytes of trailers or"):
        if mode == "pulled":
            async with asyncio.timeout(5):
                while piece := await resp.read():
                    got.append(piece)
        else:
            await asyncio.wait_for(resp.push(got.append), 5)
    resp.close()
    assert b"".join(got) == b"hello"
    assert await up.peers[0].closed()
    # The flood stops within the bound and what loopback buffers hold; unbounded, the
    # upstream would write all 64 MiB.
    assert up.peers[0].sent < 16 * 1024 * 1024


@pytest.mark.parametrize("mode", ["pulled", "pushed"])
async def test_a_long_chunked_stream_of_tiny_chunks_cut_anywhere_is_never_refused(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool, mode: str
) -> None:
    # 15 times the bound in chunk framing, sent in pieces cut at random, so that some
    # reads hold framing only: each body piece starts the count again.
    rng = random.Random(13)
    pieces = [bytes([97 + i % 26]) for i in range(200_000)]
    framed = chunks(*pieces) + LAST_CHUNK
    assert len(framed) - len(pieces) > 15 * wire_conn._MAX_HEAD
    cuts = sorted(rng.sample(range(1, len(framed)), 2_000))
    writes = [framed[a:b] for a, b in zip([0, *cuts], [*cuts, len(framed)], strict=True)]

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED)
        await asyncio.sleep(0.05)
        for piece in writes:
            await peer.send(piece)
            await asyncio.sleep(0)
        await answer(peer, OK)

    up = await raw_upstream(handler)
    resp = await call(wire_client, up.url())
    if mode == "pulled":
        body = await read_all(resp)
    else:
        got: list[bytes] = []
        assert await asyncio.wait_for(resp.push(got.append), 10) is True
        body = b"".join(got)
    resp.close()
    assert body == b"".join(pieces)
    _, body = await fetch(wire_client, up.url())
    assert body == b"ok"
    assert len(up.peers) == 1


# -- interim answers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 150 Odd\r\nContent-Length: 5\r\n\r\nHELLO",
        b"HTTP/1.1 199 Odd\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks(b"HELLO") + LAST_CHUNK,
    ],
)
async def test_a_1xx_answer_with_a_body_is_refused_and_never_glued_to_the_answer(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool, interim: bytes
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(interim + OK)
        await peer.until_closed()

    up = await raw_upstream(handler)
    with pytest.raises(UpstreamProtocolError, match="1xx answer with a body"):
        await call(wire_client, up.url())
    assert await up.peers[0].closed()


async def test_a_1xx_answer_with_an_empty_length_is_skipped(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    up = await raw_upstream(
        lambda peer: answer(peer, b"HTTP/1.1 100 Continue\r\nContent-Length: 0\r\n\r\n" + OK)
    )
    resp, body = await fetch(wire_client, up.url())
    assert (resp.status, body) == (200, b"ok")


async def test_an_unsolicited_101_is_a_clean_protocol_error_with_no_traceback(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\n\x81\x05hello"
        )
        await peer.until_closed()

    up = await raw_upstream(handler)
    try:
        with pytest.raises(UpstreamProtocolError, match=r"switched protocols \(101\) unasked"):
            await call(wire_client, up.url())
        assert await up.peers[0].closed()
        await asyncio.sleep(0.05)
    finally:
        loop.set_exception_handler(None)
    assert reported == []


# -- requests sent again ----------------------------------------------------------------


async def _answer_then_read_and_close(peer: Peer) -> None:
    await peer.request()
    await peer.send(OK)
    await peer.request()  # read whole, maybe acted on; then the connection closes
    peer.close()


@pytest.mark.parametrize(
    ("method", "headers", "copies"),
    [
        pytest.param("POST", {}, 1, id="POST"),
        pytest.param("PATCH", {}, 1, id="PATCH"),
        pytest.param("GET", {}, 2, id="GET"),
        pytest.param("POST", {"Idempotency-Key": "k-1"}, 2, id="POST-with-an-idempotency-key"),
    ],
)
async def test_a_request_the_upstream_read_goes_again_only_when_it_is_replayable(
    raw_upstream: StartRawUpstream,
    wire_client: wire.ConnectionPool,
    method: str,
    headers: dict[str, str],
    copies: int,
) -> None:
    up = await raw_upstream(first_then_ok(_answer_then_read_and_close))
    await fetch(wire_client, up.url())
    body = b'{"n": 2}' if method != "GET" else b""
    if copies == 1:
        with pytest.raises(UpstreamProtocolError, match="not sent again"):
            await fetch(wire_client, up.url("/v1/second"), method, body, headers)
    else:
        resp, got = await fetch(wire_client, up.url("/v1/second"), method, body, headers)
        assert (resp.status, got) == (200, b"ok")
    second = [r for r in up.requests if r.startswith(f"{method} /v1/second ".encode())]
    assert len(second) == copies
    assert len(up.peers) == copies


async def test_a_post_whose_write_finds_the_connection_closed_goes_again_on_a_new_one(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        await peer.until_closed()

    up = await raw_upstream(first_then_ok(handler))
    await fetch(wire_client, up.url())
    conn = next(iter(wire_client._idle[("http", "127.0.0.1", up.port, None)]))
    assert conn.transport is not None
    # Dead for writing, and nothing to read yet: the pool cannot tell until the write
    # fails (EPIPE), before any byte of the request reached the upstream.
    fd = conn.transport.get_extra_info("socket").fileno()
    with socket.socket(fileno=os.dup(fd)) as sock:
        sock.shutdown(socket.SHUT_WR)
    resp, body = await fetch(wire_client, up.url("/v1/second"), "POST", b'{"n": 2}')
    assert (resp.status, body) == (200, b"ok")
    second = [r for r in up.requests if r.startswith(b"POST /v1/second ")]
    assert len(second) == 1, "the first write never reached the upstream"
    assert len(up.peers) == 2


# -- compressed bodies ------------------------------------------------------------------


async def _serve_bomb(
    raw_upstream: StartRawUpstream, go: asyncio.Event | None = None
) -> RawUpstream:
    """An upstream whose first answer is 64 KiB of gzip that inflates to 64 MiB (its
    body once ``go`` is set, when given)."""
    data = bomb()

    async def handler(peer: Peer) -> None:
        await peer.request()
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
        if go is None:
            await peer.send(head % len(data) + data)
        else:
            await peer.send(head % len(data))
            await go.wait()
            await peer.send(data)
        await answer(peer, OK)

    return await raw_upstream(handler)


async def test_a_compressed_body_is_inflated_a_step_at_a_time_for_a_slow_reader(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    up = await _serve_bomb(raw_upstream)
    resp = await call(wire_client, up.url())
    size = largest = 0
    async with asyncio.timeout(20):
        while piece := await resp.read():
            size += len(piece)
            largest = max(largest, len(piece))
            # What waits for the reader is the compressed rest, never more inflated.
            assert len(resp._stash or b"") <= len(bomb())
            await asyncio.sleep(0)
    resp.close()
    assert size == 64 * 1024 * 1024
    # Inflated until past the high-water mark, a step at a time: never 64 MiB at once.
    assert largest <= wire_response._HIGH_WATER + wire_response._INFLATE_STEP
    # The body ended (all of it in) while most of it was still to inflate: its
    # connection went back to the pool at once, and serves the next request.
    _, body = await fetch(wire_client, up.url())
    assert body == b"ok"
    assert len(up.peers) == 1


async def test_a_pushed_compressed_body_inflates_nothing_while_its_reader_holds_it(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    go = asyncio.Event()
    up = await _serve_bomb(raw_upstream, go)
    resp = await call(wire_client, up.url())
    got: list[int] = []

    def sink(piece: bytes) -> None:
        got.append(len(piece))
        resp.pause()  # the reader's client is slow: after every piece

    done = resp.push(sink)
    go.set()
    await asyncio.sleep(0.05)
    assert len(got) == 1, "held after the first step: nothing more inflated"
    async with asyncio.timeout(20):
        while not done.done():
            n = len(got)
            resp.resume()  # one more step, then held again
            assert len(got) <= n + 1
            await asyncio.sleep(0)
    assert done.result() is True
    assert max(got) <= wire_response._INFLATE_STEP
    assert sum(got) == 64 * 1024 * 1024
    resp.close()
