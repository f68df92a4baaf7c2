"""Operations end to end: health, readiness, metrics, limits, drain, reload and the
hardened surface, against the real server (in process, or ``seamline serve`` as a
real process where signals are involved).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from proxy import config as cfg
from proxy.gateway.app import Runner, drain, start
from proxy.gateway.runtime import reload
from support.builders import ADMIN_KEY, account, chunk, conf, event, sse_stream, toml, usage_chunk
from support.clients import Reply, parse_answer, raw_request, root
from support.seamline import StartSeamline
from support.upstream import MakeUpstream, Script, Upstream, upstream_app

ROUTE = "/v1/chat/completions"
SEAMLINE = str(Path(sys.executable).parent / "seamline")
# Only PATH: nothing secret, and no proxy settings, from the test runner.
ENV = {"PATH": os.environ.get("PATH", os.defpath)}


# -- clients -------------------------------------------------------------------------------


def request_body(stream: bool = True, model: str = "m", **extra: Any) -> bytes:
    obj = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return json.dumps({**obj, **extra}).encode()


async def fetch(
    method: str,
    url: str,
    data: Any = None,
    *,
    session: aiohttp.ClientSession | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """One request; the answer's status, headers and every byte of its body."""
    if session is None:
        async with aiohttp.ClientSession() as s:
            return await fetch(method, url, data, session=s, headers=headers)
    async with session.request(method, url, data=data, headers=headers) as r:
        return Reply(r.status, dict(r.headers), await r.read())


async def post(base: str, data: Any = None, **headers: str) -> Reply:
    """POST to /v1/chat/completions (a streamed request for model m by default)."""
    url = base + "/chat/completions"
    return await fetch("POST", url, data or request_body(), headers=headers)


