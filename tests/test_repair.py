"""The OpenAI shaper: what a client receives for each upstream event.

Every rendered stream is also read back with openai-python's own SSE decoder (and,
where an error must surface, its Stream class), so "the SDK parses it" is checked by
the SDK rather than by our reading of it.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._streaming import ServerSentEvent, SSEDecoder, Stream

from proxy.core.openai import DONE_EVENT, bare_error, error_event, error_status, normalize_error
from proxy.core.shaper import PING_EVENTS, OpenAIShaper, data_block
from proxy.core.sse import BOM, Comment, Event, Item, Reframer, Stray
from support.builders import chunk, event, usage


def render(
    *chunks: bytes, keep_event_names: bool = False, check_endings: bool = True
) -> tuple[OpenAIShaper, bytes]:
    """Upstream reads through a reframer and a shaper; the shaper and the bytes out."""
    shaper = OpenAIShaper(keep_event_names=keep_event_names, check_endings=check_endings)
    r = Reframer()
    out = b"".join(shaper.render(r.feed(chunk)) for chunk in chunks)
    return shaper, out + shaper.render(r.close())


def stream(*chunks: bytes, **kw: bool) -> bytes:
    """Everything the client receives, including what finish() appends."""
    shaper, out = render(*chunks, **kw)
    return out + shaper.finish()


def sdk_events(body: bytes) -> list[ServerSentEvent]:
    """The events openai-python's decoder sees in ``body``."""
    return list(SSEDecoder().iter_bytes(iter([body])))


def sdk_read(body: bytes) -> list[Any]:
    """What openai-python's Stream yields for ``body``; raises its APIError."""
    request = httpx2.Request("POST", "http://upstream.invalid/v1/chat/completions")
    response = httpx2.Response(200, content=body, request=request)
    with openai.OpenAI(api_key="sk-test", base_url="http://upstream.invalid/v1") as client:
        return list(Stream(cast_to=object, response=response, client=client))


def assert_sdk_parses(body: bytes) -> list[ServerSentEvent]:
    """Every event is JSON, or [DONE] and last; nothing carries an id or a retry."""
    events = sdk_events(body)
    for i, sse in enumerate(events):
        assert sse.id is None
        assert sse.retry is None
        if sse.data.startswith("[DONE]"):
            assert sse.data == "[DONE]"
            assert i == len(events) - 1, "[DONE] must be the last event"
        else:
            sse.json()
    return events


# Spaced as json.dumps spaces it, and without created or model: the ending is found in
# any spelling of the usage chunk, not only the compact one.
USAGE = json.dumps(
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": usage(1, 2)}
).encode()


# --- data events ----------------------------------------------------------------------


def test_data_event_renders_as_one_data_line() -> None:
    _, out = render(b"data:" + chunk("hi") + b"\r\n\r\n")
    assert out == event(chunk("hi"))


def test_multi_line_data_renders_one_data_line_per_line() -> None:
    _, out = render(b'data: {"a":\r\ndata:  1,\rdata:\ndata: "b": 2}\n\n')
    assert out == b'data: {"a":\ndata:  1,\ndata: \ndata: "b": 2}\n\n'
    [sse] = assert_sdk_parses(out)
    assert sse.json() == {"a": 1, "b": 2}


def test_data_with_two_spaces_reaches_the_sdk_with_one() -> None:
    _, out = render(b'data:  {"a": 1}\n\n')
    assert out == b'data:  {"a": 1}\n\n'
    assert [e.data for e in assert_sdk_parses(out)] == [' {"a": 1}']


def test_data_block_helper() -> None:
    assert data_block(b"x") == b"data: x\n\n"
    assert data_block(b"a\n\nb") == b"data: a\ndata: \ndata: b\n\n"


def test_event_names_are_dropped_by_default() -> None:
    _, out = render(b"event: completion\ndata: " + chunk("a") + b"\n\n")
    assert out == event(chunk("a"))


