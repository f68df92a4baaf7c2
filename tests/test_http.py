"""seamline's HTTP serving (aiohttp's server, seamline's limits and errors) end to end:
exact bytes over loopback sockets to a real seamline (started in process), with the
scripted upstream behind it where a /v1 request needs one. Keep-alive, pipelining,
HTTP/1.0, malformed and oversized requests, request body encodings and deadlines,
upgrades, timeouts, client disconnects and drain; and the aiohttp internals seamline
relies on, pinned so that an aiohttp upgrade that changes them fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import itertools
import json
import re
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NamedTuple, cast

import pytest
from aiohttp import web
from aiohttp.http_writer import StreamWriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from proxy import config as cfg
from proxy.gateway import serving
from proxy.gateway.app import Runner, create_app, drain, start, web_app
from proxy.gateway.serving import MAX_FIELD
from support.builders import LAST_CHUNK, chunk, chunks, config_text, event, sse_stream
from support.upstream import Upstream

# An account that is never called: tests without a /v1 request need no upstream.
NOWHERE = "http://127.0.0.1:9/v1"
ROUTE = b"/v1/chat/completions"
# Asks for the usage already: it goes upstream byte for byte.
CHAT = json.dumps(
    {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
).encode()
# A header field as RFC 9110 allows it: a token, a colon, a value without CR or LF.
FIELD = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[ \t]*[^\r\n]*$")

Serve = Callable[..., Awaitable[Runner]]


class Answer(NamedTuple):
    """One answer as it came off the wire."""

    status: int
    head: bytes  # the status line and header lines, without the blank line
    headers: dict[str, str]  # names lower-cased
    body: bytes  # dechunked
    wire_body: bytes  # the body's bytes as sent (chunk framing included)

    def json(self) -> Any:
        return json.loads(self.body)


class Peer:
    """A raw client connection: write exact bytes, read exact answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, *, head_request: bool = False, within: float = 5) -> Answer:
        async with asyncio.timeout(within):
            return await read_answer(self.reader, head_request=head_request)

    async def closed(self, within: float = 5) -> bool:
        """True once the server closed the connection with nothing more sent."""
        async with asyncio.timeout(within):
            try:
                return await self.reader.read() == b""
            except ConnectionResetError:
                return True


async def read_answer(reader: asyncio.StreamReader, *, head_request: bool = False) -> Answer:
    """One HTTP/1.1 answer: Content-Length, chunked, or up to the connection's end."""
    head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if head_request or status in (204, 304) or 100 <= status < 200:
        return Answer(status, head, headers, b"", b"")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        wire: list[bytes] = []
        body: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            wire.append(size_line)
            size = int(size_line.split(b";")[0], 16)
            if not size:
                end = await reader.readuntil(b"\r\n")
                assert end == b"\r\n", f"trailer or junk after the last chunk: {end!r}"
                wire.append(end)
                break
            data = await reader.readexactly(size + 2)
            assert data.endswith(b"\r\n"), data[-20:]
            wire.append(data)
            body.append(data[:-2])
        return Answer(status, head, headers, b"".join(body), b"".join(wire))
    if "content-length" in headers:
        data = await reader.readexactly(int(headers["content-length"]))
        return Answer(status, head, headers, data, data)
    data = await reader.read()
    return Answer(status, head, headers, data, data)


