"""Outbound HTTP proxies: the wire client through scripted proxies."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest
from peers import (
    OK,
    Serve,
    answering,
    serve,
    tls_files,
    tls_upstream,
)
from proxies import (
    StartScripted,
    free_port,
    scripted_proxy,
)

from proxy import wire
from proxy.egress import ProxyURL, parse_proxy
from proxy.errors import UpstreamUnreachable

__all__ = ["scripted_proxy", "serve", "tls_files"]  # fixtures, imported to be found by pytest

PASSWORD = "pr0xy-s3cret-pw"


@pytest.fixture
async def wire_client() -> AsyncIterator[wire.Client]:
    c = wire.Client()
    yield c
    c.close()


async def get(
    client: wire.Client, url: str, proxy: ProxyURL | None, method: str = "GET", body: bytes = b""
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
    scripted_proxy: StartScripted, wire_client: wire.Client
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
    scripted_proxy: StartScripted, wire_client: wire.Client
) -> None:
    proxy = await scripted_proxy()
    await get(wire_client, "http://upstream.example/v1/x", parse_proxy(proxy.url()))
    assert proxy.heads == [
        b"GET http://upstream.example/v1/x HTTP/1.1\r\nHost: upstream.example\r\n\r\n"
    ]


async def test_proxied_and_direct_connections_to_one_upstream_never_mix_in_the_pool(
    serve: Serve, scripted_proxy: StartScripted, wire_client: wire.Client
) -> None:
    up = await serve(answering(OK))
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
    scripted_proxy: StartScripted, wire_client: wire.Client, refusal: bytes
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
    scripted_proxy: StartScripted, wire_client: wire.Client
) -> None:
    proxy = await scripted_proxy(
        forward=b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 6\r\n\r\ndenied"
    )
    with pytest.raises(UpstreamUnreachable, match=rf"proxy 127\.0\.0\.1:{proxy.port} refused"):
        await get(wire_client, "http://upstream.example/v1/x", parse_proxy(proxy.url("me", "x")))


async def test_a_proxy_that_is_down_is_unreachable_naming_it(wire_client: wire.Client) -> None:
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
    wire_client: wire.Client,
    answer: bytes,
    after: bytes,
    problem: str,
) -> None:
    proxy = await scripted_proxy(answer=answer, after=after)
    with pytest.raises(UpstreamUnreachable, match=problem):
        await get(wire_client, "https://localhost:1/v1/x", parse_proxy(proxy.url()))


async def test_https_goes_through_a_connect_tunnel_verified_by_name_without_proxy_credentials(
    scripted_proxy: StartScripted,
    wire_client: wire.Client,
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
    wire_client: wire.Client,
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