def admin(key: str = ADMIN_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def admin_accounts(base: str) -> dict[str, dict[str, Any]]:
    reply = await fetch("GET", root(base) + "/admin/accounts", headers=admin())
    assert reply.status == 200, reply.body
    return {row["name"]: row for row in reply.json()["accounts"]}


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Every sample of a Prometheus text page, by name and label set."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


async def scrape(base: str) -> Samples:
    reply = await fetch("GET", root(base) + "/metrics", headers=admin())
    assert reply.status == 200, reply.body
    return parse_metrics(reply.body.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly these labels (0 when there is none)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every label set of ``name`` with its value."""
    return {labels: v for (n, labels), v in samples.items() if n == name}


def labels(**kw: str) -> frozenset[tuple[str, str]]:
    return frozenset(kw.items())


async def until(cond: Callable[[], Awaitable[bool]]) -> None:
    """Wait (a few seconds at most) until ``cond()`` holds."""
    async with asyncio.timeout(3):
        while True:
            if await cond():
                return
            await asyncio.sleep(0.01)


# -- 1. liveness and readiness -------------------------------------------------------------


async def test_healthz_answers_200_without_any_key(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(conf(account("a", upstream.url), api_keys=["client-key-1"]))
    reply = await fetch("GET", root(base) + "/healthz")
    assert (reply.status, reply.json()) == (200, {"status": "ok"})
    assert reply.headers["X-Request-ID"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health_checks_answer_head_too(
    upstream: Upstream, seamline: StartSeamline, path: str
) -> None:
    base = await seamline(conf(account("a", upstream.url), api_keys=["client-key-1"]))
    reply = await fetch("HEAD", root(base) + path)
    assert reply.status == 200
    assert reply.body == b""


async def test_readyz_is_200_while_an_account_is_available(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(conf(account("a", upstream.url), api_keys=["client-key-1"]))
    reply = await fetch("GET", root(base) + "/readyz")
    assert reply.status == 200
    assert reply.json() == {
        "status": "ready",
        "draining": False,
        "accounts_available": 1,
        "accounts_total": 1,
        "in_flight": 0,
    }


async def test_readyz_is_503_when_the_only_account_is_cooling_down(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(conf(account("a", upstream.url)))
    upstream.script(
        b'{"error":{"message":"slow down"}}',
        status=429,
        content_type="application/json",
        headers={"Retry-After": "30"},
    )
    reply = await post(base)
    assert reply.status == 429
    assert reply.json()["error"]["type"] == "rate_limit_error"
    ready = await fetch("GET", root(base) + "/readyz")
    assert ready.status == 503
    assert ready.json() == {
        "status": "no_account_available",
        "draining": False,
        "accounts_available": 0,
        "accounts_total": 1,
        "in_flight": 0,
    }
    # The same state as gauges: rate limited, for about the 30 s the upstream asked for.
    m = await scrape(base)
    assert series(m, "seamline_account_state") == {
        labels(account="a", state=s): float(s == "rate_limited")
        for s in [
            "available",
            "disabled",
            "quota_exhausted",
            "rate_limited",
            "circuit_open",
            "max_concurrent",
            "rpm_limit",
            "daily_limit",
        ]
    }
    assert 28 < value(m, "seamline_account_cooldown_seconds", account="a") <= 30


async def test_readyz_is_503_while_draining_and_in_flight_streams_still_finish(
    upstream: Upstream,
) -> None:
    config = cfg.parse(conf(account("a", upstream.url), drain_s=5), "test.toml", {})
    runner = await start(config, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    base = f"http://{host}:{port}/v1"
    upstream.script(*sse_stream("one", "two", "three"), pause=0.3)
    draining: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession() as streaming, aiohttp.ClientSession() as probe:
            # A kept-alive connection: the listening socket closes when the drain begins.
            assert (await fetch("GET", root(base) + "/readyz", session=probe)).status == 200
            async with streaming.post(base + "/chat/completions", data=request_body()) as resp:
                first = await resp.content.readuntil(b"\n\n")
                draining = asyncio.create_task(drain(runner))
                await asyncio.sleep(0.05)
                ready = await fetch("GET", root(base) + "/readyz", session=probe)
                assert ready.status == 503
                assert ready.json()["status"] == "draining"
                assert ready.json()["draining"] is True
                assert ready.json()["in_flight"] == 1
                rest = await resp.read()
            assert first + rest == b"".join(sse_stream("one", "two", "three"))
            async with asyncio.timeout(3):
                await draining
    finally:
        if draining is not None and not draining.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(draining, 10)
        await runner.cleanup()  # a second cleanup does nothing


# -- 2. metrics ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "headers", "status"),
    [
        pytest.param({"admin_key": None}, {}, 404, id="no-admin-key-configured"),
        pytest.param({"admin_key": None}, admin(), 404, id="no-admin-key-configured-key-sent"),
        pytest.param({}, {}, 401, id="no-key"),
        pytest.param({}, admin("wrong-key"), 401, id="wrong-key"),
        pytest.param({}, {"x-api-key": ADMIN_KEY + "x"}, 401, id="longer-key"),
        pytest.param({}, admin(), 200, id="admin-key"),
        pytest.param({}, {"x-api-key": ADMIN_KEY}, 200, id="admin-key-as-x-api-key"),
        pytest.param({"metrics_public": True}, {}, 200, id="public"),
        pytest.param({"admin_key": None, "metrics_public": True}, {}, 200, id="public-no-admin"),
    ],
)
async def test_metrics_need_the_admin_key_unless_public(
    upstream: Upstream,
    seamline: StartSeamline,
    server: dict[str, Any],
    headers: dict[str, str],
    status: int,
) -> None:
    base = await seamline(conf(account("a", upstream.url), **server))
    reply = await fetch("GET", root(base) + "/metrics", headers=headers)
    assert reply.status == status
    assert reply.headers["X-Request-ID"]
    if status == 200:
        assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        families = {f.name for f in text_string_to_metric_families(reply.body.decode())}
        assert {"seamline_requests", "seamline_account_state", "seamline_tokens"} <= families
    else:
        assert reply.headers["Content-Type"].startswith("application/json")
        error = reply.json()["error"]
        assert error["code"] == ("not_found" if status == 404 else "invalid_api_key")
        assert ADMIN_KEY not in reply.body.decode()


async def test_metrics_count_known_traffic_exactly(
    make_upstream: MakeUpstream, seamline: StartSeamline
) -> None:
    good, bad = await make_upstream(), await make_upstream()
    # "bad" serves only model "fo" and comes first for it: one failover, nothing else.
    base = await seamline(
        conf(account("bad", bad.url, models=["fo"]), account("good", good.url, priority=1))
    )
    n = 4
    full = sse_stream(*(f"w{i}" for i in range(n)))
    for _ in range(3):
        good.script(*full)
    good.script(
        b'{"error":{"message":"no such model","type":"invalid_request_error"}}',
        status=404,
        content_type="application/json",
    )
    good.script(*sse_stream("after failover"))
    good.script(*sse_stream("no", "done", done=False))
    good.script(
        event(chunk("counted")),
        event(chunk(finish="stop")),
        event(usage_chunk(7, 11)),
        b"data: [DONE]\n\n",
    )
    good.script(b'{"object":"list","data":[]}', content_type="application/json")
    good.script(b'{"object":"list","data":[]}', content_type="application/json")
    bad.script(b'{"error":{"message":"boom"}}', status=500, content_type="application/json")

    streamed: list[bytes] = []
    for _ in range(3):
        reply = await post(base)
        assert reply.status == 200
        assert reply.body == b"".join(full)
        streamed.append(reply.body)
    assert (await post(base)).status == 404
    reply = await post(base, request_body(model="fo"))
    assert (reply.status, reply.body) == (200, b"".join(sse_stream("after failover")))
    streamed.append(reply.body)
    reply = await post(base)
    assert reply.body == b"".join(sse_stream("no", "done"))  # [DONE] appended
    streamed.append(reply.body)
    reply = await post(base)
    assert reply.body == b"".join(sse_stream("counted"))  # usage chunk not asked for: hidden
    streamed.append(reply.body)
    for path in ("/embeddings", "/moderations"):
        assert (await fetch("POST", base + path, request_body(stream=False))).status == 200
    assert (await post(base, b"{not json")).status == 400
    assert len(bad.requests) == 1

    m = await scrape(base)
    assert series(m, "seamline_requests_total") == {
        labels(route=ROUTE, status="200", account="good"): 6.0,
        labels(route=ROUTE, status="404", account="good"): 1.0,
        labels(route=ROUTE, status="400", account=""): 1.0,
        labels(route="/v1/embeddings", status="200", account="good"): 1.0,
        labels(route="/v1/other", status="200", account="good"): 1.0,
    }
    # Data events, [DONE] not counted: n + finish, three times; 1 + 1; 2 + 1; 1 + 1.
    assert value(m, "seamline_stream_events_total") == 3 * (n + 1) + 2 + 3 + 2
    assert value(m, "seamline_stream_bytes_total") == sum(len(b) for b in streamed)
    assert series(m, "seamline_repairs_total") == {labels(kind="done_appended"): 1.0}
    assert series(m, "seamline_failovers_total") == {labels(reason="upstream_failure"): 1.0}
    # A first byte for each upstream answer (the relayed 404 too), none for seamline's
    # own 400; a duration for every request.
    assert value(m, "seamline_time_to_first_byte_seconds_count") == 9
    assert value(m, "seamline_time_to_first_byte_seconds_bucket", le="+Inf") == 9
    assert value(m, "seamline_request_duration_seconds_count") == 10
    assert value(m, "seamline_request_duration_seconds_bucket", le="+Inf") == 10
    assert value(m, "seamline_streams_in_flight") == 0
    assert series(m, "seamline_tokens_total") == {
        labels(account="good", kind="prompt"): 7.0,
        labels(account="good", kind="completion"): 11.0,
        labels(account="bad", kind="prompt"): 0.0,
        labels(account="bad", kind="completion"): 0.0,
    }
    for name in ("good", "bad"):
        assert value(m, "seamline_account_state", account=name, state="available") == 1
        assert value(m, "seamline_account_cooldown_seconds", account=name) == 0
        assert value(m, "seamline_account_in_flight", account=name) == 0


async def test_a_relayed_upstream_error_has_a_time_to_first_byte(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(conf(account("a", upstream.url)))
    upstream.script(b'{"error":{"message":"nope"}}', status=404, content_type="application/json")
    assert (await post(base)).status == 404
    m = await scrape(base)
    assert value(m, "seamline_time_to_first_byte_seconds_count") == 1


async def test_streams_in_flight_is_1_while_a_stream_is_open_and_0_after(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    # The upstream is silent after one event: only the handler's cancellation (the client
    # left) ends the stream, not a failed write.
    base = await seamline(conf(account("a", upstream.url)))
    upstream.script(event(chunk("thinking")), ending="hang")
    async with (
        aiohttp.ClientSession() as s,
        s.post(base + "/chat/completions", data=request_body()) as resp,
    ):
        await resp.content.readuntil(b"\n\n")
        m = await scrape(base)
        assert value(m, "seamline_streams_in_flight") == 1
        assert value(m, "seamline_account_in_flight", account="a") == 1
        assert series(m, "seamline_requests_total") == {}  # booked when it ends
        resp.close()

    async def gone() -> bool:
        return value(await scrape(base), "seamline_streams_in_flight") == 0

    await until(gone)
    m = await scrape(base)
    assert value(m, "seamline_account_in_flight", account="a") == 0
    # A stream its client left is still booked, as nginx's 499 "client closed request".
    assert series(m, "seamline_requests_total") == {
        labels(route=ROUTE, status="499", account="a"): 1.0
    }
    assert value(m, "seamline_request_duration_seconds_count") == 1
    assert value(m, "seamline_stream_events_total") == 1


# -- 3. limits -----------------------------------------------------------------------------


async def _chunked(data: bytes) -> AsyncIterator[bytes]:
    """A body without a Content-Length: aiohttp sends it chunked."""
    for i in range(0, len(data), 1000):
        yield data[i : i + 1000]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_body_over_max_body_bytes_is_413(
    upstream: Upstream, seamline: StartSeamline, framing: str
) -> None:
    base = await seamline(conf(account("a", upstream.url), max_body_bytes=4096))
    upstream.script(*sse_stream("ok"))
    big = request_body(padding="x" * 5000)
    reply = await post(base, big if framing == "content-length" else _chunked(big))
    assert reply.status == 413
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.headers["X-Request-ID"]
    assert reply.json() == {
        "error": {
            "message": "request body exceeds 4096 bytes",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
    }
    assert upstream.requests == []
    # Just under the limit passes, framed either way.
    small = request_body(padding="x" * (4096 - len(request_body(padding=""))))
    assert len(small) == 4096
    reply = await post(base, small if framing == "content-length" else _chunked(small))
    assert reply.status == 200


async def test_max_concurrent_answers_503_with_retry_after_past_the_limit(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(conf(account("a", upstream.url), max_concurrent=1))
    upstream.script(event(chunk("held")), *sse_stream("rest"), pause=0.2)
    async with (
        aiohttp.ClientSession() as s,
        s.post(base + "/chat/completions", data=request_body()) as held,
    ):
        await held.content.readuntil(b"\n\n")
        second = await post(base)
        assert second.status == 503
        assert second.headers["Retry-After"] == "1"
        assert second.headers["X-Request-ID"]
        assert second.json()["error"]["code"] == "no_account_available"
        # Operator endpoints are not requests to the API: they still answer.
        assert (await fetch("GET", root(base) + "/readyz")).status == 200
        assert (await held.read()).endswith(b"data: [DONE]\n\n")
    assert len(upstream.requests) == 1
    assert (await post(base)).status == 200  # the slot is free again


async def test_client_rpm_limits_each_key_on_its_own(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    keys = ["client-key-one", "client-key-two"]
    base = await seamline(conf(account("a", upstream.url), api_keys=keys, client_rpm=2))
    upstream.script(*sse_stream("ok"))
    one, two = ({"Authorization": f"Bearer {k}"} for k in keys)
    assert [(await post(base, **one)).status for _ in range(2)] == [200, 200]
    third = await post(base, **one)
    assert third.status == 429
    assert third.json()["error"]["code"] == "rate_limited"
    assert 55 <= int(third.headers["Retry-After"]) <= 60
    assert third.headers["X-Request-ID"]
    assert (await post(base, **two)).status == 200
    # The same key sent as x-api-key is the same client.
    assert (await post(base, **{"x-api-key": keys[0]})).status == 429
    # A wrong key is refused as such, not counted against anyone.
    assert (await post(base, Authorization="Bearer nobody")).status == 401
    assert (await post(base, **two)).status == 200
    assert len(upstream.requests) == 4


# -- 6. the hardened surface ---------------------------------------------------------------

BAD_REQUESTS = [
    pytest.param("POST", "/v1/chat/completions", b"{not json", 400, "invalid_json", id="json"),
    pytest.param(
        "POST", "/v1/chat/completions", b'{"messages":[]}', 400, "missing_model", id="model"
    ),
    pytest.param("POST", "/v1/embeddings", b'{"model":""}', 400, "missing_model", id="empty-model"),
    pytest.param("GET", "/nope", b"", 404, "not_found", id="unknown-path"),
    pytest.param("GET", "/v1", b"", 404, "not_found", id="bare-v1"),
    pytest.param("GET", "/v1/../admin/accounts", b"", 404, "not_found", id="dot-dot"),
    pytest.param("GET", "/v1/%2e%2e/secret", b"", 404, "not_found", id="encoded-dot-dot"),
    pytest.param("GET", "/v1/./models", b"", 404, "not_found", id="dot"),
    pytest.param("DELETE", "/v1/chat/completions", b"", 405, "method_not_allowed", id="delete"),
    pytest.param("POST", "/healthz", b"", 405, "method_not_allowed", id="post-healthz"),
    pytest.param("PUT", "/metrics", b"", 405, "method_not_allowed", id="put-metrics"),
    pytest.param("POST", "/v1/chat/completions", b"x" * 5000, 413, "request_too_large", id="big"),
]


@pytest.mark.parametrize(("method", "path", "data", "status", "code"), BAD_REQUESTS)
async def test_bad_requests_get_an_openai_error_with_a_request_id(
    upstream: Upstream,
    seamline: StartSeamline,
    method: str,
    path: str,
    data: bytes,
    status: int,
    code: str,
) -> None:
    base = await seamline(conf(account("a", upstream.url), max_body_bytes=4096))
    upstream.script(b'{"object":"list","data":[]}', content_type="application/json")
    reply = await raw_request(root(base), f"{method} {path}".encode(), data)
    assert reply.status == status
    assert reply.headers["content-type"].startswith("application/json")
    assert len(reply.headers["x-request-id"]) == 32
    error = json.loads(reply.body)["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["type"] == "invalid_request_error"
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("given", "echoed"),
    [
        pytest.param("req-123_abc.DEF:9", True, id="sane"),
        pytest.param("a" * 128, True, id="128-chars"),
        pytest.param("a" * 129, False, id="129-chars"),
        pytest.param("a" * 300, False, id="300-chars"),
        pytest.param("has space", False, id="space"),
        pytest.param("semi;colon", False, id="semicolon"),
        pytest.param("new\\nline", False, id="backslash"),
        pytest.param("ünïcode", False, id="non-ascii"),
        pytest.param("", False, id="empty"),
    ],
)
async def test_client_request_id_is_echoed_only_when_sane(
    upstream: Upstream, seamline: StartSeamline, given: str, echoed: bool
) -> None:
    base = await seamline(conf(account("a", upstream.url)))
    upstream.script(*sse_stream("ok"))
    header = b"X-Request-ID: " + given.encode()
    ids = []
    for line, body in [(b"POST /v1/chat/completions", request_body()), (b"GET /nope", b"")]:
        reply = await raw_request(root(base), line, body, header)
        ids.append(reply.headers["x-request-id"])
    if echoed:
        assert ids == [given, given]
    else:
        assert all(len(got) == 32 and got.isalnum() for got in ids)
        assert ids[0] != ids[1]
    # The upstream hears the id the client got back.
    assert upstream.requests[0]["headers"]["X-Request-ID"] == ids[0]


# Methods the HTTP parser (llhttp) knows; anything else it refuses itself (see below).
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND"]
PREFIXES = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/",
    "/v1",
    "/healthz",
    "/readyz",
    "/metrics",
    "/admin/accounts",
    "/",
]
# RFC 3986 pchar plus "/" and "%" (also before non-hex digits); with "%2e" and "%2F".
PATH_CHARS = "abcefXYZEF0129-._~!$&'()*+,;=:@/%"
QUERY_CHARS = PATH_CHARS + "?"
HEADER_NAMES = [
    "Authorization",
    "X-Api-Key",
    "X-Request-ID",
    "Content-Type",
    "Accept",
    "Accept-Encoding",
    "Cookie",
    "Origin",
    "Forwarded",
    "X-Forwarded-For",
    "OpenAI-Organization",
    "X-Custom",
]
header_values = st.one_of(
    st.sampled_from([f"Bearer {ADMIN_KEY}", "Bearer x", "gzip, br", "text/event-stream", ""]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.text(st.characters(min_codepoint=0xA0, max_codepoint=0x2FF), max_size=5),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)
# A chat body for model "m" with arbitrary (and arbitrarily typed) options.
chat_bodies = st.fixed_dictionaries(
    {"model": st.just("m")},
    optional={
        "messages": json_values,
        "stream": st.one_of(st.booleans(), json_values),
        "stream_options": st.one_of(
            st.fixed_dictionaries({"include_usage": st.one_of(st.booleans(), json_values)}),
            json_values,
        ),
        "n": json_values,
    },
)
bodies = st.one_of(
    chat_bodies.map(lambda obj: json.dumps(obj).encode()),
    st.dictionaries(st.sampled_from(["model", "stream", "x"]), json_values).map(
        lambda obj: json.dumps(obj, ensure_ascii=False).encode()
    ),
    st.binary(max_size=200),
    st.integers(2000, 2100).map(lambda n: b" " * n),  # around max_body_bytes
)
UPSTREAM_ANSWERS = [
    Script(sse_stream("hi")),
    Script(sse_stream("hi", done=False)),
    Script(
        [b'{"id":"c","object":"chat.completion","choices":[]}'], content_type="application/json"
    ),
    Script(
        [b'{"error":{"message":"bad","type":"x"}}'], status=400, content_type="application/json"
    ),
    Script([b"<html>not here</html>"], status=404, content_type="text/html"),
    Script([b"data: {not json\n\n", b"junk line\n", b"event: error\ndata: oops\n\n"]),
    Script([b"data: " + chunk("cut")[:20]]),
    Script([b"\xff\xfe binary"], content_type="application/octet-stream"),
]


# Segments that a URL library resolves ("/v1/../x" is "/x"), plain and percent-encoded.
dot_segments = st.lists(
    st.sampled_from(["..", ".", "%2e%2e", "%2E", ".%2e", "..%2F..", "x", ""]), max_size=4
).map(lambda parts: "/" + "/".join(parts))


class Fuzzed(NamedTuple):
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    answer: Script


fuzzed_requests = st.builds(
    Fuzzed,
    # one_of picks a branch first: POST and GET, the methods that reach an upstream, often.
    method=st.one_of(st.just("POST"), st.just("GET"), st.sampled_from(METHODS)),
    target=st.builds(
        lambda prefix, tail, query: prefix + tail + (f"?{query}" if query else ""),
        st.one_of(st.just("/v1/chat/completions"), st.sampled_from(PREFIXES)),
        st.one_of(st.just(""), st.text(PATH_CHARS, max_size=20), dot_segments),
        st.text(QUERY_CHARS, max_size=10),
    ),
    headers=st.lists(
        st.tuples(st.sampled_from(HEADER_NAMES), header_values),
        max_size=4,
        unique_by=lambda h: h[0],
    ),
    body=bodies,
    answer=st.sampled_from(UPSTREAM_ANSWERS),
)


class Fuzz(NamedTuple):
    upstream: Upstream
    upstream_runner: web.AppRunner
    runner: Runner
    url: str


async def _fuzz_start() -> Fuzz:
    up = Upstream(url="", scripts=[Script()])
    up_runner = web.AppRunner(upstream_app(up))
    await up_runner.setup()
    await web.TCPSite(up_runner, "127.0.0.1", 0).start()
    up.url = f"http://127.0.0.1:{up_runner.addresses[0][1]}/v1"
    text = conf(account("a", up.url), timeouts="headers = 5\nidle = 5", max_body_bytes=2048)
    runner = await start(cfg.parse(text, "test.toml", {}), "127.0.0.1", 0)
    return Fuzz(up, up_runner, runner, f"http://127.0.0.1:{runner.addresses[0][1]}")


async def _fuzz_one(fuzz: Fuzz, req: Fuzzed) -> None:
    fuzz.upstream.scripts[:] = [req.answer]
    headers = [f"{k}: {v}".encode() for k, v in req.headers]
    start_line = f"{req.method} {req.target}".encode()
    reply = await raw_request(fuzz.url, start_line, req.body, *headers)
    assert reply.status != 500, reply
    assert 200 <= reply.status < 600
    assert reply.headers.get("x-request-id"), reply
    if reply.status >= 400 and req.method != "HEAD":
        assert reply.headers["content-type"].startswith("application/json"), reply
        error = json.loads(reply.body)["error"]
        assert isinstance(error, dict), reply
        assert isinstance(error["message"], str), reply


def test_arbitrary_requests_get_json_errors_and_never_a_500() -> None:
    """Any well-formed HTTP request: never a 500, errors are OpenAI JSON, server lives on."""
    # One seamline for every example: hypothesis drives this loop, not pytest's.
    loop = asyncio.new_event_loop()
    try:
        _fuzz(loop)
    finally:
        loop.close()


def _fuzz(loop: asyncio.AbstractEventLoop) -> None:
    fuzz = loop.run_until_complete(_fuzz_start())
    try:

        @settings(
            max_examples=150,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(req=fuzzed_requests)
        def check(req: Fuzzed) -> None:
            loop.run_until_complete(_fuzz_one(fuzz, req))

        with capture_logs() as logs:
            check()
        assert [e for e in logs if e["event"] == "unhandled_error"] == []

        async def after() -> None:
            healthz = await raw_request(fuzz.url, b"GET /healthz")
            assert healthz.status == 200
            # Requests the HTTP parser refuses never reach a handler: a 400 from the server.
            refused = await raw_request(fuzz.url, b"FOO /v1/models")
            assert refused.status == 400
            assert (await raw_request(fuzz.url, b"GET /readyz")).status == 200
            app = fuzz.runner.app

            assert app.gate.in_flight == 0
            assert not app.runtime.streams

        loop.run_until_complete(after())
        # Nothing reached the upstream outside the account's base_url ("../" included).
        paths = [r["path"] for r in fuzz.upstream.requests]
        assert [p for p in paths if not p.startswith("/v1/")] == []
    finally:
        loop.run_until_complete(fuzz.runner.cleanup())
        loop.run_until_complete(fuzz.upstream_runner.cleanup())


async def test_deeply_nested_json_is_a_400_not_a_500(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(conf(account("a", upstream.url)))
    deep = b'{"model":"m","messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    reply = await post(base, deep)
    assert reply.headers["X-Request-ID"]
    assert reply.json()["error"]["code"] == "invalid_json"
    assert reply.status == 400


@pytest.mark.parametrize(
    "target",
    [b"/v1/files/a%3Fpurpose=x", b"/v1/models?q=a%26b%3Dc&x=1", b"/v1/files/a%2Fb"],
    ids=["encoded-question-mark-in-path", "encoded-ampersand-in-query", "encoded-slash"],
)
async def test_path_and_query_go_upstream_as_the_client_encoded_them(
    upstream: Upstream, seamline: StartSeamline, target: bytes
) -> None:
    base = await seamline(conf(account("a", upstream.url)))
    upstream.script(b'{"object":"list","data":[]}', content_type="application/json")
    reply = await raw_request(root(base), b"GET " + target)
    assert reply.status == 200
    assert upstream.requests[0]["path"] == target.decode()


async def test_expect_100_continue_is_answered_here_and_not_forwarded(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    # seamline holds the whole body before it goes upstream: an upstream asked to send
    # "100 Continue" first (some never do) would only stall the request.
    base = await seamline(conf(account("a", upstream.url)))
    upstream.script(*sse_stream("ok"))
    body = request_body(stream_options={"include_usage": True})  # goes as it is
    host, port = root(base).removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: s\r\nConnection: close\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    writer.write(head)
    async with asyncio.timeout(10):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 Continue")
        writer.write(body)
        reply = parse_answer(await reader.read())
    writer.close()
    assert reply.status == 200
    assert reply.body == b"".join(sse_stream("ok"))
    sent = {k.lower() for k in upstream.requests[0]["headers"]}
    assert "expect" not in sent
    assert upstream.requests[0]["body"] == body


async def test_a_gzipped_request_body_goes_upstream_inflated_without_its_encoding(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(conf(account("a", upstream.url)))
    upstream.script(*sse_stream("ok"))
    body = request_body(stream_options={"include_usage": True})  # goes as it is
    reply = await raw_request(
        root(base),
        b"POST /v1/chat/completions",
        gzip.compress(body),
        b"Content-Encoding: gzip",
        b"Content-Type: application/json",
    )
    assert reply.status == 200
    assert reply.body == b"".join(sse_stream("ok"))
    sent = {k.lower() for k in upstream.requests[0]["headers"]}
    assert "content-encoding" not in sent
    assert upstream.requests[0]["body"] == body


# -- 7. secrets that others may read -------------------------------------------------------


def _write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text, "utf-8")
    path.chmod(mode)
    return path


async def _warnings_at_start(path: Path) -> list[MutableMapping[str, Any]]:
    """Start seamline on the config file at ``path``; its readable-secrets warnings."""
    with capture_logs() as logs:
        runner = await start(cfg.load(path, env={"UPSTREAM_KEY": "sk-from-the-environment"}))
        await runner.cleanup()
    return [e for e in logs if e["event"] == "secrets_file_readable_by_others"]


ACCOUNT_WITHOUT_KEY = '[[accounts]]\nname = "a"\nbase_url = "http://127.0.0.1:9/v1"\n'


def _server_port_0(text: str) -> str:
    return '[server]\nhost = "127.0.0.1"\nport = 0\n[state]\npath = ":memory:"\n' + text


@pytest.mark.parametrize(
    ("account_lines", "mode", "warned"),
    [
        pytest.param('api_key = "sk-in-the-file"\n', 0o644, True, id="api-key-0644"),
        pytest.param('api_key = "sk-in-the-file"\n', 0o640, True, id="api-key-0640"),
        pytest.param('api_key = "sk-in-the-file"\n', 0o600, False, id="api-key-0600"),
        pytest.param('api_key_env = "UPSTREAM_KEY"\n', 0o644, False, id="api-key-from-env"),
        pytest.param("", 0o644, False, id="no-key"),
    ],
)
async def test_a_config_holding_an_api_key_readable_by_others_is_warned_about(
    tmp_path: Path, account_lines: str, mode: int, warned: bool
) -> None:
    text = _server_port_0(ACCOUNT_WITHOUT_KEY + account_lines)
    path = _write(tmp_path / "seamline.toml", text, mode)
    warnings = await _warnings_at_start(path)
    if not warned:
        assert warnings == []
        return
    assert len(warnings) == 1
    assert warnings[0]["path"] == str(path)
    assert warnings[0]["mode"] == oct(mode)
    assert warnings[0]["fix"] == f"chmod 600 {path}"
    assert warnings[0]["log_level"] == "warning"


@pytest.mark.parametrize("key", ["admin_key", "api_keys"])
async def test_a_config_holding_a_client_or_admin_key_is_warned_about(
    tmp_path: Path, key: str
) -> None:
    secret = json.dumps(["client-key-123"] if key == "api_keys" else "admin-key-123")
    text = f'[server]\nport = 0\n{key} = {secret}\n[state]\npath = ":memory:"\n'
    text += ACCOUNT_WITHOUT_KEY
    path = _write(tmp_path / "seamline.toml", text, 0o644)
    warnings = await _warnings_at_start(path)
    assert [w["path"] for w in warnings] == [str(path)]


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o600, False)])
async def test_a_qwen_oauth_credentials_file_readable_by_others_is_warned_about(
    tmp_path: Path, mode: int, warned: bool
) -> None:
    creds = {"access_token": "at-1", "refresh_token": "rt-1", "expiry_date": 0}
    creds_path = _write(tmp_path / "oauth_creds.json", json.dumps(creds), mode)
    text = '[[accounts]]\nname = "q"\nkind = "qwen-oauth"\n' + toml(credentials=str(creds_path))
    path = _write(tmp_path / "seamline.toml", _server_port_0(text), 0o644)
    warnings = await _warnings_at_start(path)
    # The config itself holds no secret: only the credentials file is named.
    assert [w["path"] for w in warnings] == ([str(creds_path)] if warned else [])
    if warned:
        assert warnings[0]["mode"] == "0o644"
        assert warnings[0]["fix"] == f"chmod 600 {creds_path}"


# -- 4 and 5. drain and reload: the real ``seamline serve`` process ------------------------


class Serve:
    """A running ``seamline serve`` process; its stderr (JSON log lines) read as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._more = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self.base = ""

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace"))
            self._more.set()
        self._more.set()

    async def line(self, match: Callable[[str], bool], within: float = 10.0) -> str:
        """The first line (from the start) that ``match`` accepts; fails after ``within`` s."""
        seen = 0
        try:
            async with asyncio.timeout(within):
                while True:
                    for text in self.lines[seen:]:
                        if match(text):
                            return text
                    seen = len(self.lines)
                    if self._reader.done():
                        pytest.fail(f"exited with {await self.proc.wait()}: {self.stderr}")
                    self._more.clear()
                    await self._more.wait()
        except TimeoutError:
            pytest.fail(f"no such line in {within}s: {self.stderr}")

    async def event(self, name: str) -> dict[str, Any]:
        """The first log event called ``name``; fails when none comes within 10 s."""
        text = await self.line(lambda t: f'"event": "{name}"' in t)
        event: dict[str, Any] = json.loads(text)
        return event

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for text in self.lines:
            with contextlib.suppress(ValueError):
                obj = json.loads(text)
                if isinstance(obj, dict) and obj.get("event") == name:
                    out.append(obj)
        return out

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def exit_code(self) -> int:
        """The exit code; fails when the process still runs 5 s later."""
        try:
            async with asyncio.timeout(5):
                code = await self.proc.wait()
                await self._reader
        except TimeoutError:
            pytest.fail(f"still running 5 s later: {self.stderr}")
        return code

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await self._reader


StartServe = Callable[[Path], Awaitable[Serve]]


@pytest.fixture
async def serve() -> AsyncIterator[StartServe]:
    """Start ``seamline serve --config PATH``; returns it once it announced its address."""
    running: list[Serve] = []

    async def _start(config: Path) -> Serve:
        proc = await asyncio.create_subprocess_exec(
            SEAMLINE,
            "serve",
            "--config",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=ENV,
            cwd=config.parent,
        )
        server = Serve(proc)
        running.append(server)
        line = await server.line(lambda t: t.startswith("seamline listening on "))
        server.base = line.removeprefix("seamline listening on ").strip()
        return server

    yield _start
    for server in running:
        await server.close()


def write_config(path: Path, text: str) -> Path:
    """Replace the file whole, as an editor or a deploy would (never half-written)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, "utf-8")
    tmp.chmod(0o600)
    os.replace(tmp, path)
    return path


async def readyz_status(session: aiohttp.ClientSession, base: str) -> int | None:
    """/readyz's status on a kept-alive connection; None once no connection is possible."""
    try:
        async with session.get(root(base) + "/readyz") as r:
            await r.read()
            return r.status
    except aiohttp.ClientConnectionError:
        return None


TIMEOUT = aiohttp.ClientTimeout(total=10)


async def test_sigterm_lets_a_stream_finish_within_drain_s_and_exits_0(
    upstream: Upstream, serve: StartServe, tmp_path: Path
) -> None:
    server = await serve(
        write_config(tmp_path / "s.toml", conf(account("a", upstream.url), drain_s=5))
    )
    expected = sse_stream("one", "two", "three", "four")
    upstream.script(*expected, pause=0.25)
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as probe,
        aiohttp.ClientSession(timeout=TIMEOUT) as streaming,
    ):
        assert await readyz_status(probe, server.base) == 200
        async with streaming.post(server.base + "/chat/completions", data=request_body()) as resp:
            first = await resp.content.readuntil(b"\n\n")
            started = time.monotonic()
            server.signal(signal.SIGTERM)
            await server.event("draining")
            assert upstream.closed == [], "the stream was over before the drain began"
            # Not ready for new work: 503 on a kept-alive connection, no new connections.
            ready = await readyz_status(probe, server.base)
            assert ready in (503, None)
            with pytest.raises(aiohttp.ClientConnectionError):
                await fetch("GET", root(server.base) + "/healthz")
            rest = await resp.read()
    assert first + rest == b"".join(expected)
    assert await server.exit_code() == 0
    assert time.monotonic() - started < 4, "waited for the deadline, not for the stream"
    assert server.events("drain_deadline_passed") == []
    assert "Traceback" not in server.stderr


async def test_sigterm_keeps_the_listener_open_for_the_grace_answering_readyz_503_on_it(
    upstream: Upstream, serve: StartServe, tmp_path: Path
) -> None:
    text = conf(account("a", upstream.url), drain_grace_s=1.0, drain_s=5)
    server = await serve(write_config(tmp_path / "s.toml", text))
    expected = sse_stream("one", "two", "three", "four")
    upstream.script(*expected, pause=0.5)  # outlasts the grace
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as streaming,
        streaming.post(server.base + "/chat/completions", data=request_body()) as resp,
    ):
        first = await resp.content.readuntil(b"\n\n")
        server.signal(signal.SIGTERM)
        await server.event("draining")
        began = time.monotonic()
        # New connections (each fetch opens one) are accepted, and told "not ready".
        ready = await fetch("GET", root(server.base) + "/readyz")
        assert ready.status == 503
        assert ready.json()["status"] == "draining"
        assert (await fetch("HEAD", root(server.base) + "/readyz")).status == 503
        assert (await fetch("GET", root(server.base) + "/healthz")).status == 200
        refused = await post(server.base)
        assert refused.status == 503
        assert refused.json()["error"]["message"] == "seamline is shutting down"
        assert time.monotonic() - began < 1.0, "the checks above took the grace"
        # Past the grace the listener is closed; the stream in flight goes on.
        await asyncio.sleep(began + 1.3 - time.monotonic())
        with pytest.raises(aiohttp.ClientConnectionError):
            await fetch("GET", root(server.base) + "/readyz")
        rest = await resp.read()
    assert first + rest == b"".join(expected)
    assert await server.exit_code() == 0
    assert server.events("drain_deadline_passed") == []
    assert "Traceback" not in server.stderr