@contextlib.asynccontextmanager
async def connect(runner: Runner) -> AsyncIterator[Peer]:
    host, port = runner.addresses[0][:2]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        yield Peer(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.fixture(autouse=True, scope="module")
def _frozen_heap() -> Iterator[None]:
    """What exists before these tests is left out of their collections: each is quick."""
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
async def no_loop_errors(_frozen_heap: None) -> AsyncIterator[None]:
    """Fail on what the loop would only log: a task's exception nobody retrieved, say."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    gc.collect()
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert errors == []


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start seamline (``proxy.gateway.app.start``) with one account; returns its runner."""
    runners: list[Runner] = []

    async def _start(url: str = NOWHERE, server: str = "") -> Runner:
        conf = cfg.parse(config_text(("a", url), server=server), "test.toml", {})
        runner = await start(conf, "127.0.0.1", 0)
        runners.append(runner)
        return runner

    yield _start
    for r in runners:
        await r.cleanup()


def get(path: bytes, *headers: bytes, method: bytes = b"GET", version: bytes = b"1.1") -> bytes:
    lines = [method + b" " + path + b" HTTP/" + version, b"Host: seamline", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def post(
    body: bytes = CHAT, *headers: bytes, path: bytes = ROUTE, version: bytes = b"1.1"
) -> bytes:
    lines = [
        b"POST " + path + b" HTTP/" + version,
        b"Host: seamline",
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        *headers,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def until(cond: Callable[[], bool]) -> None:
    """Wait (two seconds at most) until ``cond()`` holds."""
    async with asyncio.timeout(2):
        while True:
            if cond():
                return
            await asyncio.sleep(0.01)


def error_of(answer: Answer) -> dict[str, Any]:
    """The OpenAI-format error of an answer, checked for its shape."""
    assert answer.headers["content-type"].startswith("application/json"), answer.head
    body = answer.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    err: dict[str, Any] = body["error"]
    return err


STREAM = b"".join(sse_stream("one", "two"))


# -- 1. keep-alive -------------------------------------------------------------------------


async def test_two_requests_on_one_connection_are_both_answered(serve: Serve) -> None:
    runner = await serve()
    async with connect(runner) as peer:
        for path in (b"/healthz", b"/readyz"):
            await peer.send(get(path))
            answer = await peer.answer()
            assert answer.status == 200, answer.head
            assert "connection" not in answer.headers  # HTTP/1.1: kept alive by default
        assert answer.json()["status"] == "ready"


async def test_a_streamed_completion_then_healthz_share_one_connection(
    upstream: Upstream, serve: Serve
) -> None:
    upstream.script(*sse_stream("one", "two"))
    runner = await serve(upstream.url)
    async with connect(runner) as peer:
        await peer.send(post())
        stream = await peer.answer()
        assert stream.status == 200
        assert stream.headers["transfer-encoding"] == "chunked"
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert "connection" not in stream.headers
        assert stream.body == STREAM
        assert stream.wire_body.endswith(b"\r\n0\r\n\r\n")
        await peer.send(get(b"/healthz"))
        health = await peer.answer()
        assert health.status == 200
        assert health.json() == {"status": "ok"}
    assert len(upstream.requests) == 1


async def test_connection_close_from_the_client_is_answered_and_the_connection_closed(
    serve: Serve,
) -> None:
    runner = await serve()
    async with connect(runner) as peer:
        await peer.send(get(b"/healthz", b"Connection: close"))
        answer = await peer.answer()
        assert answer.status == 200
        assert answer.headers["connection"] == "close"
        assert await peer.closed()


# -- 2. pipelining -------------------------------------------------------------------------


async def test_three_pipelined_requests_are_answered_in_order(serve: Serve) -> None:
    runner = await serve()
    async with connect(runner) as peer:
        await peer.send(get(b"/healthz") + get(b"/nope") + get(b"/readyz"))
        answers = [await peer.answer() for _ in range(3)]
        assert [a.status for a in answers] == [200, 404, 200]
        assert answers[0].json() == {"status": "ok"}
        assert error_of(answers[1])["code"] == "not_found"
        assert answers[2].json()["status"] == "ready"
        # Still open: one more request is answered.
        await peer.send(get(b"/healthz"))
        assert (await peer.answer()).status == 200


async def test_a_request_pipelined_behind_a_stream_is_answered_after_the_stream(
    upstream: Upstream, serve: Serve
) -> None:
    upstream.script(*sse_stream("one", "two"), pause=0.05)
    runner = await serve(upstream.url)
    async with connect(runner) as peer:
        await peer.send(post() + get(b"/healthz") + post(b'{"model": "m"'))
        stream = await peer.answer()
        assert stream.status == 200
        assert stream.body == STREAM
        assert stream.wire_body.endswith(b"\r\n0\r\n\r\n")
        health = await peer.answer()
        assert health.status == 200
        assert health.json() == {"status": "ok"}
        bad = await peer.answer()
        assert bad.status == 400
        assert error_of(bad)["code"] == "invalid_json"


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", id="garbage-head"),
        pytest.param(
            b"POST /v1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", id="bad-body"
        ),
    ],
)
async def test_requests_pipelined_before_bad_bytes_are_answered_then_the_connection_closes(
    serve: Serve, bad: bytes
) -> None:
    runner = await serve()
    async with connect(runner) as peer:
        # In reads of their own: aiohttp's parser drops what it parsed of a read before
        # the bytes it refuses in it, and answers only the refusal.
        await peer.send(get(b"/healthz") + get(b"/readyz"))
        await asyncio.sleep(0.05)
        await peer.send(bad)
        first = await peer.answer()
        assert first.status == 200
        assert first.json() == {"status": "ok"}
        assert "connection" not in first.headers
        second = await peer.answer()
        assert second.status == 200
        assert second.json()["status"] == "ready"
        refused = await peer.answer()  # the bad bytes: answered, and nothing after them
        assert refused.status == 400, refused.head
        assert error_of(refused)["type"] == "invalid_request_error"
        assert refused.headers["connection"] == "close"
        assert await peer.closed()


# -- 3. HTTP/1.0 ---------------------------------------------------------------------------


@pytest.mark.parametrize("keep_alive", [False, True])
async def test_an_http_10_stream_is_unchunked_and_ends_with_the_connection(
    upstream: Upstream, serve: Serve, keep_alive: bool
) -> None:
    upstream.script(*sse_stream("one", "two"))
    runner = await serve(upstream.url)
    extra = (b"Connection: keep-alive",) if keep_alive else ()
    async with connect(runner) as peer:
        await peer.send(post(CHAT, *extra, version=b"1.0"))
        answer = await peer.answer()
        assert answer.status == 200
        assert "transfer-encoding" not in answer.headers
        assert "content-length" not in answer.headers
        assert answer.headers["connection"] == "close"
        assert answer.body == STREAM  # read up to the connection's end
        assert await peer.closed()


async def test_http_10_keep_alive_keeps_the_connection(serve: Serve) -> None:
    runner = await serve()
    async with connect(runner) as peer:
        for _ in range(2):
            await peer.send(get(b"/healthz", b"Connection: keep-alive", version=b"1.0"))
            answer = await peer.answer()
            assert answer.status == 200
            assert answer.headers["connection"].lower() == "keep-alive"
            assert answer.json() == {"status": "ok"}
        # Without keep-alive, an HTTP/1.0 answer ends the connection.
        await peer.send(get(b"/healthz", version=b"1.0"))
        answer = await peer.answer()
        assert answer.status == 200
        assert answer.headers.get("connection", "close") == "close"  # HTTP/1.0's default
        assert await peer.closed()


# -- 4. malformed requests -----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(64)), id="tls"),
        pytest.param(b"\x00\x01garbage\r\n\r\n", id="garbage"),
        pytest.param(b"GET\r\n\r\n", id="no-target"),
        pytest.param(b"GET /healthz HTTP/9.9\r\nHost: s\r\n\r\n", id="bad-version"),
        pytest.param(b"GET /health z HTTP/1.1\r\nHost: s\r\n\r\n", id="space-in-target"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nBad Name: x\r\n\r\n", id="space-in-name"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", id="nul-in-value"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nX-A: a\rb: c\r\n\r\n", id="bare-cr"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nX-A: a\r\n folded\r\n\r\n", id="obs-fold"),
        pytest.param(b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", id="connect"),
        pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", id="asterisk"),
        pytest.param(b"POST /v1/x HTTP/1.1\r\nContent-Length: 1x\r\n\r\n1", id="bad-length"),
        pytest.param(
            b"POST /v1/x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            id="two-lengths",
        ),
        pytest.param(
            b"POST /v1/x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\n",
            id="length-and-chunked",
        ),
        pytest.param(
            b"POST /v1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
            id="bad-chunk-size",
        ),
    ],
)
async def test_a_malformed_request_gets_a_400_json_error_and_the_connection_closes(
    serve: Serve, data: bytes
) -> None:
    runner = await serve()
    async with connect(runner) as peer:
        await peer.send(data)
        answer = await peer.answer()
        assert answer.status == 400, answer.head
        assert answer.headers["connection"] == "close"
        assert error_of(answer)["type"] == "invalid_request_error"
        assert await peer.closed()


