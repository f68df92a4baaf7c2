"""Turn reframed events into output that every OpenAI SDK parses.

Pure functions and one small stateful shaper; no I/O. The shaper decides, event by
event, what the client receives: data events as ``data:`` lines, comments as
comment blocks, and nothing for blocks that would make an SDK raise.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

from proxy.core.openai import (
    DONE,
    DONE_EVENT,
    TRUNCATED,
    bare_error,
    error_json,
    is_error,
    normalize_error,
    only_usage,
    usage_from,
)
from proxy.core.sse import Comment, Event, Item, Stray

# Event types that upstreams use as keep-alives; their payload is never completion data.
PING_EVENTS = frozenset({b"ping", b"heartbeat", b"keep-alive", b"keepalive"})
# A chunk that ends an answer: a non-null finish_reason, or the usage chunk that
# follows it (empty choices and a usage object; Azure's first chunk, which carries
# prompt_filter_results, has empty choices too). Searched as bytes so no JSON is
# parsed per event.
JSON_SPACE = b" \t\r\n"


def _value_at(data: bytes, key: bytes) -> int:
    """Index of the first byte of ``key``'s value in a JSON payload, or -1.

    bytes.find, not a regex: this runs on every event. A quoted key cannot match
    inside a JSON string, where every quote is escaped.
    """
    i = data.find(key)
    n = len(data)
    while i != -1:
        j = i + len(key)
        while j < n and data[j] in JSON_SPACE:
            j += 1
        if j < n and data[j] == 0x3A:  # ':'
            j += 1
            while j < n and data[j] in JSON_SPACE:
                j += 1
            return j if j < n else -1
        i = data.find(key, j)
    return -1


def _has_usage(data: bytes) -> bool:
    j = _value_at(data, b'"usage"')
    return j != -1 and data[j] == 0x7B  # '{'


def _no_choices(data: bytes) -> bool:
    j = _value_at(data, b'"choices"')
    if j == -1 or data[j] != 0x5B:  # '['
        return False
    j += 1
    while j < len(data) and data[j] in JSON_SPACE:
        j += 1
    return data[j : j + 1] == b"]"


def _any_value(data: bytes, key: bytes, first: int) -> bool:
    """Some occurrence of ``key`` in ``data`` (any, not only the first) has a value
    starting with the byte ``first``: a chunk can hold several events."""
    i = data.find(key)
    while i != -1:
        j = _value_at(data[i:], key)
        if j != -1 and data[i + j] == first:
            return True
        i = data.find(key, i + len(key))
    return False


def _any_finish(data: bytes) -> bool:
    """Some event in ``data`` has a non-null finish_reason."""
    return _any_value(data, b'"finish_reason"', 0x22)  # '"'


def _ends_answer(data: bytes) -> bool:
    """A non-null finish_reason, or the usage chunk (empty choices) that follows it."""
    j = _value_at(data, b'"finish_reason"')
    if j != -1 and data[j] == 0x22:  # '"'
        return True
    return _no_choices(data) and _has_usage(data)


def _is_json(text: bytes) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def unglue(data: bytes) -> list[bytes] | None:
    """Split an event whose data lines are separate JSON values that an upstream
    forgot to separate with a blank line; None when it is one legitimate value.

    Only multi-line events get here, and they are rare, so parsing is affordable.
    """
    lines = data.split(b"\n")
    if _is_json(data):
        return None
    if all(line.strip() == DONE or _is_json(line) for line in lines if line.strip()):
        return [line for line in lines if line.strip()]
    return None


def looks_like_json(data: bytes) -> bool:
    """A cheap test (no parsing) that a payload is a JSON object or array."""
    return (data[:1] == b"{" and data[-1:] == b"}") or (data[:1] == b"[" and data[-1:] == b"]")


def data_block(data: bytes) -> bytes:
    """One event as ``data:`` lines and the blank line that dispatches it."""
    if b"\n" not in data:
        return b"data: " + data + b"\n\n"
    return b"".join(b"data: " + line + b"\n" for line in data.split(b"\n")) + b"\n"


_MARKS = b'"\\\r\n'  # the bytes that could change a JSON string or a line
_TEXT_KEYS = (b'"content":"', b'"reasoning_content":"')


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _template(chunk: bytes) -> tuple[bytes, bytes, int] | None:
    """``chunk`` (one event) cut around the text of its content string, for
    ``passthrough`` to recognise the next event of the same shape by; None when it has
    no such string, or one with a quote or backslash in it."""
    for key in _TEXT_KEYS:
        i = chunk.find(key)
        if i == -1:
            continue
        start = i + len(key)
        end = chunk.find(b'"', start)
        if end == -1 or chunk.find(b"\\", start, end) != -1:
            return None
        head, tail = chunk[:start], chunk[end:]
        marks = len(head) + len(tail) - len((head + tail).translate(None, _MARKS))
        return head, tail, marks
    return None


class OpenAIShaper:
    """Renders events the way the OpenAI SDKs expect (the ``openai`` profile).

    With ``keep_event_names`` the ``event:`` line of named events is kept, for routes
    whose clients dispatch on it (the Responses API); id and retry are never sent,
    because a remembered id makes openai-python turn later comment blocks into
    empty events that fail to parse.
    """

    # A stream holds its shaper for its whole life: slots, not a dict of attributes.
    __slots__ = (
        "_template",
        "_trace",
        "check_endings",
        "done",
        "error_payload",
        "errored",
        "events",
        "finished",
        "keep_event_names",
        "repairs",
        "strip_usage",
        "usage",
    )

    def __init__(
        self,
        keep_event_names: bool = False,
        check_endings: bool = True,
        strip_usage: bool = False,
        trace: Callable[[str], None] | None = None,
    ) -> None:
        self.keep_event_names = keep_event_names
        self.check_endings = check_endings
        # seamline asked for the usage chunk, the client did not: it must not see it.
        self.strip_usage = strip_usage
        self.usage: tuple[int, int] | None = None
        self.finished = False  # a chunk that ends the answer was seen
        self.done = False  # [DONE] was sent; nothing may follow it
        self.events = 0  # data events written
        self.errored = False  # an error event was written
        self.repairs: Counter[str] = Counter()
        self.error_payload: bytes | None = None  # the first error sent, as JSON
        # The fast path's last single event: (text before a string, after it, how many
        # _MARKS the two hold).
        self._template: tuple[bytes, bytes, int] | None = None
        self._trace = trace

    def passthrough(self, chunk: bytes) -> bool:
        """The fast path: True when ``chunk`` is whole, already-normal events that go out
        unchanged (``data: {...}`` blocks ending in LF LF, UTF-8, no [DONE], error or
        usage chunk). A handful of C-speed scans of the chunk, no per-line Python work.
        """
        if self.done:
            return False
        t = self._template
        if t is not None:
            head, tail, marks = t
            if (
                len(chunk) >= len(head) + len(tail)
                and chunk.startswith(head)
                and chunk.endswith(tail)
                and len(chunk) - len(chunk.translate(None, _MARKS)) == marks
                and (chunk.isascii() or _utf8(chunk))
            ):
                # The last single event that passed, with only the text of one string
                # changed and no quote, backslash or line end in the new text: the same
                # JSON shape, so the same verdict, for half the scans.
                self.events += 1
                return True
        if b"\r" in chunk or not chunk.endswith(b"}\n\n") or not chunk.startswith(b"data: {"):
            return False
        # Blocks "data: {...}" one line each, so no [DONE] among them: every LF is one of
        # the two between blocks or at the end.
        n = chunk.count(b"}\n\ndata: {") + 1
        if chunk.count(b"\n") != 2 * n or b'"error"' in chunk:
            return False
        if b'"usage"' in chunk and _any_value(chunk, b'"usage"', 0x7B):  # '{'
            return False
        if not (chunk.isascii() or _utf8(chunk)):
            return False
        if not self.finished:
            keys = chunk.count(b'"finish_reason"')
            # Compact JSON says null plainly; only other spellings need the full look.
            if keys and keys != chunk.count(b'"finish_reason":null') and _any_finish(chunk):
                self.finished = True
        self.events += n
        if n == 1:
            self._template = _template(chunk)
        return True

    def _repair(self, kind: str) -> None:
        self.repairs[kind] += 1
        if self._trace is not None:
            self._trace(kind)

    def _error(self, payload: bytes) -> bytes:
        self.errored = True
        if self.error_payload is None:
            self.error_payload = payload
        return data_block(payload)

    def render(self, items: list[Item]) -> bytes:
        """Bytes for the client for these items (possibly empty)."""
        if len(items) == 1:
            return self._one(items[0])
        return b"".join([self._one(item) for item in items])

    def finish(self) -> bytes:
        """Bytes that end the stream properly after a clean upstream end.

        A stream whose last chunk ended the answer gets the ``[DONE]`` it lacks; one
        that stopped before any finish_reason gets an error event, because a
        truncated answer must never look complete.
        """
        if self.done or self.errored or not self.check_endings:
            return b""
        if self.finished:
            self._repair("done_appended")
            self.done = True
            return DONE_EVENT
        self._repair("truncated")
        return self._error(error_json(TRUNCATED))

    def _one(self, item: Item) -> bytes:
        if self.done:
            if not isinstance(item, Comment):
                self._repair("after_done_dropped")
            return b""
        if isinstance(item, Event):
            return self._event(item)
        if isinstance(item, Comment):
            return b":" + item.text + b"\n\n"
        return self._stray(item)

    def _event(self, ev: Event) -> bytes:
        data = ev.data
        name = ev.event
        if data is not None and name in PING_EVENTS:
            # A keep-alive with a payload: as data the SDKs would yield it as a chunk.
            self._repair("ping_event_to_comment")
            return b": ping\n\n"
        if name == b"error":
            self._repair("error_event")
            return self._error(normalize_error(data or b""))
        if data is None or not (stripped := data.strip()):
            self._repair("empty_block_dropped")
            return b""
        # "data:  [DONE]" leaves " [DONE]", which the SDKs would try to parse as JSON.
        if stripped.startswith(DONE):
            self.done = True
            return DONE_EVENT
        if b"\n" in data:
            parts = unglue(data)
            if parts is not None:
                self._repair("glued_events_split")
                return b"".join([self._event(Event(part, name)) for part in parts])
        if b'"error"' in data and is_error(stripped):
            # The SDKs raise on it as an API error: it is the upstream's error, which
            # before the first byte can still be an HTTP status (or another account).
            return self._error(normalize_error(stripped))
        if not looks_like_json(stripped):
            # Forwarded unchanged (nothing is lost) but counted, so operators can see
            # which upstream sends it.
            self._repair("non_json_payload")
        if b'"usage"' in data and _has_usage(data):
            # Once per stream: parsing it is affordable.
            try:
                obj = json.loads(data)
            except (ValueError, RecursionError):
                obj = None
            usage = usage_from(obj.get("usage")) if isinstance(obj, dict) else None
            self.usage = usage or self.usage
            if self.strip_usage and usage is not None and only_usage(obj):
                # Asked for by seamline, not by the client: its stream is as it would
                # have been without the option, whatever shape the chunk had. Only the
                # plain shape (no choices) ends an answer, as when it is forwarded.
                self.finished = self.finished or _no_choices(data)
                return b""
        self.events += 1
        if not self.finished and _ends_answer(data):
            self.finished = True
        if self.keep_event_names and name and name != b"message":
            return b"event: " + name + b"\n" + data_block(data)
        return data_block(data)

    def _stray(self, item: Stray) -> bytes:
        err = bare_error(item.line)
        if err is None:
            self._repair("stray_line_dropped")
            return b""
        self._repair("bare_error_line")
        return self._error(normalize_error(err))