async def test_sigterm_ends_a_stream_longer_than_drain_s_with_an_error_event(
    upstream: Upstream, serve: StartServe, tmp_path: Path
) -> None:
    text = conf(account("a", upstream.url), drain_s=0.5)
    server = await serve(write_config(tmp_path / "s.toml", text))
    upstream.script(event(chunk("still thinking")), ending="hang")
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as s,
        s.post(server.base + "/chat/completions", data=request_body()) as resp,
    ):
        first = await resp.content.readuntil(b"\n\n")
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        rest = await resp.read()  # a clean end of the response, not a broken connection
        ended = time.monotonic() - started
    assert first == event(chunk("still thinking"))
    assert rest.startswith(b"data: ") and rest.endswith(b"\n\n")
    assert rest.count(b"\n\n") == 1
    error = json.loads(rest.removeprefix(b"data: "))["error"]
    assert error["code"] == "server_shutting_down"
    assert error["type"] == "upstream_error"
    assert "shutting down" in error["message"]
    assert 0.4 < ended < 3
    assert await server.exit_code() == 0
    assert [e["streams"] for e in server.events("drain_deadline_passed")] == [1]
    assert "Traceback" not in server.stderr


async def test_a_second_sigterm_ends_the_drain_at_once(
    upstream: Upstream, serve: StartServe, tmp_path: Path
) -> None:
    text = conf(account("a", upstream.url), drain_s=30)
    server = await serve(write_config(tmp_path / "s.toml", text))
    upstream.script(event(chunk("still thinking")), ending="hang")
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as s,
        s.post(server.base + "/chat/completions", data=request_body()) as resp,
    ):
        await resp.content.readuntil(b"\n\n")
        server.signal(signal.SIGTERM)
        await server.event("draining")
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        rest = await resp.read()
        ended = time.monotonic() - started
    assert json.loads(rest.removeprefix(b"data: "))["error"]["code"] == "server_shutting_down"
    assert ended < 3, "the second signal did not cut the 30 s drain short"
    assert await server.exit_code() == 0
    assert "Traceback" not in server.stderr