async def test_a_bad_chunk_in_a_body_being_read_is_a_400_and_closed(
    upstream: Upstream, serve: Serve
) -> None:
    runner = await serve(upstream.url)
    async with connect(runner) as peer:
        await peer.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'5\r\n{"a":\r\n'
        )
        await asyncio.sleep(0.05)  # the handler waits for the rest of the body
        await peer.send(b"5\r\n1}   \r\nzz\r\n")
        answer = await peer.answer()
        assert answer.status == 400
        message = error_of(answer)["message"]
        assert message == "invalid HTTP request: Invalid character in chunk size"
        assert answer.headers["connection"] == "close"
        assert await peer.closed()
    assert upstream.requests == []


async def test_a_trailer_that_never_ends_is_refused_at_its_limit_and_closed(
    upstream: Upstream, serve: Serve
) -> None:
    runner = await serve(upstream.url)
    async with connect(runner) as peer:
        await peer.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n"
            b'\r\n5\r\n{"a":\r\n0\r\nX-Trailer: '
        )
        # Past the limit, and then no more: bytes still coming when the server closes
        # would reset the connection (tests/test_memory.py sends without end).
        for _ in range(3):
            await peer.send(b"a" * 8192)
        answer = await peer.answer()
        assert answer.status == 431, answer.head
        assert error_of(answer)["message"] == f"request header field exceeds {MAX_FIELD} bytes"
        assert answer.headers["connection"] == "close"
        assert await peer.closed()
    assert upstream.requests == []


# -- 5. oversized heads --------------------------------------------------------------------


@pytest.mark.parametrize(("length", "status"), [(8190, 404), (8191, 414)])
async def test_a_url_over_8190_bytes_is_414(serve: Serve, length: int, status: int) -> None:
    runner = await serve()
    target = b"/x" + b"a" * (length - 2)
    async with connect(runner) as peer:
        await peer.send(get(target))
        answer = await peer.answer()
        assert answer.status == status, answer.head
        err = error_of(answer)
        if status == 414:
            assert err["message"] == "request URL exceeds 8190 bytes"
            assert answer.headers["connection"] == "close"
            assert await peer.closed()


@pytest.mark.parametrize(("fields", "status"), [(128, 200), (129, 431)])
async def test_more_than_128_header_fields_is_431(serve: Serve, fields: int, status: int) -> None:
    runner = await serve()
    extra = [b"X-F%d: v" % i for i in range(fields - 1)]  # and Host
    async with connect(runner) as peer:
        await peer.send(get(b"/healthz", *extra))
        answer = await peer.answer()
        assert answer.status == status, answer.head
        if status == 431:
            assert error_of(answer)["message"] == "request has more than 128 header fields"
            assert answer.headers["connection"] == "close"
            assert await peer.closed()


async def test_a_header_field_that_keeps_growing_is_431_and_closed(serve: Serve) -> None:
    runner = await serve()
    async with connect(runner) as peer:
        await peer.send(b"GET /healthz HTTP/1.1\r\nHost: s\r\nX-Big: ")
        for _ in range(3):  # one value, never ended (past the limit, then no more: see
            await peer.send(b"a" * 8192)  # the trailer's test)
            await asyncio.sleep(0.01)
        answer = await peer.answer()
        assert answer.status == 431, answer.head
        assert error_of(answer)["message"] == f"request header field exceeds {MAX_FIELD} bytes"
        assert answer.headers["connection"] == "close"
        assert await peer.closed()


@pytest.mark.parametrize(("size", "status"), [(MAX_FIELD, 200), (MAX_FIELD + 1, 431)])
async def test_a_header_field_over_16_kib_sent_at_once_is_431(
    serve: Serve, size: int, status: int
) -> None:
    runner = await serve()
    async with connect(runner) as peer:
        # aiohttp's C parser holds a field's value (and its name) to the limit.
        await peer.send(get(b"/healthz", b"X-Big: " + b"a" * size))
        answer = await peer.answer()
        assert answer.status == status, answer.head
        if status == 431:
            assert error_of(answer)["message"] == f"request header field exceeds {MAX_FIELD} bytes"
            assert answer.headers["connection"] == "close"
            assert await peer.closed()


# -- 6. request bodies over max_body_bytes ------------------------------------------------


async def test_a_content_length_over_max_body_bytes_is_413_before_the_body_is_sent(
    upstream: Upstream, serve: Serve
) -> None:
    runner = await serve(upstream.url, "max_body_bytes = 1024")
    async with connect(runner) as peer:
        await peer.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: s\r\nContent-Length: 5000\r\n\r\n"
        )
        answer = await peer.answer()  # the body was never sent
        assert answer.status == 413
        assert error_of(answer)["code"] == "request_too_large"
        assert answer.headers["connection"] == "close"
        assert await peer.closed()
    assert upstream.requests == []


async def test_a_chunked_body_that_grows_past_max_body_bytes_is_413_and_closed(
    upstream: Upstream, serve: Serve
) -> None:
    runner = await serve(upstream.url, "max_body_bytes = 1024")
    async with connect(runner) as peer:
        await peer.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        await peer.send(b"400\r\n" + b" " * 1024 + b"\r\n")
        await peer.send(b"10\r\n" + b" " * 16 + b"\r\n")  # never ended with 0\r\n\r\n
        answer = await peer.answer()
        assert answer.status == 413
        assert error_of(answer)["message"] == "request body exceeds 1024 bytes"
        assert answer.headers["connection"] == "close"
        assert await peer.closed()
    assert upstream.requests == []


