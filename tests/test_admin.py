"""The admin API on a real seamline: reset, disable and enable without a restart, the
requests in flight, usage per account and client key; who did what in the log, and never
a secret in any answer or line."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from proxy import config as cfg
from proxy.gateway.app import start
from proxy.gateway.runtime import reload
from proxy.pool.accounts import Limits, Pool
from support.admin import (
    CLIENT_KEYS,
    MakePair,
    account_rows,
    admin,
    admin_headers,
    answer,
    chat,
    config,
    fetch,
    fingerprint,
    rate_limit,
)
from support.builders import ADMIN_KEY, chunk, key_of
from support.seamline import StartSeamline
from support.upstream import MakeUpstream, Upstream

# -- the pool: an operator's disable and enable -----------------------------------------


def test_an_operators_disable_is_no_error_and_survives_a_reload_and_a_restart() -> None:
    pool = Pool([Limits("a"), Limits("b")])
    a = pool.states["a"]
    assert pool.operator_disable(a, "by an operator: key rotated")
    assert not pool.operator_disable(a, "by an operator: again")
    assert (a.errors, a.last_error) == (0, None)
    assert pool.pick(None, 1000.0).name == "b"  # type: ignore[union-attr]
    pool.replace_accounts([Limits("a"), Limits("b")])  # a SIGHUP
    assert a.disabled == "by an operator: again"
    restarted = Pool([Limits("a")])
    restarted.states["a"].restore(a.to_dict())
    assert restarted.states["a"].disabled == "by an operator: again"
    pool.enable(a, 1000.0)
    assert a.disabled is None and a.enabled_at == 1000.0
    assert pool.block(a, 1000.0) is None


# -- actions ------------------------------------------------------------------------------


async def test_reset_clears_a_cooldown_and_the_next_request_goes_to_the_account(
    pair: MakePair,
) -> None:
    p = await pair()
    p.a.scripts.clear()
    rate_limit(p.a)
    answer(p.a, "from A")
    first = await chat(p.base)
    assert first.status == 200 and first.json()["choices"][0]["message"]["content"] == "ok"
    row = (await account_rows(p.root))["A"]
    assert row["state"] == "rate_limited" and row["cooling_down_until"] is not None
    # Still parked: fill_first would take A first if it could.
    assert (await chat(p.base)).json()["choices"][0]["message"]["content"] == "ok"

    reply = await admin("POST", p.root, "/admin/accounts/A/reset")
    assert reply.status == 200, reply.body
    after = reply.json()["account"]
    assert (after["name"], after["state"], after["cooling_down_until"]) == ("A", "available", None)
    answered = await chat(p.base)
    assert answered.json()["choices"][0]["message"]["content"] == "from A"
    assert len(p.a.requests) == 2


async def test_reset_clears_quota_exhaustion_and_an_open_circuit(pair: MakePair) -> None:
    p = await pair()
    quota = json.dumps({"error": {"code": "insufficient_quota", "message": "quota exceeded"}})
    p.a.scripts.clear()
    p.a.script(quota.encode(), status=429, content_type="application/json")
    p.b.scripts.clear()
    for _ in range(3):  # routing.breaker_threshold
        p.b.script(b"{}", status=500, content_type="application/json")
    answer(p.b, "ok")
    await chat(p.base)  # A: out of quota; B: a 500
    for _ in range(2):
        await chat(p.base)  # B: two more 500s open its circuit
    rows = await account_rows(p.root)
    assert rows["A"]["state"] == "quota_exhausted" and rows["A"]["quota_exhausted_until"]
    assert rows["B"]["circuit_open_until"] is not None
    for name in ("A", "B"):
        assert (await admin("POST", p.root, f"/admin/accounts/{name}/reset")).status == 200
    rows = await account_rows(p.root)
    assert [rows[n]["state"] for n in ("A", "B")] == ["available", "available"]
    assert rows["A"]["quota_exhausted_until"] is None and rows["B"]["circuits_open"] == {}


async def test_disable_with_a_reason_then_enable_and_the_requests_follow(
    pair: MakePair,
) -> None:
    p = await pair()
    reply = await admin("POST", p.root, "/admin/accounts/A/disable", {"reason": "key rotated"})
    assert reply.status == 200, reply.body
    row = reply.json()["account"]
    assert (row["state"], row["disabled"]) == ("disabled", "by an operator: key rotated")
    assert (row["errors"], row["last_error"]) == (0, None)
    await chat(p.base)
    assert (len(p.a.requests), len(p.b.requests)) == (0, 1)

    reply = await admin("POST", p.root, "/admin/accounts/A/enable")
    assert reply.status == 200 and reply.json()["account"]["state"] == "available"
    await chat(p.base)
    assert (len(p.a.requests), len(p.b.requests)) == (1, 1)


async def test_an_operators_disable_survives_a_config_reload(
    tmp_path: Path, make_upstream: MakeUpstream
) -> None:
    up = await make_upstream()
    answer(up, "ok")
    path = tmp_path / "seamline.toml"
    path.write_text(config(("A", up.url), ("B", up.url)))
    runner = await start(cfg.load(str(path)), "127.0.0.1", 0)
    try:
        root = f"http://127.0.0.1:{runner.addresses[0][1]}"
        await admin("POST", root, "/admin/accounts/A/disable", {"reason": "provider down"})
        assert reload(runner.app.runtime, str(path))
        assert (await account_rows(root))["A"]["disabled"] == "by an operator: provider down"
    finally:
        await runner.cleanup()


async def test_each_action_is_logged_once_with_the_admin_keys_fingerprint(
    pair: MakePair,
) -> None:
    p = await pair()
    with capture_logs() as logs:
        for action in ("disable", "enable", "reset"):
            assert (await admin("POST", p.root, f"/admin/accounts/B/{action}")).status == 200
    actions = [e for e in logs if e["event"] == "admin_action"]
    assert [(e["action"], e["account"]) for e in actions] == [
        ("disable", "B"),
        ("enable", "B"),
        ("reset", "B"),
    ]
    assert {e["by"] for e in actions} == {fingerprint(ADMIN_KEY)}
    assert actions[0]["reason"] == "no reason given" and actions[1]["was"] == "disabled"
    assert ADMIN_KEY not in repr(logs)


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        pytest.param("POST", "/admin/accounts/nobody/reset", 404, "not_found", id="unknown-name"),
        pytest.param("POST", "/admin/accounts/A/delete", 404, "not_found", id="unknown-action"),
        pytest.param("GET", "/admin/accounts/A/reset", 405, "method_not_allowed", id="get"),
        pytest.param("DELETE", "/admin/accounts/A/disable", 405, "method_not_allowed", id="del"),
        pytest.param("POST", "/admin/streams", 405, "method_not_allowed", id="post-streams"),
        pytest.param("POST", "/admin/usage", 405, "method_not_allowed", id="post-usage"),
        pytest.param("POST", "/admin", 405, "method_not_allowed", id="post-page"),
    ],
)
async def test_wrong_names_and_methods_are_openai_errors(
    pair: MakePair, method: str, path: str, status: int, code: str
) -> None:
    p = await pair()
    reply = await fetch(method, p.root + path, headers=admin_headers())
    assert reply.status == status
    error = reply.json()["error"]
    assert (error["code"], error["type"]) == (code, "invalid_request_error")
    assert error["message"]


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/admin/accounts/A/reset", "POST"),
        ("/admin/accounts/A/disable", "POST"),
        ("/admin/accounts/A/enable", "POST"),
        ("/admin/streams", "GET"),
        ("/admin/usage", "GET"),
    ],
)
async def test_the_admin_api_needs_the_admin_key(pair: MakePair, path: str, method: str) -> None:
    p = await pair()
    for headers in ({}, admin_headers("wrong-key"), {"Authorization": f"Bearer {key_of('A')}"}):
        reply = await fetch(method, p.root + path, headers=headers)
        assert reply.status == 401, headers
        assert reply.json()["error"]["code"] == "invalid_api_key"
    assert (await account_rows(p.root))["A"]["state"] == "available"


async def test_without_an_admin_key_the_page_and_the_api_are_off(
    seamline: StartSeamline, upstream: Upstream
) -> None:
    text = config(("A", upstream.url))
    assert f'admin_key = "{ADMIN_KEY}"' in text
    base = await seamline(text.replace(f'admin_key = "{ADMIN_KEY}"', ""))
    root = base.removesuffix("/v1")
    for method, path in (("GET", "/admin"), ("POST", "/admin/accounts/A/reset")):
        reply = await fetch(method, root + path, headers=admin_headers())
        assert reply.status == 404
        assert "server.admin_key" in reply.json()["error"]["message"]


async def test_a_disable_reason_is_one_bounded_line_with_no_secret(pair: MakePair) -> None:
    p = await pair()
    reason = f"rotated\n{key_of('A')} and sk-leakedvalue123456 " + "x" * 500
    reply = await admin("POST", p.root, "/admin/accounts/A/disable", {"reason": reason})
    shown = reply.json()["account"]["disabled"]
    assert shown.startswith("by an operator: rotated [REDACTED] and [REDACTED] x")
    assert "\n" not in shown and len(shown) < 250
    assert key_of("A") not in reply.body.decode() and "leakedvalue" not in shown
    for body in (b"{not json", b'{"reason": 5}', b"[1]"):
        bad = await fetch("POST", p.root + "/admin/accounts/B/disable", body, admin_headers())
        if body == b"[1]":  # no reason in it: the default one
            assert bad.status == 200
            assert bad.json()["account"]["disabled"].endswith("no reason given")
        else:
            assert bad.status == 400 and bad.json()["error"]["code"] == "invalid_json"


async def test_an_account_name_with_a_slash_and_a_space_is_found(
    seamline: StartSeamline, upstream: Upstream
) -> None:
    answer(upstream, "ok")
    base = await seamline(config(("team a/qwen 1", upstream.url)))
    root = base.removesuffix("/v1")
    reply = await admin("POST", root, "/admin/accounts/team%20a%2Fqwen%201/disable")
    assert reply.status == 200, reply.body
    assert reply.json()["account"]["name"] == "team a/qwen 1"
    assert (await account_rows(root))["team a/qwen 1"]["state"] == "disabled"


# -- what is in flight ----------------------------------------------------------------------


async def test_streams_in_flight_show_ids_and_counts_never_a_body_or_a_secret(
    seamline: StartSeamline, upstream: Upstream
) -> None:
    pieces = [b"data: " + chunk(f"secret-text-{i}") + b"\n\n" for i in range(3)]
    upstream.script(*pieces, pause=0.01, ending="hang")
    base = await seamline(config(("A", upstream.url)))
    root = base.removesuffix("/v1")
    body = json.dumps({"model": "m-live", "messages": [{"role": "user", "content": "hi"}]})
    headers = {
        "Authorization": f"Bearer {CLIENT_KEYS[1]}",
        "X-Request-ID": "req-watch-1",
        "Content-Type": "application/json",
    }
    async with aiohttp.ClientSession() as s:
        stream_body = body[:-1] + ', "stream": true}'
        async with s.post(base + "/chat/completions", data=stream_body, headers=headers) as r:
            assert r.status == 200
            seen = b""
            while seen.count(b"secret-text") < 3:
                seen += await r.content.readany()
            reply = await admin("GET", root, "/admin/streams")
            assert reply.status == 200
            rows = reply.json()["streams"]
            assert len(rows) == 1
            row = rows[0]
            assert {k: row[k] for k in ("request_id", "route", "model", "account", "stream")} == {
                "request_id": "req-watch-1",
                "route": "/v1/chat/completions",
                "model": "m-live",
                "account": "A",
                "stream": True,
            }
            assert row["client"] == fingerprint(CLIENT_KEYS[1])
            assert row["events"] == 3 and row["bytes"] == len(seen)
            assert row["age_s"] > 0 and row["started"].endswith("+00:00")
            text = reply.body.decode()
            for secret in ("secret-text", CLIENT_KEYS[1], key_of("A"), ADMIN_KEY):
                assert secret not in text
    for _ in range(100):  # the client left: the relay lets go of the upstream
        if not (await admin("GET", root, "/admin/streams")).json()["streams"]:
            break
        await asyncio.sleep(0.02)
    assert (await admin("GET", root, "/admin/streams")).json()["streams"] == []


# -- usage ------------------------------------------------------------------------------------


async def test_usage_counts_requests_and_tokens_per_account_and_per_client_key(
    pair: MakePair,
) -> None:
    p = await pair(api_keys=CLIENT_KEYS)
    one, two = CLIENT_KEYS
    for _ in range(2):
        assert (await chat(p.base, one)).status == 200  # to A (fill_first)
    await admin("POST", p.root, "/admin/accounts/A/disable")
    assert (await chat(p.base, two)).status == 200  # to B
    assert (await chat(p.base, "not-a-client-key")).status == 401
    reply = await admin("GET", p.root, "/admin/usage")
    assert reply.status == 200
    usage = reply.json()
    by_account = {row["name"]: row for row in usage["accounts"]}
    by_client = {row["client"]: row for row in usage["clients"]}
    tally = {"requests": 1, "errors": 0, "prompt_tokens": 3, "completion_tokens": 2}
    assert by_account["B"]["today"] == by_account["B"]["since_start"] == tally
    assert by_account["A"]["since_start"] == {**tally, "requests": 2, "prompt_tokens": 6,
                                             "completion_tokens": 4}  # fmt: skip
    assert list(by_client) == [fingerprint(one), fingerprint(two)]  # busiest first
    assert by_client[fingerprint(one)]["since_start"]["requests"] == 2
    assert by_client[fingerprint(two)]["today"] == tally
    today = usage["today_since"]
    assert today.endswith("T00:00:00+00:00") and today[:10] == time.strftime(
        "%Y-%m-%d", time.gmtime()
    )
    text = reply.body.decode()
    assert one not in text and two not in text and "not-a-client-key" not in text


# -- the page, as bytes (the browser tests are in test_admin_page.py) --------------------------


async def test_the_page_is_one_document_that_fetches_nothing_from_outside(
    pair: MakePair,
) -> None:
    p = await pair()
    reply = await fetch("GET", p.root + "/admin")  # no key: the page asks for it
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    csp = reply.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert csp.count("'sha256-") == 2 and "unsafe-inline" not in csp
    html = reply.body.decode()
    assert "@STYLE@" not in html and "@SCRIPT@" not in html
    assert "<script src" not in html and '<link rel="stylesheet"' not in html
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["X-Frame-Options"] == "DENY"
