"""What reaches the client is the upstream's answer, not the upstream's business.

Response headers pass by an allowlist; no value holding one of seamline's secrets
reaches a client, in headers or bodies, for JSON, event-stream and error answers alike;
headers a client could spoof about its identity or the route never go upstream; paths
that could mean one thing here and another upstream are refused.
"""

from __future__ import annotations

import json

import pytest

from support.builders import completion, config_text, key_of, sse_stream
from support.clients import Reply, raw_request, root
from support.seamline import StartSeamline
from support.upstream import Upstream

KEY = key_of("acc1")  # the account's key

# Headers a LiteLLM proxy, a gateway or a careless upstream adds to every answer.
NOISY = {
    "x-litellm-key-spend": "0.0042",
    "x-litellm-model-api-base": "https://internal.example/v1",
    "x-litellm-key-max-budget": "100",
    "Location": "https://internal.example/redirect",
    "WWW-Authenticate": 'Bearer realm="internal"',
    "Authorization": f"Bearer {KEY}",
    "X-Echo-Key": KEY,
    "Set-Cookie": "session=abc; HttpOnly",
    "openai-organization": "org-private",
    "x-ratelimit-remaining-requests": "42",
    "Server": "uvicorn",
    "x-request-id": "upstream-req-7",
    "openai-processing-ms": "12",
}
SEAMLINE_OWN = {"content-type", "x-request-id", "x-upstream-request-id", "date", "server"}
SSE_OWN = {"cache-control", "x-accel-buffering"}
FRAMING = {"content-length", "transfer-encoding", "connection", "keep-alive"}


async def answer(base: str, stream: bool = False) -> Reply:
    body = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    ).encode()
    return await raw_request(
        root(base),
        b"POST /v1/chat/completions",
        body,
        b"Content-Type: application/json",
    )


def forwarded(reply: Reply) -> set[str]:
    """The header names of an answer that are not seamline's own or the framing."""
    return {k.lower() for k in reply.headers} - SEAMLINE_OWN - SSE_OWN - FRAMING


@pytest.mark.parametrize("kind", ["json", "stream", "error_500", "json_to_stream"])
async def test_only_allowed_response_headers_reach_the_client(
    upstream: Upstream, seamline: StartSeamline, kind: str
) -> None:
    if kind == "json" or kind == "json_to_stream":
        upstream.script(completion("hi"), content_type="application/json", headers=NOISY)
    elif kind == "stream":
        upstream.script(*sse_stream("hi"), headers=NOISY)
    else:
        body = json.dumps({"error": {"message": "boom"}}).encode()
        upstream.script(body, status=500, content_type="application/json", headers=NOISY)
    base = await seamline(config_text(("acc1", upstream.url)))
    reply = await answer(base, stream=kind in ("stream", "json_to_stream"))
    assert forwarded(reply) == {"openai-processing-ms"}
    assert reply.headers["x-upstream-request-id"] == "upstream-req-7"
    assert reply.headers["x-request-id"] != "upstream-req-7"
    assert "uvicorn" not in reply.headers.get("server", "")
    raw = json.dumps(dict(reply.headers))
    assert KEY not in raw and "internal.example" not in raw and "org-private" not in raw