def test_keep_event_names_keeps_named_events() -> None:
    payload = b'{"type":"response.output_text.delta","delta":"a"}'
    _, out = render(
        b"event: response.output_text.delta\ndata: " + payload + b"\n\n",
        b"event: message\ndata: " + payload + b"\n\n",
        keep_event_names=True,
    )
    assert out == b"event: response.output_text.delta\n" + event(payload) + event(payload)
    events = assert_sdk_parses(out)
    assert [e.event for e in events] == ["response.output_text.delta", None]


def test_render_of_several_items_joins_their_blocks() -> None:
    shaper = OpenAIShaper()
    items: list[Item] = [Comment(b" a"), Event(b"1"), Event(None, b"x"), Event(b"2")]
    assert shaper.render(items) == b": a\n\ndata: 1\n\ndata: 2\n\n"
    assert shaper.render([]) == b""
    assert shaper.events == 2


# --- blocks that are dropped ----------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"event: delta\n\n",
        b"event: message\n\n",
        b"id: 7\n\n",
        b"retry: 3000\n\n",
        b"id: 1\nretry: 5\nevent: x\n\n",
        b"data:\n\n",
        b"data: \n\n",
        b"data:    \n\n",
        b"data: \t \n\n",
        b"data:\ndata:\n\n",
        b"data\n\n",
        b"event: delta\ndata:\n\n",
    ],
    ids=repr,
)
def test_block_without_data_or_with_blank_data_is_dropped(raw: bytes) -> None:
    shaper, out = render(raw)
    assert out == b""
    assert shaper.repairs["empty_block_dropped"] == 1
    assert shaper.events == 0


@pytest.mark.parametrize(
    "line", [b"foo: bar", b'{"ok": true}', b"{not json", b"<html>", b'{"error": null}', b"[1]"]
)
def test_stray_line_that_is_not_an_error_is_dropped(line: bytes) -> None:
    shaper, out = render(line + b"\n\n")
    assert out == b""
    assert shaper.repairs["stray_line_dropped"] == 1
    assert not shaper.errored


# --- comments and pings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b": hello\n\n", b": hello\n\n"),
        (b":hello\r\n", b":hello\n\n"),
        (b":\n\n", b":\n\n"),
        (b": OPENROUTER PROCESSING\r\r", b": OPENROUTER PROCESSING\n\n"),
    ],
)
def test_comment_passes_as_a_comment_block(raw: bytes, expected: bytes) -> None:
    _, out = render(raw)
    assert out == expected
    assert sdk_events(out) == []


def test_comment_inside_an_event_comes_out_before_it() -> None:
    _, out = render(b"data: x\n: c\ndata: y\n\n")
    assert out == b": c\n\ndata: x\ndata: y\n\n"


@pytest.mark.parametrize("name", sorted(PING_EVENTS))
@pytest.mark.parametrize("payload", [b'{"type": "ping"}', b"", b"not json"])
def test_ping_event_with_a_payload_becomes_a_ping_comment(name: bytes, payload: bytes) -> None:
    shaper, out = render(b"event: " + name + b"\ndata: " + payload + b"\n\n")
    assert out == b": ping\n\n"
    assert shaper.repairs["ping_event_to_comment"] == 1
    assert shaper.events == 0


@pytest.mark.parametrize("name", sorted(PING_EVENTS))
def test_ping_event_without_payload_sends_no_event(name: bytes) -> None:
    _, out = render(b"event: " + name + b"\n\n")
    assert out in (b"", b": ping\n\n")
    assert sdk_events(out) == []


# --- error events ---------------------------------------------------------------------