# -- 7. request body encodings -------------------------------------------------------------


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        pytest.param(b"gzip", gzip.compress, id="gzip"),
        pytest.param(b"deflate", zlib.compress, id="deflate-zlib"),
        pytest.param(b"deflate", _raw_deflate, id="deflate-raw"),
    ],
)
async def test_a_compressed_request_body_reaches_the_upstream_inflated(
    upstream: Upstream, serve: Serve, encoding: bytes, compress: Callable[[bytes], bytes]
) -> None:
    upstream.script(*sse_stream("ok"))
    runner = await serve(upstream.url)
    async with connect(runner) as peer:
        await peer.send(post(compress(CHAT), b"Content-Encoding: " + encoding))
        answer = await peer.answer()
        assert answer.status == 200, answer.body
        assert answer.body == b"".join(sse_stream("ok"))
    assert upstream.requests[0]["body"] == CHAT
    assert "content-encoding" not in {k.lower() for k in upstream.requests[0]["headers"]}


async def test_a_gzip_bomb_past_max_body_bytes_is_413(upstream: Upstream, serve: Serve) -> None:
    runner = await serve(upstream.url, "max_body_bytes = 65536")
    bomb = gzip.compress(CHAT[:-1] + b" " * 10_000_000 + b"}")
    assert len(bomb) < 65536
    async with connect(runner) as peer:
        await peer.send(post(bomb, b"Content-Encoding: gzip"))
        answer = await peer.answer()
        assert answer.status == 413
        err = error_of(answer)
        assert err["code"] == "request_too_large"
        assert "inflated" in err["message"]
    assert upstream.requests == []


BAD_ENCODING = "invalid_content_encoding"


UNSUPPORTED = "unsupported_content_encoding"


@pytest.mark.parametrize(
    ("encoding", "body", "status", "code"),
    [
        # Codings aiohttp does not inflate reach seamline as they were sent: refused.
        pytest.param(b"x-gzip", gzip.compress(CHAT), 415, UNSUPPORTED, id="x-gzip"),
        pytest.param(b"compress", b"\x1f\x9d\x90", 415, UNSUPPORTED, id="compress"),
        pytest.param(b"gzip, gzip", gzip.compress(gzip.compress(CHAT)), 415, UNSUPPORTED, id="two"),
        # A body that does not inflate.
        pytest.param(b"gzip", b"not gzip at all", 400, BAD_ENCODING, id="not-gzip"),
        pytest.param(b"deflate", b"not deflate at all", 400, BAD_ENCODING, id="not-deflate"),
        # Cut short, it inflates to a part of the JSON: refused as such.
        pytest.param(b"gzip", gzip.compress(CHAT)[:-12], 400, "invalid_json", id="cut-gzip"),
    ],
)
async def test_an_unreadable_request_body_encoding_is_refused_with_json(
    upstream: Upstream, serve: Serve, encoding: bytes, body: bytes, status: int, code: str
) -> None:
    runner = await serve(upstream.url)
    async with connect(runner) as peer:
        await peer.send(post(body, b"Content-Encoding: " + encoding))
        answer = await peer.answer()
        assert answer.status == status, answer.body
        assert error_of(answer)["code"] == code
        if code != BAD_ENCODING:
            # The body was read whole: the connection carries the next request.
            await peer.send(get(b"/healthz"))
            assert (await peer.answer()).status == 200
        else:  # the parser gave up on the body, and on the connection
            assert answer.headers["connection"] == "close"
            assert await peer.closed()
    assert upstream.requests == []


async def test_a_coding_aiohttp_cannot_inflate_here_is_415_at_the_head(serve: Serve) -> None:
    # br (and zstd) need modules seamline does not install: aiohttp refuses at the head.
    runner = await serve()
    async with connect(runner) as peer:
        await peer.send(post(b"\x1b\x03\x00", b"Content-Encoding: br"))
        answer = await peer.answer()
        assert answer.status == 415, answer.head
        assert error_of(answer)["code"] == UNSUPPORTED
        assert answer.headers["connection"] == "close"
        assert await peer.closed()


# -- 8. methods and paths ------------------------------------------------------------------


async def test_head_healthz_has_a_content_length_and_no_body(serve: Serve) -> None:
    runner = await serve()
    async with connect(runner) as peer:
        # Pipelined: a body after the HEAD answer would show up as the next answer.
        await peer.send(get(b"/healthz", method=b"HEAD") + get(b"/healthz"))
        head = await peer.answer(head_request=True)
        assert head.status == 200
        whole = await peer.answer()
        assert whole.status == 200
        assert whole.body == b'{"status": "ok"}'
        assert head.headers["content-length"] == str(len(whole.body))
        assert head.headers["content-type"] == whole.headers["content-type"]


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        pytest.param(get(ROUTE, b"Content-Length: 0", method=b"PUT"), 405, "method_not_allowed"),
        pytest.param(get(b"/healthz", method=b"POST"), 405, "method_not_allowed"),
        pytest.param(get(b"/metrics", method=b"DELETE"), 405, "method_not_allowed"),
        pytest.param(get(b"/nope"), 404, "not_found"),
        pytest.param(get(b"/v1"), 404, "not_found"),
        pytest.param(get(b"/v1/"), 404, "not_found"),
        pytest.param(get(b"/v1/../healthz"), 404, "not_found"),
        pytest.param(get(b"/v1/./models"), 404, "not_found"),
        pytest.param(get(b"/v1/%2e%2e/x"), 404, "not_found"),
        pytest.param(get(b"/v1/models/.."), 404, "not_found"),
    ],
)
async def test_a_wrong_method_or_path_gets_a_json_error(
    serve: Serve, request_bytes: bytes, status: int, code: str
) -> None:
    runner = await serve()
    async with connect(runner) as peer:
        await peer.send(request_bytes)
        answer = await peer.answer()
        assert answer.status == status, answer.head
        assert error_of(answer)["code"] == code
        assert answer.headers["x-request-id"]
        assert "connection" not in answer.headers  # a refused request keeps the connection