async def test_retry_after_passes_on_a_429_and_nowhere_else(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    body = json.dumps({"error": {"message": "slow down"}}).encode()
    upstream.script(body, status=429, content_type="application/json", headers={"Retry-After": "7"})
    base = await seamline(config_text(("acc1", upstream.url)))
    reply = await answer(base)
    assert reply.status == 429
    assert reply.headers["retry-after"] == "7"
    upstream.scripts[:] = []
    upstream.script(completion("hi"), content_type="application/json", headers={"Retry-After": "7"})
    base = await seamline(config_text(("acc1", upstream.url)))
    reply = await answer(base)
    assert reply.status == 200
    assert "retry-after" not in reply.headers


async def test_the_operator_allows_more_headers_by_name_or_glob_but_never_a_secret(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    headers = {
        "x-ratelimit-remaining-requests": "42",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-echo": f"key={KEY}",
        "x-custom": "yes",
        "x-other": "no",
    }
    upstream.script(completion("hi"), content_type="application/json", headers=headers)
    server = 'forward_response_headers = ["x-ratelimit-*", "X-Custom"]'
    base = await seamline(config_text(("acc1", upstream.url), server=server))
    reply = await answer(base)
    assert forwarded(reply) == {
        "x-ratelimit-remaining-requests",
        "x-ratelimit-limit-tokens",
        "x-custom",
    }


@pytest.mark.parametrize("kind", ["json", "stream", "json_to_stream", "error_400", "stream_error"])
async def test_an_upstream_that_echoes_its_key_never_shows_it_to_the_client(
    upstream: Upstream, seamline: StartSeamline, kind: str
) -> None:
    if kind in ("json", "json_to_stream"):
        upstream.script(completion(f"my key is {KEY}"), content_type="application/json")
    elif kind == "stream":
        upstream.script(*sse_stream("my key is ", KEY, " ok"))
    elif kind == "stream_error":
        upstream.script(
            b"data: " + json.dumps({"error": {"message": f"bad {KEY}"}}).encode() + b"\n\n"
        )
    else:
        body = json.dumps({"error": {"message": f"bad key {KEY}"}}).encode()
        upstream.script(body, status=400, content_type="application/json")
    base = await seamline(config_text(("acc1", upstream.url)))
    reply = await answer(base, stream=kind in ("stream", "json_to_stream", "stream_error"))
    assert KEY.encode() not in reply.body
    assert b"[REDACTED]" in reply.body


SPOOFABLE = [
    "X-Real-IP",
    "True-Client-IP",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Forwarded-Port",
    "Forwarded",
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-HTTP-Method-Override",
    "X-Method-Override",
    "X-Client-IP",
    "CF-Connecting-IP",
    "Via",
]


async def test_spoofable_identity_and_routing_headers_never_go_upstream(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    upstream.script(completion("hi"), content_type="application/json")
    base = await seamline(config_text(("acc1", upstream.url)))
    spoofed = [f"{name}: 10.0.0.1".encode() for name in SPOOFABLE]
    kept = [b"X-Stainless-Lang: python", b"OpenAI-Beta: assistants=v2", b"User-Agent: t/1"]
    underscored = [b"X_Real_IP: 10.0.0.2", b"x_custom: 1"]
    body = b'{"model":"m","messages":[]}'
    reply = await raw_request(
        root(base),
        b"POST /v1/chat/completions",
        body,
        b"Content-Type: application/json",
        *spoofed,
        *kept,
        *underscored,
    )
    assert reply.status == 200
    got = {k.lower(): v for k, v in upstream.requests[0]["headers"].items()}
    for name in SPOOFABLE:
        assert name.lower() not in got
    assert not [k for k in got if "_" in k]
    assert got["x-stainless-lang"] == "python"
    assert got["openai-beta"] == "assistants=v2"
    assert got["user-agent"] == "t/1"
    assert "10.0.0." not in json.dumps(got)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat\\completions",
        "/v1/chat%5ccompletions",
        "/v1/chat%5Ccompletions",
        "/v1/models;jsessionid=1",
        "/v1/models%3bx",
        "/v1/%252e%252e/admin",
        "/v1/%252fadmin",
        "/v1/models/%c0%ae%c0%ae",
        "/v1/models/%e0%80%af",
        "/v1/models/%ff",
        "/v1/models/a%00b",
        "/v1/models/a%0d%0aX-Injected:%201",
    ],
)
async def test_ambiguous_paths_get_a_400_and_never_reach_the_upstream(
    upstream: Upstream, seamline: StartSeamline, path: str
) -> None:
    upstream.script(b'{"object":"list","data":[]}', content_type="application/json")
    base = await seamline(config_text(("acc1", upstream.url)))
    reply = await raw_request(root(base), f"GET {path}".encode())
    assert reply.status == 400, reply
    assert json.loads(reply.body)["error"]["code"] == "invalid_path"
    assert upstream.requests == []


async def test_ordinary_encoded_paths_still_pass(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    upstream.script(b'{"id":"x","object":"model"}', content_type="application/json")
    base = await seamline(config_text(("acc1", upstream.url)))
    reply = await raw_request(root(base), b"GET /v1/models/org%2Fqwen-2.5%20max")
    assert reply.status == 200
    assert upstream.requests[0]["path"] == "/v1/models/org%2Fqwen-2.5%20max"


async def test_no_answer_names_the_software_versions_it_runs_on(
    upstream: Upstream, seamline: StartSeamline
) -> None:
    base = await seamline(config_text(("a", upstream.url)))
    upstream.script(*sse_stream("hi"))
    body = b'{"model":"m","stream":true,"messages":[]}'
    at = root(base)
    answers = [
        await raw_request(at, b"POST /v1/chat/completions", body),  # a stream
        await raw_request(at, b"GET /healthz"),  # a whole answer
        await raw_request(at, b"GET /nowhere"),  # seamline's error
        await raw_request(at, b"GET /healthz", b"", b"X: \x01"),  # aiohttp's own refusal
    ]
    assert [r.status for r in answers] == [200, 200, 404, 400]
    for reply in answers:
        assert reply.headers.get("server") == "seamline", reply
        assert b"aiohttp" not in reply.body and b"Python" not in reply.body