OPENAI_ERROR = b'{"error": {"message": "Rate limit reached", "type": "requests", "code": "429"}}'


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"data: " + OPENAI_ERROR, "Rate limit reached", id="openai_error"),
        pytest.param(b'data: {"message": "model overloaded", "code": 529}', "model overloaded"),
        pytest.param(b'data: {"msg": "bad key"}', "bad key", id="msg"),
        pytest.param(b'data: {"detail": "no such model"}', "no such model", id="detail"),
        pytest.param(b'data: {"error": "quota exceeded"}', "quota exceeded", id="string_error"),
        pytest.param(b'data: {"status": 500}', '{"status": 500}', id="object_without_message"),
        pytest.param(b"data: [1, 2]", "[1, 2]", id="json_array"),
        pytest.param(b"data: upstream overloaded ", "upstream overloaded", id="plain_text"),
        pytest.param(b"data: \xffbad", "\ufffdbad", id="invalid_utf8"),
        pytest.param(b"data: two\ndata: lines", "two\nlines", id="two_text_lines"),
        pytest.param(
            b'data: {\ndata:  "error": {"message": "pretty"}\ndata: }', "pretty", id="pretty_json"
        ),
        pytest.param(b"data:", "upstream sent an empty error event", id="empty"),
        pytest.param(b"data:   ", "upstream sent an empty error event", id="blank"),
        pytest.param(b"id: 1", "upstream sent an empty error event", id="no_data"),
    ],
)
def test_error_event_becomes_an_openai_error_with_its_message(data: bytes, message: str) -> None:
    shaper, out = render(b"data: " + chunk("a") + b"\n\nevent: error\n" + data + b"\n\n")
    assert shaper.errored
    assert shaper.repairs["error_event"] == 1
    events = assert_sdk_parses(out)
    assert [e.event for e in events] == [None, None]
    error = events[-1].json()["error"]
    assert error["message"] == message
    assert isinstance(error.get("type", ""), str)
    with pytest.raises(openai.APIError) as info:
        sdk_read(out)
    assert info.value.message == message


def test_openai_error_passes_byte_for_byte() -> None:
    _, out = render(b"event: error\ndata: " + OPENAI_ERROR + b"\n\n")
    assert out == event(OPENAI_ERROR)


def test_error_code_of_a_plain_object_is_kept() -> None:
    _, out = render(b'event: error\ndata: {"message": "x", "code": 529}\n\n')
    assert sdk_events(out)[0].json() == {
        "error": {"message": "x", "type": "upstream_error", "param": None, "code": 529}
    }


def test_after_an_error_event_finish_adds_nothing() -> None:
    shaper, _ = render(b"event: error\ndata: boom\n\n")
    assert shaper.finish() == b""


@pytest.mark.parametrize(
    "line",
    [
        b'{"error": {"message": "quota", "type": "insufficient_quota"}}',
        b'{"error": "quota"}',
        b'{"error": {"message": "quota"}, "status": 429}',
    ],
)
def test_bare_json_error_line_becomes_a_data_event(line: bytes) -> None:
    shaper, out = render(line + b"\n")
    assert shaper.errored
    assert shaper.repairs["bare_error_line"] == 1
    assert out.startswith(b"data: {") and out.endswith(b"}\n\n")
    assert_sdk_parses(out)
    with pytest.raises(openai.APIError) as info:
        sdk_read(out)
    assert info.value.message == "quota"
    assert shaper.finish() == b""


def test_bare_error_recognises_only_json_objects_with_an_error() -> None:
    assert bare_error(b'{"error": {"message": "x"}}') == b'{"error": {"message": "x"}}'
    assert bare_error(b'{"error": ""}') is None
    assert bare_error(b'{"ok": 1}') is None
    assert bare_error(b'["error"]') is None
    assert bare_error(b"{") is None


def test_normalize_error_leaves_an_openai_error_untouched() -> None:
    assert normalize_error(OPENAI_ERROR) == OPENAI_ERROR


def test_error_event_helper_is_an_sdk_error() -> None:
    body = error_event("upstream timed out", code="timeout")
    assert sdk_events(body)[0].json() == {
        "error": {
            "message": "upstream timed out",
            "type": "upstream_error",
            "param": None,
            "code": "timeout",
        }
    }
    with pytest.raises(openai.APIError, match="upstream timed out"):
        sdk_read(body)


# --- id and retry ---------------------------------------------------------------------