async def test_an_absolute_form_target_is_served_by_its_path(serve: Serve) -> None:
    runner = await serve()
    async with connect(runner) as peer:
        await peer.send(get(b"http://seamline/healthz"))
        answer = await peer.answer()
        assert answer.status == 200
        assert answer.json() == {"status": "ok"}


# -- 9. upgrades ---------------------------------------------------------------------------


async def test_an_h2c_upgrade_is_answered_as_http_11_and_the_connection_kept(
    serve: Serve,
) -> None:
    runner = await serve()
    async with connect(runner) as peer:
        # As curl --http2 asks, then (were it upgraded) the HTTP/2 preface.
        await peer.send(
            get(
                b"/healthz",
                b"Connection: Upgrade, HTTP2-Settings",
                b"Upgrade: h2c",
                b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
            )
        )
        answer = await peer.answer()
        assert answer.head.startswith(b"HTTP/1.1 200 ")
        assert answer.json() == {"status": "ok"}
        assert "upgrade" not in answer.headers
        # Not upgraded: the connection goes on speaking HTTP/1.1.
        await peer.send(get(b"/readyz"))
        assert (await peer.answer()).json()["status"] == "ready"


async def test_a_websocket_upgrade_pipelined_between_requests_is_answered_in_order(
    serve: Serve,
) -> None:
    runner = await serve()
    async with connect(runner) as peer:
        upgrade = get(
            b"/readyz",
            b"Connection: Upgrade",
            b"Upgrade: websocket",
            b"Sec-WebSocket-Version: 13",
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        )
        await peer.send(get(b"/healthz") + upgrade + get(b"/healthz", method=b"HEAD"))
        first = await peer.answer()
        assert first.status == 200
        second = await peer.answer()
        assert second.head.startswith(b"HTTP/1.1 200 ")  # not 101: no protocol switch
        assert second.json()["status"] == "ready"
        assert "upgrade" not in second.headers
        third = await peer.answer(head_request=True)  # what followed it is read as HTTP
        assert third.status == 200


H2C = (b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABk")


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("split", [0, 1, 7, len(CHAT) - 1], ids=lambda n: f"split-{n}")
async def test_a_post_asking_for_h2c_has_its_body_read_and_is_answered(
    upstream: Upstream, serve: Serve, split: int, chunked: bool
) -> None:
    # curl --http2 on http:// asks this way for a POST too.
    upstream.script(*sse_stream("ok"))
    runner = await serve(upstream.url)
    if chunked:
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: s\r\n" + b"\r\n".join(H2C)
        request = head + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(CHAT, [9])
    else:
        request = post(CHAT, *H2C)
    head_end = request.index(b"\r\n\r\n") + 4 + split
    async with connect(runner) as peer:
        await peer.send(request[:head_end])
        await asyncio.sleep(0.05)
        await peer.send(request[head_end:])
        answer = await peer.answer()
        assert answer.status == 200, answer.body
        assert answer.body == b"".join(sse_stream("ok"))
        await peer.send(get(b"/healthz"))
        assert (await peer.answer()).status == 200
    assert upstream.requests[0]["body"] == CHAT


# -- 10. timeouts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"", id="nothing"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: s\r\n", id="part-of-a-head"),
    ],
)
async def test_a_client_that_sends_no_whole_head_is_closed_after_the_keepalive_timeout(
    serve: Serve, sent: bytes
) -> None:
    runner = await serve(server="keepalive_s = 0.3")
    async with connect(runner) as peer:
        began = time.monotonic()
        await peer.send(sent)
        assert await peer.closed(within=2)
        assert 0.25 < time.monotonic() - began < 1.5


async def test_a_head_sent_slowly_is_closed_at_the_keepalive_timeout_from_its_start(
    serve: Serve,
) -> None:
    runner = await serve(server="keepalive_s = 0.3")
    async with connect(runner) as peer:
        began = time.monotonic()
        with contextlib.suppress(ConnectionError):
            for byte in get(b"/healthz"):  # a byte every 50 ms: 1.6 s for the whole head
                await peer.send(bytes([byte]))
                await asyncio.sleep(0.05)
                if peer.reader.at_eof():
                    break
        assert await peer.closed(within=2)
        assert time.monotonic() - began < 1.0


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(
    serve: Serve,
) -> None:
    runner = await serve(server="keepalive_s = 0.3")
    async with connect(runner) as peer:
        await asyncio.sleep(0.2)
        await peer.send(get(b"/healthz"))
        assert (await peer.answer()).status == 200
        # A request inside the timeout is answered, and starts it again.
        await asyncio.sleep(0.2)
        await peer.send(get(b"/healthz"))
        assert (await peer.answer()).status == 200
        answered = time.monotonic()
        assert await peer.closed(within=2)
        assert 0.25 < time.monotonic() - answered < 1.5


# -- 10b. request bodies: the deadline and the floor rate ----------------------------------


async def _trickle(peer: Peer, data: bytes, piece: int, every: float) -> None:
    """Send ``data`` ``piece`` bytes at a time, one piece every ``every`` seconds."""
    with contextlib.suppress(ConnectionError):
        for i in range(0, len(data), piece):
            await peer.send(data[i : i + piece])
            await asyncio.sleep(every)


async def test_a_body_that_stops_arriving_is_408_at_its_deadline(
    upstream: Upstream, serve: Serve
) -> None:
    runner = await serve(upstream.url, "body_timeout_s = 0.3\nbody_min_rate = 0")
    async with connect(runner) as peer:
        began = time.monotonic()
        await peer.send(post(CHAT)[:-10])  # the head and all but 10 bytes of the body
        answer = await peer.answer(within=2)
        assert answer.status == 408
        assert error_of(answer)["code"] == "request_timeout"
        assert error_of(answer)["message"] == "request body not complete within 0.3s"
        assert answer.headers["connection"] == "close"
        assert 0.25 < time.monotonic() - began < 1.0
        assert await peer.closed()
    assert upstream.requests == []


