"""End to end: scripted upstream bytes -> seamline -> the real openai client."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import aiohttp
import openai
import pytest
import yarl
from aiohttp import web

from support.builders import chunk, config_text, event, sse_stream
from support.clients import client, collect, text_of
from support.seamline import StartSeamline
from support.upstream import Upstream

WORDS = ["Hel", "lo, ", "wörld ", "€ ", "😀", "!"]
EXPECTED = "".join(WORDS)


def _events(*payloads: bytes, sep: bytes = b"\n", end: bytes = b"\n") -> bytes:
    return b"".join(b"data: " + p + sep + end for p in payloads)


def _split_every(data: bytes, n: int) -> list[bytes]:
    return [data[i : i + n] for i in range(0, len(data), n)]


def _answer(done: bool = True) -> list[bytes]:
    """Payloads of a normal answer."""
    out = [chunk(w) for w in WORDS] + [chunk(finish="stop")]
    return [*out, b"[DONE]"] if done else out


QUIRKS: dict[str, bytes] = {
    "lf": _events(*_answer()),
    "crlf": _events(*_answer(), sep=b"\r\n", end=b"\r\n"),
    "cr_only": _events(*_answer(), sep=b"\r", end=b"\r"),
    "bom": b"\xef\xbb\xbf" + _events(*_answer()),
    "ping_blocks": b"event: ping\n\n"
    + b"event: ping\ndata: {}\n\n".join(_events(p) for p in _answer()),
    "retry_and_id_blocks": b"retry: 3000\n\nid: 7\n\n"
    + b"".join(b"id: " + str(i).encode() + b"\n" + _events(p) for i, p in enumerate(_answer()))
    + b": comment after an id\n\n",
    "empty_data_keepalives": b"data:\n\ndata: \n\n".join(_events(p) for p in _answer()),
    "comments": b": hello\n\n" + b": keep-alive\n\n".join(_events(p) for p in _answer()),
    "no_final_blank_line": _events(*_answer())[:-1],
    "no_final_line_end": _events(*_answer())[:-2],
    "no_done_after_finish": _events(*_answer(done=False)),
    "data_without_space": b"".join(b"data:" + p + b"\n\n" for p in _answer()),
    "mixed_line_ends": b"".join(
        b"data: " + p + (b"\r\n\r\n", b"\n\n", b"\r\r", b"\r\n\n")[i % 4]
        for i, p in enumerate(_answer())
    ),
}


@pytest.mark.parametrize("name", sorted(QUIRKS))
@pytest.mark.parametrize("split", [0, 1, 7])
async def test_quirk_yields_exactly_the_upstream_chunks(
    upstream: Upstream, proxied: str, name: str, split: int
) -> None:
    raw = QUIRKS[name]
    pieces = _split_every(raw, split) if split else [raw]
    upstream.script(*pieces, pause=0.001 if split == 1 else 0.005)
    chunks = await collect(proxied)
    assert text_of(chunks) == EXPECTED
    assert len(chunks) == len(WORDS) + 1
    assert chunks[-1].choices[0].finish_reason == "stop"


async def _raw_post(url: str, body: dict[str, Any], **headers: str) -> tuple[int, Any, bytes]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.post(url + "/chat/completions", json=body, headers=headers) as r,
    ):
        return r.status, r.headers, await r.read()


BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def test_output_is_normalized_sse_with_the_payloads_byte_for_byte(
    upstream: Upstream, proxied: str
) -> None:
    payloads = [b'{"a": 1,  "b":"\\u00e9"}', chunk(finish="stop")]
    upstream.script(
        b"\xef\xbb\xbfretry: 5\r\nid: 1\r\ndata:" + payloads[0] + b"\r\r: c\r\n\r\n",
        b"event: ping\n\ndata: " + payloads[1] + b"\n\ndata: [DONE]\n\n",
    )
    status, headers, body = await _raw_post(proxied, BODY, **{"Accept-Encoding": "gzip"})
    assert status == 200
    assert body == (
        b"data: " + payloads[0] + b"\n\n: c\n\ndata: " + payloads[1] + b"\n\ndata: [DONE]\n\n"
    )
    assert headers["Content-Type"] == "text/event-stream"
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in headers
    assert headers["X-Request-ID"]


async def test_gzip_upstream_reaches_client_uncompressed(upstream: Upstream, proxied: str) -> None:
    raw = _events(*_answer())
    upstream.script(gzip.compress(raw), headers={"Content-Encoding": "gzip"})
    status, headers, body = await _raw_post(proxied, BODY, **{"Accept-Encoding": "gzip"})
    assert status == 200
    assert "Content-Encoding" not in headers
    assert body == raw
    assert upstream.requests[0]["headers"]["Accept-Encoding"] == "identity"


async def test_utf8_split_mid_character_passes_untouched(upstream: Upstream, proxied: str) -> None:
    raw = _events(*_answer())
    cut = raw.index("😀".encode()) + 2
    upstream.script(raw[:cut], raw[cut:])
    _, _, body = await _raw_post(proxied, BODY)
    assert body == raw


async def test_invalid_utf8_becomes_replacement_character(upstream: Upstream, proxied: str) -> None:
    bad = chunk("ab").replace(b"ab", b"a\xffb")
    upstream.script(b"data: " + bad + b"\n\n", *sse_stream())
    chunks = await collect(proxied)
    assert text_of(chunks) == "a\ufffdb"


async def test_request_body_goes_upstream_byte_for_byte_with_the_account_key(
    upstream: Upstream, proxied: str
) -> None:
    upstream.script(b'{"id":"x","object":"chat.completion"}', content_type="application/json")
    raw = b'{"model":"m",  "messages":[{"role":"user","content":"h\\u00e9"}], "x":1.50}'
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            proxied + "/chat/completions?q=1",
            data=raw,
            headers={
                "Content-Type": "application/json",
                "Authorization": "Bearer client-secret",
                "x-api-key": "client-secret",
                "Cookie": "session=abc",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "dropped: named by Connection",
                "X-Custom-Header": "kept",
            },
        ) as r,
    ):
        assert r.status == 200
        assert await r.read() == b'{"id":"x","object":"chat.completion"}'
    got = upstream.requests[0]
    assert got["body"] == raw
    assert got["path"] == "/v1/chat/completions?q=1"
    h = got["headers"]
    assert h["Authorization"] == "Bearer sk-test-acc1-secret"
    assert "x-api-key" not in {k.lower() for k in h}
    assert "Cookie" not in h
    assert h["X-Custom-Header"] == "kept"
    assert "X-Hop" not in h


async def test_models_and_embeddings_are_forwarded(upstream: Upstream, proxied: str) -> None:
    models = b'{"object":"list","data":[{"id":"m","object":"model","created":1,"owned_by":"x"}]}'
    upstream.script(models, content_type="application/json")
    async with client(proxied) as c:
        page = await c.models.list()
        assert [m.id for m in page.data] == ["m"]
        emb = b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5]}],'
        emb += b'"model":"m","usage":{"prompt_tokens":1,"total_tokens":1}}'
        upstream.scripts[:] = [upstream.script(emb, content_type="application/json")]
        e = await c.embeddings.create(model="m", input="x", encoding_format="float")
        assert e.data[0].embedding == [0.5]
    assert [r["path"] for r in upstream.requests] == ["/v1/models", "/v1/embeddings"]


async def test_upstream_http_error_keeps_status_and_body(upstream: Upstream, proxied: str) -> None:
    err = b'{"error":{"message":"model m does not exist","type":"invalid_request_error"}}'
    upstream.script(err, status=404, content_type="application/json")
    with pytest.raises(openai.NotFoundError) as info:
        await collect(proxied)
    assert "model m does not exist" in str(info.value)


async def test_non_openai_error_body_is_wrapped(upstream: Upstream, proxied: str) -> None:
    upstream.script(b"<html>bad gateway</html>", status=500, content_type="text/html")
    status, headers, body = await _raw_post(proxied, BODY)
    assert status == 500
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error"]["message"] == "<html>bad gateway</html>"


async def test_unreachable_upstream_gives_502(seamline: StartSeamline) -> None:
    base = await seamline(config_text(("dead", "http://127.0.0.1:1/v1")))
    status, _, body = await _raw_post(base, BODY)
    assert status == 502
    assert json.loads(body)["error"]["type"] == "upstream_error"


async def test_error_event_is_raised_by_the_sdk(upstream: Upstream, proxied: str) -> None:
    upstream.script(
        event(chunk("partial")),
        b'event: error\ndata: {"message": "overloaded, try later"}\n\n',
    )
    with pytest.raises(openai.APIError) as info:
        await collect(proxied)
    assert "overloaded, try later" in str(info.value)


@pytest.mark.parametrize("ending", ["reset", "end"])
async def test_cut_stream_ends_with_an_error_event(
    upstream: Upstream, proxied: str, ending: str
) -> None:
    upstream.script(event(chunk("par")), b"data: " + chunk("tial"), ending=ending)
    status, _, body = await _raw_post(proxied, BODY)
    assert status == 200
    events = [e for e in body.split(b"\n\n") if e]
    assert events[0] == b"data: " + chunk("par")
    last = json.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["type"] == "upstream_error"
    assert b"[DONE]" not in body
    with pytest.raises(openai.APIError):
        await collect(proxied)


async def test_idle_upstream_times_out_with_an_error_event(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(config_text(("acc1", upstream.url), extra="[timeouts]\nidle = 0.3"))
    upstream.script(event(chunk("slow")), ending="hang")
    status, _, body = await _raw_post(base, BODY)
    assert status == 200
    assert b'"upstream_error"' in body
    assert b"sent nothing for 0.3s" in body


async def test_headers_timeout_gives_504(upstream: Upstream, seamline: StartSeamline) -> None:
    base = await seamline(config_text(("acc1", upstream.url), extra="[timeouts]\nheaders = 0.2"))
    upstream.script(*sse_stream("x"), delay_headers=2)
    status, _, body = await _raw_post(base, BODY)
    assert status == 504
    assert json.loads(body)["error"]["code"] == "upstream_timeout"


async def test_oversized_event_ends_stream_with_error(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(config_text(("acc1", upstream.url), server="max_event_bytes = 1000"))
    upstream.script(event(chunk("ok")), b"data: " + b"x" * 5000, ending="hang")
    status, _, body = await _raw_post(base, BODY)
    assert status == 200
    assert body.startswith(event(chunk("ok")))
    assert b"event_too_large" in body


async def test_client_disconnect_closes_upstream_within_a_second(
    upstream: Upstream, proxied: str
) -> None:
    upstream.script(event(chunk("thinking")), ending="hang")
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as s:
        resp = await s.post(proxied + "/chat/completions", json=BODY)
        first = await resp.content.readuntil(b"\n\n")
        assert first == event(chunk("thinking"))
        resp.close()
        gone = loop.time()
    for _ in range(100):
        if upstream.closed:
            break
        await asyncio.sleep(0.01)
    assert upstream.closed, "upstream connection still open after the client left"
    assert upstream.closed[0] - gone < 1.0


async def test_slow_client_slows_the_upstream(upstream: Upstream, proxied: str) -> None:
    """Backpressure: seamline never holds the whole answer for a client that does not read."""
    one = event(chunk("x" * 1000))
    total = 40_000  # ~45 MB if it were all buffered
    upstream.script(*([one * 100] * (total // 100)), pause=0)
    written_before = len(upstream.closed)
    async with aiohttp.ClientSession() as s:
        resp = await s.post(proxied + "/chat/completions", json=BODY)
        await resp.content.readexactly(len(one))
        await asyncio.sleep(1.0)  # the client reads nothing for a second
        assert len(upstream.closed) == written_before, "upstream finished: nothing held it back"
        received = len(one)
        async for data in resp.content.iter_any():
            received += len(data)
        assert received >= len(one) * total


async def test_client_auth_when_api_keys_are_set(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(
        config_text(("acc1", upstream.url), server='api_keys = ["good-key-1", "good-key-2"]')
    )
    upstream.script(*sse_stream("ok"))
    status, _, body = await _raw_post(base, BODY)
    assert status == 401
    assert json.loads(body)["error"]["code"] == "invalid_api_key"
    status, _, _ = await _raw_post(base, BODY, Authorization="Bearer wrong")
    assert status == 401
    status, _, _ = await _raw_post(base, BODY, **{"x-api-key": "good-key-2"})
    assert status == 200
    async with client(base, key="good-key-1") as c:
        stream = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        )
        assert text_of([ch async for ch in stream]) == "ok"
    assert all("good-key" not in json.dumps(r["headers"]) for r in upstream.requests)


async def test_non_streaming_completion_passes_byte_for_byte(
    upstream: Upstream, proxied: str
) -> None:
    body = (
        b'{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"Hi \\u00e9"},"finish_reason":"stop"}]}'
    )
    upstream.script(body, content_type="application/json")
    async with client(proxied) as c:
        res = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
    assert res.choices[0].message.content == "Hi é"
    status, _, got = await _raw_post(proxied, {**BODY, "stream": False})
    assert status == 200
    assert got == body


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b'{"messages": []}', 400, "missing_model"),
    ],
)
async def test_bad_requests_get_openai_errors(
    proxied: str, raw: bytes, status: int, code: str
) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(proxied + "/chat/completions", data=raw) as r,
    ):
        assert r.status == status
        assert (await r.json())["error"]["code"] == code


async def test_unknown_path_and_wrong_method(proxied: str) -> None:
    root = proxied.removesuffix("/v1")
    async with aiohttp.ClientSession() as s:
        async with s.get(root + "/nope") as r:
            assert r.status == 404
            assert (await r.json())["error"]["type"] == "invalid_request_error"
        async with s.delete(proxied + "/chat/completions") as r:
            assert r.status == 405
            assert "error" in await r.json()


async def _raw_upstream(*pieces: bytes) -> tuple[asyncio.Server, str]:
    """A TCP server that answers any request with exactly these bytes, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.05)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1"