def test_id_and_retry_lines_never_reach_the_client() -> None:
    _, out = render(
        b"retry: 3000\n\nid: 1\n\n",
        b"id: 2\nretry: 10\ndata: " + chunk("a") + b"\n\n",
        b": comment after an id\n\n",
        b"id: 3\ndata: " + chunk(finish="stop") + b"\n\n",
    )
    assert out == event(chunk("a")) + b": comment after an id\n\n" + event(chunk(finish="stop"))
    assert not any(line.startswith((b"id", b"retry")) for line in out.split(b"\n"))
    # A remembered id would turn the comment block into an empty, unparseable event.
    assert len(assert_sdk_parses(out)) == 2


# --- [DONE] ---------------------------------------------------------------------------


def test_done_is_last_and_everything_after_it_is_dropped() -> None:
    shaper, out = render(
        event(chunk("a")),
        b"data: [DONE]\n\n",
        event(chunk("b")) + b": late comment\n\nevent: error\ndata: x\n\n",
        b'{"error": {"message": "late"}}\n',
    )
    assert out == event(chunk("a")) + DONE_EVENT
    assert shaper.done
    assert shaper.repairs["after_done_dropped"] == 3
    assert not shaper.errored
    assert shaper.finish() == b""
    assert [e.data for e in assert_sdk_parses(out)][-1] == "[DONE]"


def test_second_done_is_dropped() -> None:
    _, out = render(b"data: [DONE]\n\ndata: [DONE]\n\n")
    assert out == DONE_EVENT


@pytest.mark.parametrize(
    "raw", [b"data: [DONE]\n\n", b"data:[DONE]\r\r", b"data:  [DONE]\n\n", b"data: [DONE] \n\n"]
)
def test_done_is_sent_as_the_plain_marker(raw: bytes) -> None:
    _, out = render(raw)
    assert out == DONE_EVENT
    assert sdk_read(out) == []


# --- finish() -------------------------------------------------------------------------


def _truncation(body: bytes) -> dict[str, Any]:
    [sse] = sdk_events(body)
    error: dict[str, Any] = sse.json()["error"]
    return error


def test_finish_after_a_finish_reason_appends_done() -> None:
    shaper, out = render(event(chunk("a")), event(chunk(finish="stop")))
    assert out == event(chunk("a")) + event(chunk(finish="stop"))
    assert shaper.finish() == DONE_EVENT
    assert shaper.repairs["done_appended"] == 1


@pytest.mark.parametrize("reason", ["stop", "length", "tool_calls", "content_filter"])
def test_any_non_null_finish_reason_ends_the_answer(reason: str) -> None:
    shaper, _ = render(event(chunk(finish=reason)))
    assert shaper.finish() == DONE_EVENT


def test_finish_reason_with_spaces_around_the_colon_ends_the_answer() -> None:
    shaper, _ = render(event(b'{"choices": [{"delta": {}, "finish_reason" : "stop"}]}'))
    assert shaper.finish() == DONE_EVENT


def test_finish_after_a_usage_chunk_with_empty_choices_appends_done() -> None:
    shaper, _ = render(event(chunk("a")), event(USAGE))
    assert shaper.finish() == DONE_EVENT


def test_finish_after_the_usage_chunk_that_follows_a_finish_reason_appends_done() -> None:
    shaper, _ = render(event(chunk("a")), event(chunk(finish="stop")), event(USAGE))
    assert shaper.finish() == DONE_EVENT


@pytest.mark.parametrize(
    "chunks",
    [
        [],
        [event(chunk("a"))],
        [event(chunk("a")), event(chunk("b"))],
        [b": keep-alive\n\n", b"event: ping\ndata: {}\n\n"],
        # Azure's first chunk has empty choices but no usage: it ends nothing.
        [event(b'{"id":"","choices":[],"prompt_filter_results":[{"prompt_index":0}]}')],
        # A finish_reason inside the content is text, not a field.
        [event(chunk('he said "finish_reason": "stop"'))],
        [event(chunk('"choices": []'))],
    ],
    ids=["empty", "one_chunk", "two_chunks", "keepalives", "azure_filter", "quoted", "quoted2"],
)
def test_finish_without_a_finish_reason_reports_truncation(chunks: list[bytes]) -> None:
    shaper, out = render(*chunks)
    end = shaper.finish()
    error = _truncation(end)
    assert error["type"] == "upstream_error"
    assert "truncated" in error["message"]
    assert shaper.errored
    assert shaper.repairs["truncated"] == 1
    assert_sdk_parses(out + end)
    with pytest.raises(openai.APIError, match="truncated"):
        sdk_read(out + end)


