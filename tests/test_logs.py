"""Logs: one summary line per request, DEBUG_STREAMING traces, and no secret anywhere."""

from __future__ import annotations

import io
import json

import aiohttp
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy import logs
from support.builders import chunk, config_text, event, key_of, sse_stream
from support.clients import client, text_of
from support.logs import log_lines
from support.seamline import StartSeamline
from support.upstream import Upstream

ACCOUNT_KEY = key_of("acc1")
CLIENT_KEY = "client-key-very-secret"


async def _start(upstream: Upstream, seamline: StartSeamline) -> str:
    return await seamline(
        config_text(("acc1", upstream.url), server=f'api_keys = ["{CLIENT_KEY}"]')
    )


async def test_summary_line_per_request(
    upstream: Upstream, seamline: StartSeamline, log_output: io.StringIO
) -> None:
    base = await _start(upstream, seamline)
    upstream.script(*sse_stream("a", "b"))
    async with client(base, CLIENT_KEY) as c:
        stream = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        )
        assert text_of([ch async for ch in stream]) == "ab"
    summaries = [ln for ln in log_lines(log_output) if ln["event"] == "request"]
    assert len(summaries) == 1
    s = summaries[0]
    assert s["route"] == "/v1/chat/completions"
    assert s["model"] == "m"
    assert s["account"] == "acc1"
    assert s["status"] == 200
    assert s["streamed"] is True
    assert s["events"] == 3
    assert s["bytes"] > 0
    assert s["ttfb_ms"] is not None and s["duration_ms"] >= s["ttfb_ms"]
    assert len(s["request_id"]) >= 16
    assert not any(ln["event"] == "upstream_read" for ln in log_lines(log_output))


async def test_debug_streaming_traces_reads_and_writes_without_secrets(
    upstream: Upstream,
    seamline: StartSeamline,
    log_output: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEBUG_STREAMING", "true")
    logs.configure(json_lines=True, stream=log_output)
    base = await _start(upstream, seamline)
    # The upstream echoes the key it was sent, as some do in error messages.
    upstream.script(
        event(chunk(f"key {ACCOUNT_KEY} Bearer {CLIENT_KEY}")),
        *sse_stream("done"),
    )
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            base + "/chat/completions",
            json={"model": "m", "messages": [], "stream": True},
            headers={"Authorization": f"Bearer {CLIENT_KEY}", "X-Request-ID": "trace-me-1"},
        ) as r,
    ):
        assert r.status == 200
        assert r.headers["X-Request-ID"] == "trace-me-1"
        await r.read()
    text = log_output.getvalue()
    assert ACCOUNT_KEY not in text
    assert CLIENT_KEY not in text
    lines = log_lines(log_output)
    reads = [ln for ln in lines if ln["event"] == "upstream_read"]
    writes = [ln for ln in lines if ln["event"] == "client_write"]
    assert reads and writes
    assert all(ln["request_id"] == "trace-me-1" for ln in reads + writes)
    # One client write per upstream read at most: nothing is split or held back.
    assert len(writes) <= len(reads)
    assert (
        sum(ln["size"] for ln in writes)
        == next(ln for ln in lines if ln["event"] == "request")["bytes"]
    )