async def test_bad_chunked_encoding_ends_stream_with_error_event(
    seamline: StartSeamline,
) -> None:
    first = event(chunk("par"))
    server, url = await _raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(first):x}\r\n".encode()
        + first
        + b"\r\n",
        b"ZZZ-not-hex\r\n",
    )
    async with server:
        base = await seamline(config_text(("raw", url)))
        status, _, body = await _raw_post(base, BODY)
    assert status == 200
    assert body.startswith(first)
    tail = json.loads(body[len(first) :].removeprefix(b"data: "))
    assert tail["error"]["type"] == "upstream_error"


@pytest.mark.parametrize("ending", ["done", "no_done"])
async def test_a_finished_stream_gives_its_upstream_connection_back_for_the_next_request(
    aiohttp_server: Any, seamline: StartSeamline, ending: str
) -> None:
    # Each stream read to its end leaves the connection in aiohttp's pool: the next
    # request does not pay for a new connect.
    peers: list[Any] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(event(chunk("hi")))
        tail = event(chunk(finish="stop"))
        await resp.write(tail + b"data: [DONE]\n\n" if ending == "done" else tail)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = await aiohttp_server(app)
    base = await seamline(config_text(("acc1", str(server.make_url("/v1")))))
    for _ in range(3):
        assert text_of(await collect(base)) == "hi"
        await asyncio.sleep(0.05)  # the end of the body may trail [DONE] by a read
    assert len(peers) == 3
    assert len(set(peers)) == 1, peers


async def _http10_post(base: str, body: bytes) -> bytes:
    """The whole answer to an HTTP/1.0 POST (as nginx sends by default), read to close."""
    url = yarl.URL(base)
    assert url.host is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        b"POST %b/chat/completions HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (url.path.encode(), len(body), body)
    )
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return raw


@pytest.mark.parametrize("stream", [True, False])
async def test_an_http_10_client_gets_the_answer_unchunked_ended_by_close(
    upstream: Upstream, proxied: str, stream: bool
) -> None:
    upstream.script(*sse_stream("one", "two"))
    body = json.dumps({**BODY, "stream": stream}).encode()
    raw = await _http10_post(proxied, body)
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    assert b"transfer-encoding" not in head.lower()
    if stream:
        assert payload == b"".join(sse_stream("one", "two"))
    else:
        assert json.loads(payload)["choices"][0]["message"]["content"] == "onetwo"