def test_finish_after_done_returns_nothing() -> None:
    shaper, _ = render(event(chunk("a")), b"data: [DONE]\n\n")
    assert shaper.finish() == b""


def test_finish_adds_its_ending_only_once() -> None:
    shaper, _ = render(event(chunk(finish="stop")))
    assert shaper.finish() == DONE_EVENT
    assert shaper.finish() == b""
    shaper, _ = render(event(chunk("a")))
    assert shaper.finish() != b""
    assert shaper.finish() == b""


def test_finish_without_check_endings_adds_nothing() -> None:
    shaper, _ = render(event(b'{"type":"response.created"}'), check_endings=False)
    assert shaper.finish() == b""


# --- the SDK reads repaired streams ---------------------------------------------------


def test_sdk_reads_a_quirky_stream_as_the_upstream_meant_it() -> None:
    words = ["Hel", "lo, ", "wörld ", "😀"]
    raw = (
        BOM
        + b": hello\r\rretry: 3000\r\revent: ping\r\r"
        + b"".join(b"id: 1\rdata:" + chunk(w) + b"\r\rdata:\r\r" for w in words)
        + b"data: "
        + chunk(finish="stop")
    )  # no blank line, no [DONE]
    body = stream(raw)
    assert body.startswith(b": hello\n\n")
    assert body.endswith(DONE_EVENT)
    for cut in range(len(raw) + 1):
        assert stream(raw[:cut], raw[cut:]) == body, cut
    chunks = sdk_read(body)
    assert [c["choices"][0]["delta"].get("content", "") for c in chunks] == [*words, ""]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# --- properties -----------------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=16)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


@st.composite
def json_payload(draw: st.DrawFn) -> list[bytes]:
    """A JSON value as the data lines an upstream might send it in."""
    obj = draw(
        st.one_of(
            JSON,
            st.builds(
                lambda c, f: {"choices": [{"delta": c, "finish_reason": f}]},
                JSON,
                st.sampled_from([None, "stop"]),
            ),
        )
    )
    text = json.dumps(
        obj, indent=draw(st.sampled_from([None, 1])), ensure_ascii=draw(st.booleans())
    )
    return [line.encode() for line in text.split("\n")]


def _field(name: bytes, value: bytes) -> bytes:
    return name + b": " + value


BLOCK_KINDS = ["data"] * 3 + ["done", "ping", "error", "named", "comment", "meta"]
BLOCK_KINDS += ["blank_data", "stray", "bare_error"]


@st.composite
def block(draw: st.DrawFn) -> list[bytes]:
    """The lines of one upstream block, of the kinds upstreams really send."""
    kind = draw(st.sampled_from(BLOCK_KINDS))
    text = draw(TEXT).encode()
    if kind == "data":
        lines = [
            b"data:" + draw(st.sampled_from([b"", b" ", b"  "])) + ln for ln in draw(json_payload())
        ]
    elif kind == "done":
        lines = [b"data:" + draw(st.sampled_from([b"", b" ", b"  "])) + b"[DONE]"]
    elif kind == "ping":
        lines = [b"event: " + draw(st.sampled_from(sorted(PING_EVENTS))), b"data: " + text]
    elif kind == "error":
        payload = draw(st.one_of(st.just(text), JSON.map(lambda o: json.dumps(o).encode())))
        lines = [b"event: error", b"data: " + payload]
    elif kind == "named":
        lines = [b"event: " + text, *(b"data: " + ln for ln in draw(json_payload()))]
    elif kind == "comment":
        lines = [b":" + text]
    elif kind == "meta":
        lines = [_field(b"id", text), _field(b"retry", text), _field(b"event", text)]
    elif kind == "blank_data":
        lines = [b"data:" + draw(st.sampled_from([b"", b" ", b"   "]))]
    elif kind == "stray":
        lines = [b"x-" + text]
    else:
        err = draw(
            st.one_of(st.text(max_size=8), st.fixed_dictionaries({"message": st.text(max_size=8)}))
        )
        lines = [json.dumps({"error": err}).encode()]
    extras = draw(st.lists(st.sampled_from([b"id: 9", b"retry: 100", b": note"]), max_size=2))
    return [*extras, *lines]