async def test_a_body_slower_than_the_floor_rate_is_408_once_the_grace_is_over(
    upstream: Upstream, serve: Serve
) -> None:
    runner = await serve(
        upstream.url, "body_timeout_s = 30\nbody_min_rate = 1000\nbody_rate_grace_s = 0.4"
    )
    request = post(CHAT + b" " * 2000)
    head = request.index(b"\r\n\r\n") + 4
    async with connect(runner) as peer:
        began = time.monotonic()
        await peer.send(request[:head])
        sending = asyncio.create_task(_trickle(peer, request[head:], 10, 0.05))  # 200 B/s
        try:
            answer = await peer.answer(within=3)
        finally:
            sending.cancel()
        took = time.monotonic() - began
        assert answer.status == 408, answer.body
        assert error_of(answer)["message"].startswith("request body too slow: ")
        # The grace, plus a second for each 1000 bytes that came: well before the deadline.
        assert 0.4 < took < 1.2
        assert await peer.closed()
    assert upstream.requests == []


async def test_a_body_faster_than_the_floor_rate_is_read_whole_past_the_grace(
    upstream: Upstream, serve: Serve
) -> None:
    upstream.script(*sse_stream("ok"))
    runner = await serve(
        upstream.url, "body_timeout_s = 30\nbody_min_rate = 1000\nbody_rate_grace_s = 0.2"
    )
    request = post(CHAT[:-1] + b" " * 1500 + b"}")
    head = request.index(b"\r\n\r\n") + 4
    async with connect(runner) as peer:
        began = time.monotonic()
        await peer.send(request[:head])
        await _trickle(peer, request[head:], 200, 0.05)  # 4,000 B/s
        answer = await peer.answer()
        assert time.monotonic() - began > 0.3  # it arrived after the grace
        assert answer.status == 200, answer.body
        assert answer.body == b"".join(sse_stream("ok"))
    assert len(upstream.requests[0]["body"]) == len(CHAT) + 1500


async def test_a_trickling_body_holds_its_slot_only_until_its_deadline(
    upstream: Upstream, serve: Serve
) -> None:
    upstream.script(*sse_stream("ok"))
    runner = await serve(upstream.url, "max_concurrent = 1\nbody_timeout_s = 0.5")
    gate = runner.app.gate
    async with connect(runner) as slow, connect(runner) as other:
        await slow.send(post(CHAT)[:-10])
        await until(lambda: gate.in_flight == 1)
        await other.send(post(CHAT))
        refused = await other.answer()
        assert refused.status == 503  # the slot is taken...
        assert error_of(refused)["message"] == "too many concurrent requests"
        assert (await slow.answer(within=2)).status == 408
        assert gate.in_flight == 0  # ...and free again at the deadline
    async with connect(runner) as later:
        await later.send(post(CHAT))
        assert (await later.answer()).status == 200


async def test_header_bytes_outside_ascii_reach_the_upstream_unchanged(
    upstream: Upstream, serve: Serve
) -> None:
    upstream.script(*sse_stream("ok"))
    runner = await serve(upstream.url)
    value = "café ☕".encode()  # UTF-8 bytes, as a client would send them
    async with connect(runner) as peer:
        await peer.send(post(CHAT, b"X-Note: " + value))
        assert (await peer.answer()).status == 200
    sent = {k.lower(): v for k, v in upstream.requests[0]["headers"].items()}
    # aiohttp (the scripted upstream) reads header bytes as UTF-8.
    assert sent["x-note"].encode("utf-8", "surrogateescape") == value


# -- 11. a client that leaves mid-stream ---------------------------------------------------


async def test_a_client_that_leaves_mid_stream_closes_the_upstream_and_is_logged_499(
    upstream: Upstream, serve: Serve
) -> None:
    first = event(chunk("thinking"))
    upstream.script(first, ending="hang")
    runner = await serve(upstream.url)
    loop = asyncio.get_running_loop()
    with capture_logs() as logs:
        async with connect(runner) as peer:
            await peer.send(post())
            async with asyncio.timeout(5):
                head = await peer.reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 ")
                size = await peer.reader.readuntil(b"\r\n")
                assert await peer.reader.readexactly(int(size, 16) + 2) == first + b"\r\n"
            peer.writer.transport.abort()
        gone = loop.time()
        await until(lambda: bool(upstream.closed) and any(e["event"] == "request" for e in logs))
    assert upstream.closed[0] - gone < 1.0
    lines = [e for e in logs if e["event"] == "request"]
    assert len(lines) == 1
    assert lines[0]["status"] == 499
    assert lines[0]["client_gone"] is True
    assert lines[0]["route"] == "/v1/chat/completions"


# -- 12. Expect: 100-continue --------------------------------------------------------------


async def test_a_refused_request_expecting_100_continue_gets_its_401_without_a_100(
    upstream: Upstream, serve: Serve
) -> None:
    runner = await serve(upstream.url, 'api_keys = ["good-client-key"]')
    async with connect(runner) as peer:
        await peer.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer wrong\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(CHAT)
        )
        answer = await peer.answer()  # the first answer, and the only one
        assert answer.status == 401
        assert error_of(answer)["code"] == "invalid_api_key"
        assert answer.headers["connection"] == "close"  # the body was never read
        assert await peer.closed()
    assert upstream.requests == []


async def test_an_accepted_request_expecting_100_continue_gets_it_then_its_answer(
    upstream: Upstream, serve: Serve
) -> None:
    upstream.script(*sse_stream("ok"))
    runner = await serve(upstream.url, 'api_keys = ["good-client-key"]')
    async with connect(runner) as peer:
        await peer.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: s\r\n"
            b"Authorization: Bearer good-client-key\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(CHAT)
        )
        interim = await peer.answer()
        assert interim.head == b"HTTP/1.1 100 Continue"
        await peer.send(CHAT)
        answer = await peer.answer()
        assert answer.status == 200
        assert answer.body == b"".join(sse_stream("ok"))
        # Kept alive: the body was read whole.
        await peer.send(get(b"/healthz"))
        assert (await peer.answer()).status == 200
    assert upstream.requests[0]["body"] == CHAT


