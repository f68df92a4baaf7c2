"""Turn reframed events into output that every OpenAI SDK parses.

Pure functions and one small stateful shaper; no I/O. The shaper decides, event by
event, what the client receives: data events as ``data:`` lines, comments as
comment blocks, and nothing for blocks that would make an SDK raise.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from .sse import Comment, Event, Item, Stray

DONE = b"[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"
# Event types that upstreams use as keep-alives; their payload is never completion data.
PING_EVENTS = frozenset({b"ping", b"heartbeat", b"keep-alive", b"keepalive"})
# A chunk that ends an answer: a non-null finish_reason, or the usage chunk that
# follows it (empty choices and a usage object; Azure's first chunk, which carries
# prompt_filter_results, has empty choices too). Searched as bytes so no JSON is
# parsed per event.
_FINISH = re.compile(rb'(?P<reason>"finish_reason"\s*:\s*")|"choices"\s*:\s*\[\s*\]')
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
TRUNCATED = "upstream stream ended before the answer was complete (truncated: no finish_reason)"


def error_event(message: str, error_type: str = "upstream_error", code: str | None = None) -> bytes:
    """An SSE block that both openai-python and openai-node raise as an API error."""
    body: dict[str, Any] = {"message": message, "type": error_type}
    if code is not None:
        body["code"] = code
    return b"data: " + json.dumps({"error": body}).encode() + b"\n\n"


def normalize_error(payload: bytes) -> bytes:
    """Make an upstream error payload an OpenAI ``{"error": {...}}`` object.

    An object that already has an ``error`` key passes untouched; any other object or
    text becomes the message of a new one, so no upstream wording is lost.
    """
    try:
        obj = json.loads(payload)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        inner = obj.get("error")
        if isinstance(inner, dict) and inner:
            return payload
        # The SDKs read only error.message; {"error": "text"} would lose the text.
        message = inner if isinstance(inner, str) else None
        message = message or obj.get("message") or obj.get("msg") or obj.get("detail")
        if not isinstance(message, str) or not message:
            message = payload.decode("utf-8", "replace")
        err: dict[str, Any] = {"message": message, "type": "upstream_error"}
        code = obj.get("code")
        if isinstance(code, str | int):
            err["code"] = code
        return json.dumps({"error": err}).encode()
    text = payload.decode("utf-8", "replace").strip() or "upstream sent an empty error event"
    return json.dumps({"error": {"message": text, "type": "upstream_error"}}).encode()


def bare_error(line: bytes) -> bytes | None:
    """The error object in a stray non-SSE line (``{"error": ...}``), else None."""
    if not line.startswith(b"{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if isinstance(obj, dict) and obj.get("error"):
        return line
    return None


def _ends_answer(data: bytes) -> bool:
    match = _FINISH.search(data)
    if match is None:
        return False
    return match["reason"] is not None or _USAGE.search(data) is not None


def usage_of(body: bytes) -> tuple[int, int] | None:
    """Prompt and completion tokens of a JSON payload's ``usage``, if it has one."""
    try:
        obj: Any = json.loads(body)
    except ValueError:
        return None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens") or usage.get("input_tokens") or 0
    completion = usage.get("completion_tokens") or usage.get("output_tokens") or 0
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return prompt, completion


def data_block(data: bytes) -> bytes:
    """One event as ``data:`` lines and the blank line that dispatches it."""
    if b"\n" not in data:
        return b"data: " + data + b"\n\n"
    return b"".join(b"data: " + line + b"\n" for line in data.split(b"\n")) + b"\n"


class OpenAIShaper:
    """Renders events the way the OpenAI SDKs expect (the ``openai`` profile).

    With ``keep_event_names`` the ``event:`` line of named events is kept, for routes
    whose clients dispatch on it (the Responses API); id and retry are never sent,
    because a remembered id makes openai-python turn later comment blocks into
    empty events that fail to parse.
    """

    def __init__(
        self, keep_event_names: bool = False, check_endings: bool = True, strip_usage: bool = False
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
            self.repairs["done_appended"] += 1
            self.done = True
            return DONE_EVENT
        self.repairs["truncated"] += 1
        self.errored = True
        return error_event(TRUNCATED)

    def _one(self, item: Item) -> bytes:
        if self.done:
            if not isinstance(item, Comment):
                self.repairs["after_done_dropped"] += 1
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
            self.repairs["ping_event_to_comment"] += 1
            return b": ping\n\n"
        if name == b"error":
            self.repairs["error_event"] += 1
            self.errored = True
            return data_block(normalize_error(data or b""))
        if data is None or not (stripped := data.strip()):
            self.repairs["empty_block_dropped"] += 1
            return b""
        # "data:  [DONE]" leaves " [DONE]", which the SDKs would try to parse as JSON.
        if stripped.startswith(DONE):
            self.done = True
            return DONE_EVENT
        if _USAGE.search(data) is not None:
            self.usage = usage_of(data) or self.usage
            if self.strip_usage and _NO_CHOICES.search(data) is not None:
                self.finished = True
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
            self.repairs["stray_line_dropped"] += 1
            return b""
        self.repairs["bare_error_line"] += 1
        self.errored = True
        return data_block(normalize_error(err))