@st.composite
def upstream(draw: st.DrawFn) -> bytes:
    """A whole upstream body: blocks with random line ends, maybe a BOM, maybe cut short."""
    blocks = draw(st.lists(block(), max_size=8))
    rows = [row for b in blocks for row in (*b, b"")]
    cut_short = draw(st.booleans())
    if rows and cut_short:
        rows.pop()  # no final blank line
    out = BOM if draw(st.booleans()) else b""
    prev = b""
    for row in rows:
        end = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
        if prev == b"\r" and not row and end == b"\n":
            end = b"\r\n"
        out += row + end
        prev = end
    return out


def _cuts(data: st.DataObject, raw: bytes) -> list[bytes]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    bounds = [0, *cuts, len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(bounds)]


def _render_checked(
    chunks: list[bytes], keep_event_names: bool = False, check_endings: bool = True
) -> tuple[OpenAIShaper, bytes]:
    """Like render(), also checking that every write is whole blocks."""
    shaper = OpenAIShaper(keep_event_names=keep_event_names, check_endings=check_endings)
    r = Reframer()
    out = b""
    for items in [*(r.feed(c) for c in chunks), r.close()]:
        piece = shaper.render(items)
        assert piece == b"" or piece.endswith(b"\n\n")
        out += piece
    end = shaper.finish()
    assert end == b"" or end.endswith(b"\n\n")
    return shaper, out + end


@settings(max_examples=300, deadline=None)
@given(st.data(), upstream(), st.booleans(), st.booleans())
def test_any_upstream_of_json_events_renders_output_the_sdk_parses(
    data: st.DataObject, raw: bytes, keep_event_names: bool, check_endings: bool
) -> None:
    kw = {"keep_event_names": keep_event_names, "check_endings": check_endings}
    shaper, body = _render_checked(_cuts(data, raw), **kw)
    assert _render_checked([raw], **kw)[1] == body
    events = assert_sdk_parses(body)
    if check_endings:
        # Either an error surfaced or the stream ends with [DONE]: never silently cut.
        ended = bool(events) and events[-1].data == "[DONE]"
        assert ended or shaper.errored
        assert ended or any("error" in e.json() for e in events if isinstance(e.json(), dict))


TOKENS = [b"data:", b"event:", b"error", b"ping", b"id:", b"retry:", b": ", b"[DONE]", b"{"]
TOKENS += [b'{"error": "x"}', b'"finish_reason":"stop"', b"\r", b"\n", b"\n\n", b"x", b" "]
TOKENS += [BOM, b"\xff", b"\xe2\x82"]
noise = st.one_of(
    st.binary(max_size=64), st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)
)


@settings(max_examples=300, deadline=None)
@given(st.data(), noise, st.booleans())
def test_arbitrary_upstream_bytes_never_make_the_shaper_invent_unparseable_events(
    data: st.DataObject, raw: bytes, keep_event_names: bool
) -> None:
    r = Reframer()
    items = r.feed(raw) + r.close()
    upstream_data = {
        item.data.decode() for item in items if isinstance(item, Event) and item.data is not None
    }
    _, body = _render_checked(_cuts(data, raw), keep_event_names=keep_event_names)
    events = sdk_events(body)  # strict UTF-8: raises on anything else
    for i, sse in enumerate(events):
        assert sse.id is None and sse.retry is None
        if sse.data == "[DONE]":
            assert i == len(events) - 1
            continue
        try:
            sse.json()
        except ValueError:
            # Garbage in, garbage out: only the upstream's own data may fail to parse.
            assert sse.data in upstream_data