# -- 13. odd upstream headers --------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_upstream(head: bytes, body: bytes) -> AsyncIterator[str]:
    """An upstream that answers every request with exactly these bytes; its /v1 URL."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            request = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", request)
            await reader.readexactly(int(length.group(1)) if length else 0)
            writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        await server.wait_closed()


# Content-Disposition: a header seamline forwards (server.forward_response_headers).
LEFT_OUT = b"(left out)"


@pytest.mark.parametrize(
    ("odd", "relayed"),
    [
        pytest.param(b"Content-Disposition: one\r\n two\r\n", None, id="obs-fold"),
        pytest.param(b"Content-Disposition: one\rX-Injected: two\r\n", None, id="bare-cr"),
        pytest.param(b"Content-Disposition: one\nX-Injected: two\r\n", None, id="bare-lf"),
        pytest.param(b"Content-Disposition: one\x01two\r\n", None, id="control-char"),
        # Octets past ASCII go out as they came when they are UTF-8 (a C1 control too:
        # aiohttp writes headers as UTF-8); others are left out, never mangled.
        pytest.param(
            b"Content-Disposition: caf\xc3\xa9 \xc2\x85 end\r\n",
            b"Content-Disposition: caf\xc3\xa9 \xc2\x85 end",
            id="utf-8",
        ),
        pytest.param(b"Content-Disposition: caf\xe9 end\r\n", LEFT_OUT, id="latin-1"),
        pytest.param(b"Content-Disposition: \r\n", b"Content-Disposition: ", id="empty"),
    ],
)
async def test_an_answer_head_never_holds_a_split_header_whatever_the_upstream_sends(
    serve: Serve, odd: bytes, relayed: bytes | None
) -> None:
    body = json.dumps({"object": "list", "data": []}).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + odd
    async with raw_upstream(head, body) as url:
        runner = await serve(url)
        async with connect(runner) as peer:
            await peer.send(get(b"/v1/models"))
            answer = await peer.answer()
    lines = answer.head.split(b"\r\n")
    assert re.fullmatch(rb"HTTP/1\.1 \d{3} [^\r\n]*", lines[0])
    for line in lines[1:]:
        assert FIELD.match(line), line
    assert b"two" not in answer.head
    if relayed is None:  # an upstream answer seamline cannot parse is a bad gateway
        assert answer.status == 502, answer.head
        assert error_of(answer)["type"] == "upstream_error"
    else:
        assert answer.status == 200, answer.head
        if relayed is LEFT_OUT:
            assert "x-odd" not in answer.headers
        else:
            assert relayed in lines
        assert answer.body == body


# -- 14. drain -----------------------------------------------------------------------------


async def test_after_drain_begins_an_answer_on_a_kept_alive_connection_closes_it(
    upstream: Upstream, serve: Serve
) -> None:
    # A stream in flight holds the drain open; another connection was kept alive.
    upstream.script(*sse_stream("a", "b", "c", "d"), pause=0.15)
    runner = await serve(upstream.url)
    draining: asyncio.Task[None] | None = None
    try:
        async with connect(runner) as streaming, connect(runner) as idle:
            await idle.send(get(b"/healthz"))
            before = await idle.answer()
            assert before.status == 200
            assert "connection" not in before.headers
            await streaming.send(post())
            async with asyncio.timeout(5):
                assert (await streaming.reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            draining = asyncio.create_task(drain(runner, grace=0))
            await until(lambda: runner.app.gate.draining)
            await idle.send(get(b"/healthz"))
            after = await idle.answer()
            assert after.status == 200
            assert after.headers["connection"] == "close"
            assert await idle.closed()
            # The stream in flight still ends whole.
            async with asyncio.timeout(5):
                rest = await streaming.reader.readuntil(b"\r\n0\r\n\r\n")
            assert b"[DONE]" in rest
        async with asyncio.timeout(5):
            await draining
    finally:
        if draining is not None and not draining.done():
            draining.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await draining


# -- any split of any pipelined requests ----------------------------------------------------


def _chunked(body: bytes, cuts: list[int]) -> bytes:
    """``body`` in chunked transfer coding, cut at ``cuts``."""
    edges = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    parts = [body[a:b] for a, b in itertools.pairwise(edges) if b > a]
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


# Requests that need no upstream, each with the status it must get. The POSTs' bodies
# are read whole before they are refused (not JSON): they exercise body framing.
_BAD_JSON = b'{"model": "m", "messages": [' + b"x" * 300


@st.composite
def _requests(draw: st.DrawFn) -> tuple[bytes, int, bool]:
    kind = draw(st.sampled_from(["get", "head", "post-length", "post-chunked", "missing"]))
    if kind == "get":
        return get(b"/healthz"), 200, False
    if kind == "head":
        return get(b"/healthz", method=b"HEAD"), 200, True
    if kind == "missing":
        return get(b"/v1/../nope"), 404, False
    if kind == "post-length":
        return post(_BAD_JSON), 400, False
    cuts = draw(st.lists(st.integers(0, len(_BAD_JSON)), max_size=4))
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n"
    return head + b"Content-Type: application/json\r\n\r\n" + _chunked(_BAD_JSON, cuts), 400, False


def test_any_split_of_pipelined_requests_gets_every_answer_in_order() -> None:
    """Requests written back to back and cut anywhere (mid-line, between CR and LF,
    inside a chunk size) are answered exactly as when sent whole."""
    loop = asyncio.new_event_loop()
    try:
        _split_property(loop)
    finally:
        loop.close()


def _split_property(loop: asyncio.AbstractEventLoop) -> None:
    conf = cfg.parse(config_text(("a", NOWHERE)), "test.toml", {})
    runner = loop.run_until_complete(start(conf, "127.0.0.1", 0))

    async def one(requests: list[tuple[bytes, int, bool]], cuts: list[int]) -> None:
        data = b"".join(r[0] for r in requests)
        edges = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
        async with connect(runner) as peer:
            for a, b in itertools.pairwise(edges):
                await peer.send(data[a:b])
                await asyncio.sleep(0.001)  # most pieces arrive as reads of their own
            for _, status, head_only in requests:
                answer = await peer.answer(head_request=head_only)
                assert answer.status == status, (answer.head, requests)
                if status >= 400:
                    error_of(answer)
            assert "connection" not in answer.headers  # the connection is still open
            await peer.send(get(b"/healthz"))
            assert (await peer.answer()).status == 200

    try:

        @settings(
            max_examples=60,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(
            requests=st.lists(_requests(), min_size=1, max_size=3),
            cuts=st.lists(st.integers(0, 2000), max_size=8),
        )
        def check(requests: list[tuple[bytes, int, bool]], cuts: list[int]) -> None:
            loop.run_until_complete(one(requests, cuts))

        check()
    finally:
        loop.run_until_complete(runner.cleanup())


# -- aiohttp beneath its public API: what seamline relies on -------------------------------
#
# proxy/request.py writes a stream's chunks straight to the transport once aiohttp sent
# the head and the first chunk, writes the last chunk itself and tells aiohttp so
# (``StreamResponse._eof_sent``), and waits on aiohttp's writer for backpressure. These
# tests fail when an aiohttp upgrade changes any of that.

Seen = list[tuple[web.BaseRequest, web.StreamResponse]]


@contextlib.asynccontextmanager
async def seamline_seen(url: str, server: str = "") -> AsyncIterator[tuple[Runner, Seen]]:
    """seamline assembled as ``start`` does it, keeping every response aiohttp prepared."""
    conf = cfg.parse(config_text(("a", url), server=server), "test.toml", {})
    state = create_app(conf)
    aio = web_app(state)
    seen: Seen = []

    async def keep(request: web.BaseRequest, response: web.StreamResponse) -> None:
        seen.append((request, response))

    aio.on_response_prepare.append(keep)
    runner = Runner(state, serving.runner(aio, conf.server.keepalive_s))
    try:
        await runner.runner.setup()
        await web.TCPSite(runner.runner, "127.0.0.1", 0).start()
        yield runner, seen
    finally:
        await runner.cleanup()


async def test_a_chunked_stream_is_exact_on_the_wire_and_aiohttp_knows_it_ended(
    upstream: Upstream,
) -> None:
    pieces = sse_stream("one", "two")
    upstream.script(*pieces, pause=0.05)  # one upstream read each
    async with seamline_seen(upstream.url) as (runner, seen), connect(runner) as peer:
        # Pipelined: any byte aiohttp added after the stream would show before this.
        await peer.send(post() + get(b"/healthz"))
        stream = await peer.answer()
        assert stream.headers["transfer-encoding"] == "chunked"
        # One chunk per upstream read, the last with the end of the body; nothing else.
        assert stream.wire_body == chunks(*pieces) + LAST_CHUNK
        after = await peer.reader.readuntil(b"\r\n\r\n")
        assert after.startswith(b"HTTP/1.1 200 OK\r\n")  # right after the last chunk
        request, response = seen[0]
        assert response.status == 200
        assert response.chunked and response.keep_alive
        assert response._eof_sent  # aiohttp will not write a last chunk of its own
        assert response.prepared
        # What aiohttp itself wrote: the head, and the first chunk framed as seamline
        # frames the others (one write, so that the first byte costs one system call).
        head = stream.head + b"\r\n\r\n"
        writer = request.writer
        assert isinstance(writer, StreamWriter) and writer.chunked
        assert writer.output_size == len(head) + len(chunks(pieces[0]))


async def test_an_http_10_stream_is_exact_on_the_wire_and_ends_with_the_connection(
    upstream: Upstream,
) -> None:
    pieces = sse_stream("one", "two")
    upstream.script(*pieces, pause=0.05)
    async with seamline_seen(upstream.url) as (runner, seen), connect(runner) as peer:
        await peer.send(post(CHAT, b"Connection: keep-alive", version=b"1.0"))
        head = await peer.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK\r\n")
        assert b"\r\nConnection: close\r\n" in head
        assert b"Transfer-Encoding" not in head and b"Content-Length" not in head
        async with asyncio.timeout(5):
            body = await peer.reader.read()  # the end of the connection ends the body
        assert body == b"".join(pieces)
        _, response = seen[0]
        assert not response.keep_alive and not response.chunked
        assert response._eof_sent


class _Flood(asyncio.Protocol):
    """An upstream that answers with an event stream as fast as its socket takes it."""

    sent = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.paused = False

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data and not _Flood.sent:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            self._more()

    def _more(self) -> None:
        one = event(chunk("x" * 1000))
        while not self.paused and not self.transport.is_closing():
            self.transport.write(chunks(one))
            _Flood.sent += len(one)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        asyncio.get_running_loop().call_soon(self._more)


async def test_a_client_that_stops_reading_pauses_the_upstream_through_aiohttp() -> None:
    loop = asyncio.get_running_loop()
    flood = await loop.create_server(_Flood, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{flood.sockets[0].getsockname()[1]}/v1"
    _Flood.sent = 0
    try:
        async with seamline_seen(url) as (runner, seen), connect(runner) as peer:
            await peer.send(post())
            await peer.reader.readuntil(b"\r\n\r\n")  # then reads nothing for a while
            await asyncio.sleep(1.0)
            sent = _Flood.sent
            await asyncio.sleep(0.5)
            assert _Flood.sent == sent, "the upstream is still read"
            request, _ = seen[0]
            protocol = request.protocol
            assert protocol.writing_paused  # aiohttp's state: what drain() waits on
            assert protocol.transport is not None
            # seamline stopped at its high mark (plus one upstream read at most).
            assert protocol.transport.get_write_buffer_size() < 0x10000 + 0x40000
            # The client reads again: the stream goes on where it stopped.
            got = 0
            async with asyncio.timeout(5):
                while got < sent + 1_000_000:
                    got += len(await peer.reader.read(0x10000))
            assert _Flood.sent > sent
    finally:
        flood.close()