async def test_debug_streaming_answers_what_the_model_said_and_what_seamline_changed(
    upstream: Upstream,
    seamline: StartSeamline,
    log_output: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEBUG_STREAMING", "true")
    logs.configure(json_lines=True, stream=log_output)
    base = await _start(upstream, seamline)
    # Realistic chunk ids and fingerprints: a 160-byte preview would show no token.
    long_id = {"id": "chatcmpl-" + "x" * 120, "system_fingerprint": "fp_" + "y" * 60}
    words = ["The ", "answer ", "is ", "42."]
    pieces = [b"data: " + chunk(w, **long_id) + b"\r\n\r\n" for w in words]  # CRLF: sent as LF
    pieces.append(event(chunk(finish="stop", **long_id)))  # no [DONE]: appended
    upstream.script(*pieces, headers={"x-upstream-thing": "1"})
    async with client(base, CLIENT_KEY) as c:
        stream = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "what is it?"}], stream=True
        )
        assert text_of([ch async for ch in stream]) == "The answer is 42."
    lines = log_lines(log_output)
    sent = next(ln for ln in lines if ln["event"] == "upstream_request")
    assert sent["method"] == "POST"
    assert sent["url"].endswith("/v1/chat/completions")
    assert sent["headers"]["Authorization"] == logs.REDACTED
    assert "what is it?" in sent["body"]
    got = next(ln for ln in lines if ln["event"] == "upstream_response")
    assert got["status"] == 200
    assert got["headers"]["x-upstream-thing"] == "1"
    reads = "".join(ln["data"] for ln in lines if ln["event"] == "upstream_read")
    for word in words:
        assert f'"content":"{word}"' in reads  # each read whole, not a preview
    writes = "".join(ln["data"] for ln in lines if ln["event"] == "client_write")
    assert "\r" not in writes and "data: [DONE]" in writes
    repairs = {ln["kind"] for ln in lines if ln["event"] == "repair"}
    assert "done_appended" in repairs
    assert ACCOUNT_KEY not in log_output.getvalue()


async def test_a_trace_cuts_reads_at_the_configured_size(
    upstream: Upstream,
    seamline: StartSeamline,
    log_output: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEBUG_STREAMING", "1")
    monkeypatch.setenv("DEBUG_STREAMING_BYTES", "64")
    logs.configure(json_lines=True, stream=log_output)
    base = await _start(upstream, seamline)
    upstream.script(*sse_stream("z" * 500))
    async with client(base, CLIENT_KEY) as c:
        stream = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        )
        assert text_of([ch async for ch in stream]) == "z" * 500
    first = next(ln for ln in log_lines(log_output) if ln["event"] == "upstream_read")
    assert first["size"] > 500
    assert first["data"].endswith(f"... ({first['size'] - 64} more bytes)")


async def test_upstream_error_echoing_the_key_does_not_reach_client(
    upstream: Upstream, seamline: StartSeamline, log_output: io.StringIO
) -> None:
    base = await _start(upstream, seamline)
    body = json.dumps({"error": {"message": f"Incorrect API key provided: {ACCOUNT_KEY}"}})
    upstream.script(body.encode(), status=400, content_type="application/json")
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            base + "/chat/completions",
            json={"model": "m", "messages": []},
            headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        ) as r,
    ):
        assert r.status == 400
        got = await r.text()
    assert ACCOUNT_KEY not in got
    assert "Incorrect API key provided" in got
    assert ACCOUNT_KEY not in log_output.getvalue()


def test_redactor_removes_token_shapes() -> None:
    r = logs.Redactor()
    r.set_secrets(["s3cr3t-value"])
    text = r.scrub(
        'x s3cr3t-value Bearer abc.def sk-abcdefghij {"refresh_token": "rt-1", "access_token":"a"}'
    )
    for leaked in ("s3cr3t-value", "abc.def", "sk-abcdefghij", "rt-1", '"a"'):
        assert leaked not in text
    assert text.count(logs.REDACTED) == 5


_SECRETISH = st.sampled_from(
    [
        "Bearer ",
        "bearer\t",
        "sk-",
        "SK-",
        "\u017fk-",
        "\u212a",
        "access_token",
        "ACCESS_TOKEN",
        '"refresh_token": "',
        "api_key=",
        "Api_Key=",
        "token",
        "x",
        "=",
        '"',
        ":",
        " ",
        "-",
    ]
)


@settings(max_examples=500, deadline=None)
@example("\u017fk-abcdefgh")  # a long s: re.I matches it as "s"
@example("Bearer \u212aey")
@given(st.lists(_SECRETISH | st.text(max_size=8), max_size=12).map("".join))
def test_scrub_redacts_exactly_what_the_patterns_match(text: str) -> None:
    # The substring test in front of the regex only skips text the regex cannot match.
    r = logs.Redactor()
    assert r.scrub(text) == logs._PATTERNS.sub(logs._mask, text)