def test_stray_items_render_like_their_lines() -> None:
    shaper = OpenAIShaper()
    assert shaper.render([Stray(b"junk")]) == b""
    assert shaper.render([Stray(b'{"error": {"message": "m"}}')]) == event(
        b'{"error": {"message": "m"}}'
    )


_FAST_PIECES = st.sampled_from(
    [
        b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"\xc3\xa9"},"finish_reason":null}]}\n\n',
        b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n',
        b'data: {"choices":[{"delta":{},"finish_reason" : "length"}]}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n',
        b'data: {"usage":null,"choices":[{"delta":{"content":"x"}}]}\n\n',
        b'data: {"error":{"message":"boom"}}\n\n',
        b"data: [DONE]\n\n",
        b'data: {"a":1}\r\n\r\n',
        b'data: {"a":1}\ndata: {"b":2}\n\n',
        b"data: not json\n\n",
        b"data:\n\n",
        b": comment\n\n",
        b"event: ping\n\n",
        b'data: {"a":"\xff"}\n\n',
        b'data: {"content":"data: {fake}\\n\\n"}\n\n',
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.lists(_FAST_PIECES, min_size=1, max_size=4), min_size=1, max_size=6), st.booleans()
)
def test_fast_path_is_indistinguishable_from_the_full_path(
    reads: list[list[bytes]], strip_usage: bool
) -> None:
    _assert_fast_is_full([b"", *(b"".join(r) for r in reads)], strip_usage)


def _assert_fast_is_full(chunks: list[bytes], strip_usage: bool) -> None:
    """The relay's loop, with and without the fast path, gives the same bytes and state."""
    fast, full = OpenAIShaper(strip_usage=strip_usage), OpenAIShaper(strip_usage=strip_usage)
    rf, rs = Reframer(), Reframer()
    out_fast = out_full = b""
    for c in chunks:
        if rf.idle and fast.passthrough(c):
            out_fast += c
        else:
            out_fast += fast.render(rf.feed(c))
        out_full += full.render(rs.feed(c))
    out_fast += fast.render(rf.close()) + fast.finish()
    out_full += full.render(rs.close()) + full.finish()
    assert out_fast == out_full
    assert (fast.events, fast.finished, fast.done, fast.usage) == (
        full.events,
        full.finished,
        full.done,
        full.usage,
    )


def test_fast_path_sees_a_usage_object_after_a_null_usage_in_one_read() -> None:
    # Two events in one read: the first says "usage":null, the second carries the usage;
    # the read is not plain pass-through, since the usage chunk may need stripping.
    chunk = (
        b'data: {"usage":null,"choices":[{"delta":{"content":"x"}}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
    )
    shaper = OpenAIShaper(strip_usage=True)
    assert not shaper.passthrough(chunk)
    out = shaper.render(Reframer().feed(chunk))
    assert b"prompt_tokens" not in out and b'"content":"x"' in out


_SHAPES = [
    b'data: {"id":"c1","choices":[{"delta":{"content":"%b"},"finish_reason":null}]}\n\n',
    b'data: {"id":"c1","choices":[{"delta":{"reasoning_content":"%b"}}],"usage":null}\n\n',
    b'data: {"id":"c1","choices":[{"delta":{"content":"%b"},"finish_reason":"stop"}]}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2},"x":"%b"}\n\n',
    b'data: {"error":{"message":"%b"}}\n\n',
    b'data: {"choices":[{"delta":{"content":"%b"}}]}\r\n\r\n',
]
_TEXTS = st.one_of(
    st.text(max_size=12).map(lambda t: t.encode()),
    st.lists(
        st.sampled_from([b"a", b'"', b"\\", b"\n", b"\r", b"\xff", b"\xc3\xa9", b"error", b"}"]),
        max_size=6,
    ).map(b"".join),
    st.sampled_from([b'"}]}\n\ndata: {"error":{"message":"x"}}\n\n', b"[DONE]", b"usage"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_SHAPES), _TEXTS), min_size=1, max_size=12))