async def test_sighup_reloads_accounts_keeps_state_and_rejects_a_bad_config(
    make_upstream: MakeUpstream, serve: StartServe, tmp_path: Path
) -> None:
    a, b, c = await make_upstream(), await make_upstream(), await make_upstream()
    fill_first = 'strategy = "fill_first"'
    path = write_config(
        tmp_path / "s.toml", conf(account("A", a.url), account("B", b.url), routing=fill_first)
    )
    server = await serve(path)
    a.script(
        b'{"error":{"message":"slow down"}}',
        status=429,
        content_type="application/json",
        headers={"Retry-After": "60"},
    )
    slow = sse_stream("in", "flight", "during", "reload")
    b.script(*slow, pause=0.2)
    c.script(*sse_stream("from C"))
    async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
        # A answers 429 (and cools down for 60 s); B takes the stream, which stays open.
        async with s.post(server.base + "/chat/completions", data=request_body()) as resp:
            first = await resp.content.readuntil(b"\n\n")
            before = await admin_accounts(server.base)
            assert before["A"]["state"] == "rate_limited"

            write_config(path, conf(account("A", a.url), account("C", c.url), routing=fill_first))
            server.signal(signal.SIGHUP)
            reloaded = await server.event("config_reloaded")
            assert reloaded["accounts"] == ["A", "C"]
            assert b.closed == [], "the stream was over before the reload"

            after = await admin_accounts(server.base)
            assert list(after) == ["A", "C"]
            # A stayed: its cooldown (and its counters) survived the reload.
            assert after["A"]["state"] == "rate_limited"
            assert after["A"]["cooling_down_until"] == before["A"]["cooling_down_until"]
            assert after["A"]["requests"] == 1
            assert after["C"]["state"] == "available"
            # The added account takes requests; the removed one gets none.
            reply = await post(server.base)
            assert reply.body == b"".join(sse_stream("from C"))
            assert (len(a.requests), len(b.requests), len(c.requests)) == (1, 1, 1)
            # The stream that started before the reload finishes normally.
            rest = await resp.read()
        assert first + rest == b"".join(slow)

        # A config with a mistake: one line naming file and key, and the old one stays.
        write_config(path, "[server]\nprot = 1\n" + account("B", b.url))
        server.signal(signal.SIGHUP)
        rejected = await server.event("config_reload_rejected")
        assert rejected["error"] == f"{path}: server.prot: unknown key"
        assert rejected["level"] == "error"
        reply = await post(server.base)
        assert reply.status == 200
        assert (len(a.requests), len(b.requests), len(c.requests)) == (1, 1, 2)
        assert list(await admin_accounts(server.base)) == ["A", "C"]
    server.signal(signal.SIGTERM)
    assert await server.exit_code() == 0
    assert len(server.events("config_reload_rejected")) == 1
    assert len(server.events("config_reloaded")) == 1
    assert "Traceback" not in server.stderr


