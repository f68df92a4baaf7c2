"""proxy.upstream.wire against a real loopback upstream that writes exact bytes."""

from __future__ import annotations

import asyncio
import gzip
import random
import socket
import zlib
from collections.abc import Callable

import pytest

from proxy.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.upstream import conn as wire_conn
from proxy.upstream import response as wire_response
from proxy.upstream import wire
from support.builders import CHUNKED, LAST_CHUNK, OK, chunks, split
from support.tls import tls_upstream
from support.upstream import Peer, StartRawUpstream, answer, answering, first_then_ok
from support.wire_client import call, fetch, read_all

COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
}


# -- connections and the pool ---------------------------------------------------------


async def test_sequential_requests_share_one_kept_alive_connection(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    up = await raw_upstream(answering(OK))
    for _ in range(3):
        resp, body = await fetch(wire_client, up.url())
        assert (resp.status, body) == (200, b"ok")
    assert len(up.requests) == 3
    assert len(up.peers) == 1


async def test_concurrent_requests_each_get_a_connection_and_both_are_kept(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    up = await raw_upstream(answering(OK))
    for _ in range(2):
        answers = await asyncio.gather(fetch(wire_client, up.url()), fetch(wire_client, up.url()))
        assert [body for _, body in answers] == [b"ok", b"ok"]
    assert len(up.requests) == 4
    assert len(up.peers) == 2


@pytest.mark.parametrize(
    ("when", "method"),
    [("noticed while idle", "POST"), ("unnoticed until the next request", "GET")],
)
async def test_pooled_connection_the_upstream_dropped_is_retried_on_a_new_one(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool, when: str, method: str
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        if when == "unnoticed until the next request":
            # The race a pool cannot see coming: the upstream's idle timeout fires
            # just as the request goes out. (Only a replayable request goes again: see
            # test_wire_hostile.py for a POST.)
            await peer.request()
        peer.close()

    up = await raw_upstream(first_then_ok(handler))
    await fetch(wire_client, up.url())
    await asyncio.sleep(0.05)
    body = b'{"n":2}' if method == "POST" else b""
    resp, got = await fetch(wire_client, up.url("/v1/n2"), method, body)
    assert (resp.status, got) == (200, b"ok")
    assert len(up.peers) == 2
    assert up.requests[-1].startswith(f"{method} /v1/n2 ".encode())
    assert up.requests[-1].endswith(body or b"\r\n\r\n")
    if when == "unnoticed until the next request":
        assert up.requests[1] == up.requests[2]  # the same request, sent again whole
    else:
        assert len(up.requests) == 2  # a closed connection was never written to


async def test_a_retry_after_a_stale_connection_takes_a_new_one_not_another_pooled(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    async def handler(peer: Peer) -> None:
        # The first two: one answer, then dropped as the next request arrives.
        await peer.request()
        await asyncio.sleep(0.05)  # both requests are in flight at once: two connections
        await peer.send(OK)
        await peer.request()
        peer.close()

    up = await raw_upstream(first_then_ok(handler, 2))
    await asyncio.gather(fetch(wire_client, up.url()), fetch(wire_client, up.url()))
    assert len(up.peers) == 2
    resp, body = await fetch(wire_client, up.url())
    assert (resp.status, body) == (200, b"ok")
    assert len(up.peers) == 3, "the retry went to a new connection"


async def test_client_close_closes_idle_connections(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    up = await raw_upstream(answering(OK))
    await fetch(wire_client, up.url())
    assert not await up.peers[0].closed(within=0.1)  # kept for the next request
    wire_client.close()
    assert await up.peers[0].closed()


async def test_idle_connection_is_closed_after_the_keepalive(
    raw_upstream: StartRawUpstream,
) -> None:
    up = await raw_upstream(answering(OK))
    wire_client = wire.ConnectionPool(keepalive=0.1)
    try:
        await fetch(wire_client, up.url())
        assert await up.peers[0].closed()
        _, body = await fetch(wire_client, up.url())
    finally:
        wire_client.close()
    assert body == b"ok"
    assert len(up.peers) == 2


@pytest.mark.parametrize(
    ("response", "reused"),
    [
        pytest.param(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False, id="http/1.0"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            False,
            id="connection-close",
        ),
        pytest.param(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
            True,
            id="http/1.0-keep-alive",
        ),
    ],
)
async def test_connection_is_reused_only_when_the_answer_allows_it(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool, response: bytes, reused: bool
) -> None:
    up = await raw_upstream(answering(response))
    for _ in range(2):
        _, body = await fetch(wire_client, up.url())
        assert body == b"ok"
    assert len(up.peers) == (1 if reused else 2)
    if not reused:
        assert await up.peers[0].closed()


async def test_answer_closed_before_its_end_is_not_reused(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        await peer.until_closed()

    up = await raw_upstream(first_then_ok(handler))
    resp = await call(wire_client, up.url())
    assert await resp.read() == b"hello"
    resp.close()
    assert await up.peers[0].closed()
    _, body = await fetch(wire_client, up.url())
    assert body == b"ok"
    assert len(up.peers) == 2


async def test_idle_connection_that_talks_is_not_reused(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        await asyncio.sleep(0.05)
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
        await peer.until_closed()

    up = await raw_upstream(first_then_ok(handler))
    await fetch(wire_client, up.url())
    assert await up.peers[0].closed()
    _, body = await fetch(wire_client, up.url())
    assert body == b"ok"
    assert len(up.peers) == 2


async def test_bytes_past_the_answer_in_the_same_read_close_the_connection(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        # An upstream that miscounts: more follows the answer, in the same packet.
        await peer.send(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\npart")
        await peer.until_closed()

    up = await raw_upstream(first_then_ok(handler))
    await fetch(wire_client, up.url())
    assert await up.peers[0].closed()
    resp, body = await fetch(wire_client, up.url())
    assert (resp.status, body) == (200, b"ok")
    assert len(up.peers) == 2


# -- bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "then_close"),
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world", False, id="length"
        ),
        pytest.param(CHUNKED + chunks(b"hello", b" ", b"world") + LAST_CHUNK, False, id="chunked"),
        pytest.param(
            CHUNKED + chunks(b"hello world") + b"0\r\nX-Checksum: 1\r\n\r\n",
            False,
            id="chunked-with-trailer",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\n\r\nhello world", True, id="until-close"),
        pytest.param(b"HTTP/1.0 200 OK\r\n\r\nhello world", True, id="http/1.0-until-close"),
    ],
)
async def test_body_is_read_whole(
    raw_upstream: StartRawUpstream,
    wire_client: wire.ConnectionPool,
    response: bytes,
    then_close: bool,
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(*split(response, 3), pause=0.01)
        if then_close:
            peer.close()
        else:
            await answer(peer, OK)  # the connection goes on

    up = await raw_upstream(handler)
    resp, body = await fetch(wire_client, up.url())
    assert (resp.status, body) == (200, b"hello world")
    if not then_close:
        _, body = await fetch(wire_client, up.url())
        assert body == b"ok"
        assert len(up.peers) == 1


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
async def test_chunked_body_written_a_byte_at_a_time_arrives_intact(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool, encoding: str
) -> None:
    data = b"".join(b'data: {"n": %d}\n\n' % i for i in range(8))
    sent = data if encoding == "identity" else gzip.compress(data)
    response = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: %s\r\n\r\n"
        % encoding.encode()
        + chunks(*split(sent, 4))
        + LAST_CHUNK
    )

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(*(response[i : i + 1] for i in range(len(response))), pause=0.001)
        await peer.until_closed()

    up = await raw_upstream(handler)
    _, body = await fetch(wire_client, up.url())
    assert body == data


async def test_headers_keep_every_value_and_the_media_type_is_plain(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    up = await raw_upstream(
        answering(
            b"HTTP/1.1 201 Created\r\nContent-Type: Text/Event-Stream; charset=utf-8\r\n"
            b"X-Multi: a\r\nx-multi: b\r\nContent-Length: 0\r\n\r\n"
        )
    )
    resp, body = await fetch(wire_client, up.url())
    assert (resp.status, body) == (201, b"")
    assert resp.content_type == "text/event-stream"
    assert resp.headers.getall("X-Multi") == ["a", "b"]


@pytest.mark.parametrize("encoding", sorted(COMPRESS))
async def test_compressed_body_is_inflated(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool, encoding: str
) -> None:
    data = b"".join(b"data: event %d\n\n" % i for i in range(500))
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
        % encoding.encode()
        + chunks(*split(COMPRESS[encoding](data), 5))
        + LAST_CHUNK
    )

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(*split(response, 5), pause=0.005)
        await answer(peer, OK)

    up = await raw_upstream(handler)
    _, body = await fetch(wire_client, up.url())
    assert body == data
    _, body = await fetch(wire_client, up.url())  # and the connection goes on
    assert body == b"ok"
    assert len(up.peers) == 1


async def test_unknown_content_encoding_is_refused_by_name(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    up = await raw_upstream(
        answering(b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 3\r\n\r\nabc")
    )
    with pytest.raises(UpstreamProtocolError, match="'br'"):
        await call(wire_client, up.url())


async def test_corrupt_compressed_body_breaks_the_read(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    up = await raw_upstream(
        answering(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 12\r\n\r\nnot gzip!!!!"
        )
    )
    resp = await call(wire_client, up.url())
    with pytest.raises(UpstreamProtocolError, match="corrupt compressed body"):
        await read_all(resp)
    resp.close()


async def test_interim_answers_are_skipped(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-Final: yes\r\nContent-Length: 2\r\n\r\nok",
            pause=0.01,
        )
        await answer(peer, OK)

    up = await raw_upstream(handler)
    resp, body = await fetch(wire_client, up.url())
    assert (resp.status, body) == (200, b"ok")
    assert resp.headers["X-Final"] == "yes"
    assert "Link" not in resp.headers
    _, body = await fetch(wire_client, up.url())
    assert body == b"ok"
    assert len(up.peers) == 1


async def test_head_answer_with_a_length_completes_without_a_body(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        await peer.until_closed()

    up = await raw_upstream(handler)
    resp, body = await fetch(wire_client, up.url(), "HEAD")
    assert (resp.status, body) == (200, b"")
    assert resp.headers["Content-Length"] == "1234"
    assert up.requests[0].startswith(b"HEAD /v1/x HTTP/1.1\r\n")


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
async def test_bodiless_status_completes_and_keeps_the_connection(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool, status: bytes
) -> None:
    up = await raw_upstream(answering(b"HTTP/1.1 %s\r\n\r\n" % status))
    for _ in range(2):
        resp, body = await fetch(wire_client, up.url())
        assert (resp.status, body) == (int(status[:3]), b"")
    assert len(up.peers) == 1


# -- pushed bodies --------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
async def test_push_hands_over_every_piece_in_order_and_ends_true(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool, encoding: str
) -> None:
    pieces = [b"data: %d\n\n" % i for i in range(20)]
    data = b"".join(pieces)
    framed = chunks(*pieces) if encoding == "identity" else chunks(*split(gzip.compress(data), 6))
    go = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: %s\r\n\r\n"
            % encoding.encode()
        )
        await go.wait()  # the body only once the push is set up
        await peer.send(*split(framed, 10), LAST_CHUNK, pause=0.005)
        await answer(peer, OK)

    up = await raw_upstream(handler)
    resp = await call(wire_client, up.url())
    assert not resp.buffered()
    got: list[bytes] = []
    done = resp.push(got.append)
    go.set()
    assert await asyncio.wait_for(done, 5) is True
    assert b"".join(got) == data
    assert all(got)
    assert await resp.push(got.append) is True  # a push on an ended answer ends at once
    resp.close()
    _, body = await fetch(wire_client, up.url())
    assert body == b"ok"
    assert len(up.peers) == 1


async def test_stopped_push_keeps_the_connection_when_the_body_ends_soon(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    go, rest = asyncio.Event(), asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED)
        await go.wait()
        await peer.send(chunks(b"data: [DONE]\n\n"))
        await rest.wait()
        await peer.send(chunks(b"dropped"), LAST_CHUNK)
        await answer(peer, OK)

    up = await raw_upstream(handler)
    resp = await call(wire_client, up.url())
    got: list[bytes] = []

    def sink(piece: bytes) -> None:
        got.append(piece)
        resp.stop()

    done = resp.push(sink)
    go.set()
    assert await asyncio.wait_for(done, 5) is False
    rest.set()
    await asyncio.sleep(0.2)  # well within the grace the rest has to arrive
    resp.close()
    _, body = await fetch(wire_client, up.url())
    assert body == b"ok"
    assert got == [b"data: [DONE]\n\n"]
    assert len(up.peers) == 1


async def test_stopped_push_closes_the_connection_when_the_body_does_not_end(
    raw_upstream: StartRawUpstream,
    wire_client: wire.ConnectionPool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wire_response, "_GRACE", 0.1)
    go = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED)
        await go.wait()
        await peer.send(chunks(b"data: [DONE]\n\n"))
        await peer.until_closed()

    up = await raw_upstream(first_then_ok(handler))
    resp = await call(wire_client, up.url())
    done = resp.push(lambda piece: resp.stop())
    go.set()
    assert await asyncio.wait_for(done, 5) is False
    assert await up.peers[0].closed()
    resp.close()
    _, body = await fetch(wire_client, up.url())
    assert body == b"ok"
    assert len(up.peers) == 2


async def test_interrupt_ends_the_push_with_the_readers_error(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    go = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED)
        await go.wait()
        await peer.send(chunks(b"one"), chunks(b"two"), pause=0.01)
        await peer.until_closed()

    up = await raw_upstream(handler)
    resp = await call(wire_client, up.url())
    got: list[bytes] = []

    def sink(piece: bytes) -> None:
        got.append(piece)
        resp.interrupt(ConnectionResetError("the client left"))

    done = resp.push(sink)
    go.set()
    with pytest.raises(ConnectionResetError, match="the client left"):
        await asyncio.wait_for(done, 5)
    assert got == [b"one"]
    assert await up.peers[0].closed()


# -- pulled bodies --------------------------------------------------------------------


async def test_pulled_body_is_paced_by_a_slow_reader_and_arrives_whole(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    data = random.Random(7).randbytes(4 * 1024 * 1024)

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data))
        await peer.send(*split(data, 64))
        await peer.until_closed()

    up = await raw_upstream(handler)
    resp = await call(wire_client, up.url())
    parts: list[bytes] = []
    async with asyncio.timeout(20):
        while piece := await resp.read():
            parts.append(piece)
            await asyncio.sleep(0.005)
    resp.close()
    assert b"".join(parts) == data
    # Reading stops past the high-water mark: at most one socket read more comes in.
    assert max(map(len, parts)) <= wire_response._HIGH_WATER + 256 * 1024


# -- failures -------------------------------------------------------------------------


async def test_response_head_over_64_kib_is_refused(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    big = b"a" * (wire_conn._MAX_HEAD + 1)
    up = await raw_upstream(
        answering(b"HTTP/1.1 200 OK\r\nX-Big: %s\r\nContent-Length: 0\r\n\r\n" % big)
    )
    with pytest.raises(UpstreamProtocolError, match="exceeds"):
        await call(wire_client, up.url())


async def test_many_headers_over_64_kib_are_refused(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    fields = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 100) for i in range(700))
    up = await raw_upstream(answering(b"HTTP/1.1 200 OK\r\n%s\r\n" % fields))
    with pytest.raises(UpstreamProtocolError, match="exceeds"):
        await call(wire_client, up.url())


async def test_response_head_that_grows_past_64_kib_without_ending_is_refused(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nX-Big: ", *[b"a" * 8192] * 16)
        await peer.until_closed()

    up = await raw_upstream(handler)
    with pytest.raises(UpstreamProtocolError, match="exceeds"):
        await call(wire_client, up.url(), head=3.0)


@pytest.mark.parametrize(
    "response",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 2xx OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
    ],
)
async def test_garbage_instead_of_http_is_a_protocol_error(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool, response: bytes
) -> None:
    up = await raw_upstream(answering(response))
    with pytest.raises(UpstreamProtocolError, match="invalid response"):
        await call(wire_client, up.url())


@pytest.mark.parametrize("sent", [b"", b"HTTP/1.1 200 OK\r\nContent-Le"])
async def test_upstream_closing_before_the_headers_is_a_protocol_error(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool, sent: bytes
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(sent)
        peer.close()

    up = await raw_upstream(handler)
    with pytest.raises(UpstreamProtocolError, match="closed the connection unexpectedly"):
        await call(wire_client, up.url())
    assert len(up.peers) == 1  # a new connection's failure is not retried


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(CHUNKED + chunks(b"hello"), id="chunked"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello", id="length"),
    ],
)
async def test_upstream_closing_mid_body_breaks_the_read(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool, response: bytes
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(response)
        peer.close()

    up = await raw_upstream(handler)
    resp = await call(wire_client, up.url())
    got: list[bytes] = []
    with pytest.raises(UpstreamProtocolError, match="body is broken"):
        while piece := await resp.read():
            got.append(piece)
    resp.close()
    assert got == [b"hello"]


async def test_refused_connection_is_unreachable(wire_client: wire.ConnectionPool) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connecting is refused
        port = sock.getsockname()[1]
        with pytest.raises(UpstreamUnreachable):
            await call(wire_client, f"http://127.0.0.1:{port}/v1/x")


async def test_url_that_is_not_http_is_unreachable(wire_client: wire.ConnectionPool) -> None:
    with pytest.raises(UpstreamUnreachable, match="not http"):
        await call(wire_client, "ftp://127.0.0.1/v1/x")


async def test_no_headers_in_time_is_a_timeout_and_closes_the_connection(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.until_closed()

    up = await raw_upstream(handler)
    with pytest.raises(UpstreamTimeout, match=r"no response headers within 0\.2s"):
        await call(wire_client, up.url(), head=0.2)
    assert await up.peers[0].closed()


async def test_body_longer_than_the_total_is_a_timeout(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED + chunks(b"hello"))
        await peer.until_closed()

    up = await raw_upstream(handler)
    resp = await call(wire_client, up.url(), total=0.3)
    assert await resp.read() == b"hello"
    with pytest.raises(UpstreamTimeout, match=r"did not finish within 0\.3s"):
        await read_all(resp)
    resp.close()
    assert await up.peers[0].closed()


async def test_total_deadline_holds_while_waiting_for_the_headers(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.until_closed()

    up = await raw_upstream(handler)
    async with asyncio.timeout(3):
        with pytest.raises(UpstreamTimeout, match=r"did not finish within 0\.3s"):
            await call(wire_client, up.url(), head=0, total=0.3)  # head 0: no limit of its own
    assert await up.peers[0].closed()


async def test_cancelled_request_closes_its_connection(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    asked = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        asked.set()
        await peer.until_closed()

    up = await raw_upstream(handler)
    task = asyncio.create_task(call(wire_client, up.url()))
    await asyncio.wait_for(asked.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await up.peers[0].closed()


# -- the request ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{"X-A": "1\r\nX-Injected: 1"}, {"X-A": "1\nX-B: 2"}, {"X-A\r\nX-B": "1"}],
)
async def test_header_with_a_line_break_is_refused_before_anything_is_sent(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool, headers: dict[str, str]
) -> None:
    up = await raw_upstream(answering(OK))
    with pytest.raises(UpstreamError, match="line break"):
        await call(wire_client, up.url(), "POST", b"{}", headers)
    await fetch(wire_client, up.url())
    assert len(up.peers) == 1
    assert up.requests == [b"GET /v1/x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % up.port]


async def test_request_bytes_are_exactly_what_was_asked(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    up = await raw_upstream(answering(OK))
    headers = {"Authorization": "Bearer sk-1", "Content-Type": "application/json"}
    await fetch(wire_client, up.url("/v1/a%2Fb?x=%3F&y=a+b"), "POST", b'{"a":1}', headers)
    await fetch(wire_client, up.url("/v1/models"), "POST")
    await fetch(wire_client, up.url("/v1/models"), "GET", b"", {"Host": "api.example"})
    host = b"Host: 127.0.0.1:%d\r\n" % up.port
    assert up.requests == [
        b"POST /v1/a%2Fb?x=%3F&y=a+b HTTP/1.1\r\n"
        + host
        + b"Authorization: Bearer sk-1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 7\r\n\r\n{"a":1}',
        b"POST /v1/models HTTP/1.1\r\n" + host + b"Content-Length: 0\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: api.example\r\n\r\n",
    ]


async def test_host_header_of_an_ipv6_upstream_is_bracketed(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    try:
        up = await raw_upstream(answering(OK), "::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    _, body = await fetch(wire_client, up.url())
    assert body == b"ok"
    assert b"\r\nHost: [::1]:%d\r\n" % up.port in up.requests[0]


# ---------------------------------------------------------------- TLS and names


async def test_an_https_upstream_is_verified_by_name_and_answers(
    tls_files: tuple[str, str], wire_client: wire.ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tls_files
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # what the default context trusts
    tls = await tls_upstream(cert, key)
    runner, port = tls.runner, tls.port
    try:
        # "localhost" may be looked up as ::1 first, where nothing listens: the next
        # address is tried.
        resp, body = await fetch(wire_client, f"https://localhost:{port}/hello")
        assert (resp.status, body) == (200, f"tls localhost:{port}".encode())
        resp, body = await fetch(wire_client, f"https://127.0.0.1:{port}/hello")
        assert resp.status == 200
    finally:
        await runner.cleanup()


async def test_an_https_upstream_with_an_untrusted_certificate_is_refused(
    tls_files: tuple[str, str], wire_client: wire.ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tls_files
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent")
    monkeypatch.setenv("SSL_CERT_DIR", "/nonexistent")
    tls = await tls_upstream(cert, key)
    runner, port = tls.runner, tls.port
    try:
        with pytest.raises(UpstreamUnreachable, match=r"TLS failed: .*certificate"):
            await fetch(wire_client, f"https://localhost:{port}/hello")
    finally:
        await runner.cleanup()


async def test_a_host_name_is_looked_up_once_for_concurrent_new_connections(
    raw_upstream: StartRawUpstream, wire_client: wire.ConnectionPool
) -> None:
    async def handler(peer: Peer) -> None:
        await answer(peer, OK)

    up = await raw_upstream(handler)
    port = up.port
    url = f"http://localhost:{port}/x"
    results = await asyncio.gather(*(fetch(wire_client, url) for _ in range(5)))
    assert [body for _, body in results] == [b"ok"] * 5
    assert len(up.peers) >= 2, "the requests ran concurrently, on several connections"
    assert list(wire_client._dns) == [("localhost", port)]
    assert "127.0.0.1" in wire_client._dns[("localhost", port)][1]
    assert wire_client._resolving == {}