def test_fast_path_template_is_indistinguishable_from_the_full_path(
    reads: list[tuple[bytes, bytes]],
) -> None:
    # Runs of one event shape with only its text changing: the template shortcut's case,
    # including texts that would change the shape (quotes, backslashes, line ends).
    _assert_fast_is_full([shape % text for shape, text in reads], strip_usage=True)


def test_fast_path_template_takes_the_next_event_of_the_same_shape() -> None:
    shaper = OpenAIShaper()
    first = b'data: {"choices":[{"delta":{"content":"Hel"},"finish_reason":null}]}\n\n'
    assert shaper.passthrough(first)
    assert shaper._template is not None
    assert shaper.passthrough(first.replace(b"Hel", b"lo, w\xc3\xb6rld"))
    # A quote in the new text changes the shape: the full check decides, and refuses.
    assert not shaper.passthrough(first.replace(b"Hel", b'x"}]}\n\ndata: {"error":1'))
    assert shaper.events == 2


# --- upstream errors in the upstream's own words ---------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message", "code"),
    [
        (b'{"error": "TypeError", "message": "Cannot read properties of null"}',
         "TypeError: Cannot read properties of null", None),
        (b'{"error": "Not Found"}', "Not Found", None),
        (b'{"message": "bad input", "code": "InvalidParameter", "request_id": "r1"}',
         "bad input", "InvalidParameter"),
        (b'{"detail": "Method Not Allowed"}', "Method Not Allowed", None),
        (b'{"error": {"code": 500, "status": "INTERNAL"}}', "INTERNAL", 500),
        (b'data: {"error": {"message": "from an event", "code": "x"}}\n\n',
         "from an event", "x"),
        (b'event: error\ndata: {"message": "named event"}\n\n', "named event", None),
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>", None),
        (b"", "upstream sent an empty error event", None),
    ],
)  # fmt: skip
def test_a_wrapped_upstream_error_keeps_the_upstreams_words(
    payload: bytes, message: str, code: str | int | None
) -> None:
    err = json.loads(normalize_error(payload))["error"]
    assert err["message"] == message
    assert err["code"] == code
    assert err.get("param") is None


def test_a_huge_error_text_is_cut_but_begins_with_its_words() -> None:
    err = json.loads(normalize_error(b"Traceback: " + b"x" * 100_000))["error"]
    assert err["message"].startswith("Traceback: xxx")
    assert len(err["message"]) < 20_000


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ({"code": 429}, 429),
        ({"code": "503"}, 503),
        ({"code": "rate_limit_exceeded", "type": "requests"}, 429),
        ({"type": "rate_limit_error"}, 429),
        ({"code": "insufficient_quota"}, 429),
        ({"type": "invalid_request_error"}, 400),
        ({"code": "context_length_exceeded"}, 400),
        ({"type": "authentication_error"}, 401),
        ({"code": "invalid_api_key"}, 401),
        ({"type": "permission_error"}, 403),
        ({"type": "not_found_error"}, 404),
        ({"code": "model_not_found"}, 404),
        ({"type": "overloaded_error"}, 529),
        ({"type": "api_error"}, 500),
        ({"status": "RESOURCE_EXHAUSTED", "code": 8}, 429),
        ({"code": "Throttling.RateQuota"}, 429),
        ({"code": "InvalidApiKey"}, 401),
        ({"code": "DataInspectionFailed"}, 400),
        ({"code": "Arrearage"}, 403),
        ({"code": "InternalError.Algo"}, 500),
        ({"message": "no words"}, 502),
        ({"code": True}, 502),
        ({"code": 200}, 502),
    ],
)
def test_an_error_is_mapped_to_a_status_by_what_it_says(error: dict[str, Any], status: int) -> None:
    assert error_status(json.dumps({"error": error}).encode()) == status


def test_dashscope_native_errors_are_mapped_by_their_top_level_code() -> None:
    body = b'{"code": "Throttling", "message": "Requests rate limit exceeded", "request_id": "x"}'
    assert error_status(body) == 429