async def test_a_reload_applies_the_limits_and_routing_to_new_requests(
    make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    a, b = await make_upstream(), await make_upstream()
    for up in (a, b):
        up.script(*sse_stream("ok"))
    accounts = account("A", a.url) + account("B", b.url)
    path = write_config(tmp_path / "s.toml", conf(accounts, routing='strategy = "fill_first"'))
    runner = await start(cfg.load(path), "127.0.0.1", 0)
    try:
        app = runner.app
        base = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        assert [(await post(base)).status for _ in range(2)] == [200, 200]
        assert (len(a.requests), len(b.requests)) == (2, 0)
        assert (await post(base, request_body(padding="x" * 3000))).status == 200

        tighter = conf(
            accounts,
            routing='strategy = "round_robin"',
            client_rpm=2,
            max_concurrent=1,
            max_body_bytes=1000,
        )
        write_config(path, tighter)
        assert reload(app.runtime, str(path))

        assert [(await post(base)).status for _ in range(3)] == [200, 200, 429]
        assert (len(a.requests), len(b.requests)) == (4, 1)  # round robin now
        app.gate.windows.clear()  # a minute passes
        big = request_body(padding="x" * 3000)
        assert (await post(base, big)).status == 413
        assert (await post(base, _chunked(big))).status == 413
        a.script(event(chunk("held")), *sse_stream("rest"), pause=0.2)
        async with (
            aiohttp.ClientSession() as s,
            s.post(base + "/chat/completions", data=request_body()) as held,
        ):
            await held.content.readuntil(b"\n\n")
            assert (await post(base)).status == 503
            await held.read()
    finally:
        await runner.cleanup()
