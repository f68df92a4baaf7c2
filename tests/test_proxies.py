"""Outbound HTTP proxies: the wire client through scripted proxies, and seamline end to
end through them and through tinyproxy (accounts' own proxies and the environment's)."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.config import parse
from proxy.config.egress import ProxyURL, parse_proxy
from proxy.errors import UpstreamUnreachable
from proxy.gateway.runtime import oauth_accounts
from proxy.upstream import wire
from support.builders import OK, completion, config_text, sse_stream
from support.clients import client, collect, text_of
from support.http_proxies import StartScripted, StartTinyproxy
from support.ports import free_port
from support.seamline import StartSeamline
from support.tls import tls_upstream
from support.upstream import StartRawUpstream, Upstream, answering

PASSWORD = "pr0xy-s3cret-pw"


async def get(
    client: wire.ConnectionPool,
    url: str,
    proxy: ProxyURL | None,
    method: str = "GET",
    body: bytes = b"",
) -> tuple[int, bytes]:
    resp = await client.request(method, url, {}, body, connect=5, head=5, total=0, proxy=proxy)
    try:
        parts = []
        while piece := await resp.read():
            parts.append(piece)
        return resp.status, b"".join(parts)
    finally:
        resp.close()


# -- the wire client, through scripted proxies ------------------------------------------


async def test_an_http_request_through_a_proxy_names_its_whole_url_and_the_proxys_credentials(
    scripted_proxy: StartScripted, wire_client: wire.ConnectionPool
) -> None:
    proxy = await scripted_proxy()
    via = parse_proxy(proxy.url("me", PASSWORD))
    status, body = await get(wire_client, "http://upstream.example:8080/v1/x?q=%3F", via)
    assert (status, body) == (200, b"ok")
    token = base64.b64encode(f"me:{PASSWORD}".encode()).decode()
    assert proxy.heads == [
        b"GET http://upstream.example:8080/v1/x?q=%3F HTTP/1.1\r\n"
        b"Host: upstream.example:8080\r\n"
        b"Proxy-Authorization: Basic " + token.encode() + b"\r\n\r\n"
    ]
    # The proxy looks the upstream's name up, not seamline (which may not resolve it).
    assert ("upstream.example", 8080) not in wire_client._dns


async def test_an_http_request_through_a_proxy_without_credentials_sends_none(
    scripted_proxy: StartScripted, wire_client: wire.ConnectionPool
) -> None:
    proxy = await scripted_proxy()
    await get(wire_client, "http://upstream.example/v1/x", parse_proxy(proxy.url()))
    assert proxy.heads == [
        b"GET http://upstream.example/v1/x HTTP/1.1\r\nHost: upstream.example\r\n\r\n"
    ]


async def test_proxied_and_direct_connections_to_one_upstream_never_mix_in_the_pool(
    raw_upstream: StartRawUpstream, scripted_proxy: StartScripted, wire_client: wire.ConnectionPool
) -> None:
    up = await raw_upstream(answering(OK))
    proxy = await scripted_proxy()
    one, two = parse_proxy(proxy.url("a", "one")), parse_proxy(proxy.url("b", "two"))
    for via in (None, one, None, one, two, None, two):
        assert await get(wire_client, up.url(), via) == (200, b"ok")
    assert len(up.requests) == 3 and len(up.peers) == 1  # direct: one connection, reused
    assert len(proxy.heads) == 4
    assert proxy.connections == 2  # one per set of proxy credentials, each reused
    assert all(h.startswith(b"GET http://") for h in proxy.heads)
    keys = {key[3] for key in wire_client._idle}
    assert keys == {None, one, two}


@pytest.mark.parametrize(
    "refusal",
    [
        b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n",
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 502 Bad Gateway\r\n\r\n",
    ],
)
async def test_a_proxy_that_refuses_connect_is_unreachable_naming_only_its_host_and_port(
    scripted_proxy: StartScripted, wire_client: wire.ConnectionPool, refusal: bytes
) -> None:
    proxy = await scripted_proxy(answer=refusal)
    via = parse_proxy(proxy.url("me", PASSWORD))
    status = refusal.split(b" ", 2)[1].decode()
    with pytest.raises(UpstreamUnreachable) as caught:
        await get(wire_client, "https://api.example:8443/v1/x", via)
    message = str(caught.value)
    assert message.startswith(
        f"upstream unreachable: proxy 127.0.0.1:{proxy.port} refused CONNECT to"
        f" api.example:8443: {status}"
    )
    assert PASSWORD not in message and "me:" not in message
    token = base64.b64encode(f"me:{PASSWORD}".encode())
    assert proxy.heads == [
        b"CONNECT api.example:8443 HTTP/1.1\r\nHost: api.example:8443\r\n"
        b"Proxy-Authorization: Basic " + token + b"\r\n\r\n"
    ]


async def test_a_407_to_a_forwarded_http_request_is_unreachable_not_an_answer(
    scripted_proxy: StartScripted, wire_client: wire.ConnectionPool
) -> None:
    proxy = await scripted_proxy(
        forward=b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 6\r\n\r\ndenied"
    )
    with pytest.raises(UpstreamUnreachable, match=rf"proxy 127\.0\.0\.1:{proxy.port} refused"):
        await get(wire_client, "http://upstream.example/v1/x", parse_proxy(proxy.url("me", "x")))


async def test_a_proxy_that_is_down_is_unreachable_naming_it(
    wire_client: wire.ConnectionPool,
) -> None:
    port = free_port()
    via = parse_proxy(f"http://me:{PASSWORD}@127.0.0.1:{port}")
    for url in ("http://upstream.example/v1/x", "https://upstream.example/v1/x"):
        with pytest.raises(
            UpstreamUnreachable, match=rf"^upstream unreachable: proxy 127\.0\.0\.1:{port}: "
        ) as e:
            await get(wire_client, url, via)
        assert PASSWORD not in str(e.value)


@pytest.mark.parametrize(
    ("answer", "after", "problem"),
    [
        (b"HTTP/1.1 200 OK\r\n\r\n", b"\x16\x03\x01 early", "sent bytes after its answer"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", b"", "answer to CONNECT is not HTTP"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", b"", "exceeds 65536 bytes"),
    ],
)
async def test_a_proxy_whose_connect_answer_is_not_sane_is_unreachable(
    scripted_proxy: StartScripted,
    wire_client: wire.ConnectionPool,
    answer: bytes,
    after: bytes,
    problem: str,
) -> None:
    proxy = await scripted_proxy(answer=answer, after=after)
    with pytest.raises(UpstreamUnreachable, match=problem):
        await get(wire_client, "https://localhost:1/v1/x", parse_proxy(proxy.url()))


async def test_https_goes_through_a_connect_tunnel_verified_by_name_without_proxy_credentials(
    scripted_proxy: StartScripted,
    wire_client: wire.ConnectionPool,
    tls_files: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = tls_files
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    tls = await tls_upstream(cert, key)
    try:
        proxy = await scripted_proxy()
        via = parse_proxy(proxy.url("me", PASSWORD))
        url = f"https://localhost:{tls.port}/hello"
        for _ in range(2):
            assert await get(wire_client, url, via) == (200, f"tls localhost:{tls.port}".encode())
    finally:
        await tls.runner.cleanup()
    assert proxy.connections == 1, "the tunnel is kept alive and reused"
    assert [h.split(b"\r\n")[0] for h in proxy.heads] == [
        f"CONNECT localhost:{tls.port} HTTP/1.1".encode()
    ]
    # Inside the tunnel, the upstream sees an ordinary request: no proxy credentials.
    assert len(tls.headers) == 2
    assert all("Proxy-Authorization" not in h for h in tls.headers)
    assert all(h["Host"] == f"localhost:{tls.port}" for h in tls.headers)


async def test_an_untrusted_upstream_certificate_is_refused_through_the_tunnel_too(
    scripted_proxy: StartScripted,
    wire_client: wire.ConnectionPool,
    tls_files: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = tls_files
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent")
    monkeypatch.setenv("SSL_CERT_DIR", "/nonexistent")
    tls = await tls_upstream(cert, key)
    try:
        proxy = await scripted_proxy()
        with pytest.raises(
            UpstreamUnreachable, match=r"TLS failed: .*certificate.* \(through proxy"
        ):
            await get(wire_client, f"https://localhost:{tls.port}/hello", parse_proxy(proxy.url()))
    finally:
        await tls.runner.cleanup()


# -- seamline end to end --------------------------------------------------------------

ADMIN = "admin-key-for-tests"


def through(upstream_url: str, proxy: str | None = None, admin: bool = False) -> str:
    """A config with one account at ``upstream_url``, its ``proxy`` when given."""
    server = f'admin_key = "{ADMIN}"' if admin else ""
    text = config_text(("acc1", upstream_url), server=server)
    return text + (f'proxy = "{proxy}"\n' if proxy is not None else "")


def via_tinyproxy(up: Upstream) -> list[bool]:
    """For each request the upstream got, whether it came through tinyproxy."""
    return ["tinyproxy" in r["headers"].get("Via", "") for r in up.requests]


async def test_an_accounts_calls_go_to_its_proxy_in_absolute_form_with_its_credentials(
    seamline: StartSeamline, scripted_proxy: StartScripted
) -> None:
    body = completion("via")
    proxy = await scripted_proxy(
        forward=b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d"
        b"\r\n\r\n%s" % (len(body), body)
    )
    base = await seamline(through("http://llm.internal:8000/v1", proxy.url("me", PASSWORD)))
    async with client(base) as c:
        answer = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert answer.choices[0].message.content == "via"
    head = proxy.heads[0]
    assert head.startswith(b"POST http://llm.internal:8000/v1/chat/completions HTTP/1.1\r\n")
    token = base64.b64encode(f"me:{PASSWORD}".encode())
    assert b"\r\nProxy-Authorization: Basic " + token + b"\r\n" in head
    assert b"\r\nAuthorization: Bearer sk-test-acc1-secret\r\n" in head  # the account's key


async def test_admin_accounts_shows_each_accounts_way_out_without_credentials(
    seamline: StartSeamline,
) -> None:
    text = config_text(
        ("own", "https://api.example/v1"),
        ("direct", "https://api.example/v1"),
        ("env", "https://api.example/v1"),
        ("no-proxy", "https://llm.internal/v1"),
        server=f'admin_key = "{ADMIN}"',
    )
    text = text.replace(
        'name = "own"\n', f'name = "own"\nproxy = "http://me:{PASSWORD}@10.0.0.9:3128"\n'
    ).replace('name = "direct"\n', 'name = "direct"\nproxy = "direct"\n')
    env = {"HTTPS_PROXY": f"http://u:{PASSWORD}@10.0.0.8:8080", "NO_PROXY": ".internal"}
    base = await seamline(text, env)
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            base.removesuffix("/v1") + "/admin/accounts",
            headers={"Authorization": f"Bearer {ADMIN}"},
        ) as resp,
    ):
        body = await resp.text()
    rows = {row["name"]: row["proxy"] for row in json.loads(body)["accounts"]}
    assert rows == {
        "own": "http://10.0.0.9:3128",
        "direct": 'direct (proxy = "direct")',
        "env": "http://10.0.0.8:8080 (from HTTPS_PROXY)",
        "no-proxy": "direct (NO_PROXY)",
    }
    assert PASSWORD not in body


async def test_seamline_reaches_an_http_upstream_through_tinyproxy_in_absolute_form(
    upstream: Upstream, seamline: StartSeamline, tinyproxy: StartTinyproxy
) -> None:
    tp = tinyproxy()
    base = await seamline(through(upstream.url, tp.url()))
    upstream.script(*sse_stream("Hel", "lo"))
    assert text_of(await collect(base)) == "Hello"
    assert via_tinyproxy(upstream) == [True]
    port = upstream.url.split(":")[2].split("/")[0]
    assert re.search(
        rf"Request \(file descriptor \d+\): POST http://127\.0\.0\.1:{port}/v1/chat/completions "
        r"HTTP/1\.1",
        tp.log(),
    ), tp.log()


async def test_seamline_reaches_an_https_upstream_through_tinyproxys_connect_tunnel(
    seamline: StartSeamline,
    tinyproxy: StartTinyproxy,
    tls_files: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = tls_files
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # what seamline's TLS context trusts
    tls = await tls_upstream(cert, key)
    try:
        tp = tinyproxy(connect_ports=(tls.port,), auth=("seamline", PASSWORD))
        base = await seamline(
            through(f"https://localhost:{tls.port}/v1", tp.url("seamline", PASSWORD))
        )
        async with client(base) as c:
            models = await c.models.list()
    finally:
        await tls.runner.cleanup()
    assert [m.id for m in models.data] == ["m"]
    assert f"CONNECT localhost:{tls.port} HTTP/1.1" in tp.log()
    assert len(tls.headers) == 1
    assert "Proxy-Authorization" not in tls.headers[0]  # it went on the CONNECT only


@pytest.mark.parametrize(
    ("scheme", "password"),
    [
        # Over CONNECT, any refusal is the proxy's own.
        pytest.param("https", PASSWORD, id="https-wrong-password"),
        # A forwarded request's answer is the upstream's, but for a 407: only a proxy
        # asks for proxy credentials. (tinyproxy answers a wrong password with 401,
        # which cannot be told from the upstream's own 401; a missing one with 407.)
        pytest.param("http", "", id="http-no-credentials"),
    ],
)
async def test_refused_proxy_credentials_are_a_clean_502_naming_the_proxy_and_nothing_leaks(
    upstream: Upstream,
    seamline: StartSeamline,
    tinyproxy: StartTinyproxy,
    captured_logs: list[MutableMapping[str, Any]],
    scheme: str,
    password: str,
) -> None:
    tp = tinyproxy(connect_ports=(443,), auth=("seamline", "the-right-one"))
    target = upstream.url if scheme == "http" else "https://api.example:443/v1"
    user = "seamline" if password else ""
    base = await seamline(through(target, tp.url(user, password), admin=True))
    root = base.removesuffix("/v1")
    async with aiohttp.ClientSession() as session:
        async with session.post(
            base + "/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": "Bearer client-key"},
        ) as resp:
            status, body = resp.status, await resp.text()
        async with session.get(
            root + "/admin/accounts", headers={"Authorization": f"Bearer {ADMIN}"}
        ) as resp:
            admin_body = await resp.text()
    assert status == 502, body
    message = json.loads(body)["error"]["message"]
    assert message.startswith(f"upstream unreachable: proxy 127.0.0.1:{tp.port} refused")
    assert upstream.requests == []
    row = json.loads(admin_body)["accounts"][0]
    assert row["proxy"] == f"http://127.0.0.1:{tp.port}"
    assert row["last_error"].startswith(f"upstream unreachable: proxy 127.0.0.1:{tp.port}")
    assert not row["disabled"]  # the account's own key was never tried
    token = base64.b64encode(f"seamline:{PASSWORD}".encode()).decode()
    for text in (body, admin_body, repr(captured_logs)):
        assert PASSWORD not in text
        assert token not in text
    summary = [e for e in captured_logs if e.get("event") == "request" and e.get("status") == 502]
    assert len(summary) == 1, captured_logs
    assert f"proxy 127.0.0.1:{tp.port}" in summary[0]["error"]


@pytest.mark.parametrize(
    ("no_proxy", "proxied"),
    [
        ("127.0.0.1", False),
        ("*", False),
        ("localhost, .example.com", True),
        ("127.0.0.0/8", False),
        ("127.0.0.1:1", True),  # another port
        ("127.0.0.1:{port}", False),
    ],
)
async def test_no_proxy_sends_matching_upstreams_direct_and_the_rest_through_the_proxy(
    upstream: Upstream,
    seamline: StartSeamline,
    tinyproxy: StartTinyproxy,
    no_proxy: str,
    proxied: bool,
) -> None:
    tp = tinyproxy()
    port = upstream.url.split(":")[2].split("/")[0]
    env = {"HTTP_PROXY": tp.url(), "NO_PROXY": no_proxy.replace("{port}", port)}
    base = await seamline(through(upstream.url), env)
    upstream.script(*sse_stream("ok"))
    assert text_of(await collect(base)) == "ok"
    assert via_tinyproxy(upstream) == [proxied]


async def test_the_environments_lowercase_proxy_wins_over_its_uppercase_one(
    upstream: Upstream, seamline: StartSeamline, tinyproxy: StartTinyproxy
) -> None:
    tp = tinyproxy()
    dead = f"http://127.0.0.1:{free_port()}"
    base = await seamline(through(upstream.url), {"http_proxy": tp.url(), "HTTP_PROXY": dead})
    upstream.script(*sse_stream("ok"))
    assert text_of(await collect(base)) == "ok"
    assert via_tinyproxy(upstream) == [True]


@pytest.mark.parametrize("own", ["tinyproxy", "direct"])
async def test_an_accounts_own_proxy_wins_over_the_environment(
    upstream: Upstream, seamline: StartSeamline, tinyproxy: StartTinyproxy, own: str
) -> None:
    tp = tinyproxy()
    dead = f"http://127.0.0.1:{free_port()}"  # the environment's: nothing listens there
    setting = tp.url() if own == "tinyproxy" else "direct"
    base = await seamline(through(upstream.url, setting), {"HTTP_PROXY": dead, "HTTPS_PROXY": dead})
    upstream.script(*sse_stream("ok"))
    assert text_of(await collect(base)) == "ok"
    assert via_tinyproxy(upstream) == [own == "tinyproxy"]


async def test_an_oauth_accounts_token_calls_go_through_its_proxy(
    aiohttp_server: Any, tinyproxy: StartTinyproxy, tmp_path: Path
) -> None:
    seen: list[dict[str, str]] = []

    async def token(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        answer = {"access_token": "at-new", "refresh_token": "rt-new", "expires_in": 3600}
        return web.json_response(answer | {"token_type": "Bearer"})

    app = web.Application()
    app.router.add_post("/token", token)
    server = await aiohttp_server(app)
    creds = tmp_path / "oauth_creds.json"
    creds.write_text(
        json.dumps(
            {"access_token": "at-old", "refresh_token": "rt-old", "token_type": "Bearer"}
            | {"resource_url": "portal.qwen.ai", "expiry_date": 0}
        )
    )
    tp = tinyproxy(auth=("seamline", PASSWORD))
    config = parse(
        '[[accounts]]\nname = "q"\nkind = "qwen-oauth"\n'
        f'credentials = "{creds}"\ntoken_url = "{server.make_url("/token")}"\n'
        f'proxy = "{tp.url("seamline", PASSWORD)}"\n',
        "test.toml",
        {},
    )
    account = oauth_accounts(config)["q"]
    async with aiohttp.ClientSession() as session:
        assert await account.token(session, time.time()) == "at-new"
    assert len(seen) == 1
    assert "tinyproxy" in seen[0].get("Via", "")
    assert "Proxy-Authorization" not in seen[0]
    assert f"POST http://127.0.0.1:{server.port}/token HTTP/1.1" in tp.log()
