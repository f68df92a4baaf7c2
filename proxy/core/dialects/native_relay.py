"""A Responses stream from an account that speaks the Responses API, on its way to a
Responses client: passed through event by event as the upstream framed it, reframed
(line ends, BOM, split and glued reads repaired as on the chat route), its events and
their ``sequence_number`` untouched, and its ending checked.

Before the answer's first content (any event but the handshake ``response.created``,
``response.queued`` and ``response.in_progress``) nothing needs to reach the client: an
error then may still go to another account. After it, a stream that stops without
``response.completed``, ``response.incomplete`` or ``response.failed`` ends with an
``error`` event (:class:`EndingCheck`), never a made-up completion.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.core.dialects.native_stream import TERMINAL_EVENTS, EndingCheck
from proxy.core.dialects.responses_common import CUT, JSON, UpstreamFailure, encode_events
from proxy.core.openai import bare_error
from proxy.core.sse import Event, Item, Stray
from proxy.errors import UpstreamError

HANDSHAKE = frozenset({"response.created", "response.queued", "response.in_progress"})


def encode_item(event: Event) -> bytes:
    """One event block as the upstream framed it (its name, its data lines, its id)."""
    out = b"event: " + event.event + b"\n" if event.event else b""
    if event.id is not None:
        out += b"id: " + event.id + b"\n"
    for line in event.data_lines:
        out += b"data: " + line + b"\n"
    return out + b"\n"


class ResponsesRelay:
    """``fronts.Translator`` for a native Responses stream (the events are the same on
    both sides: this frames, watches and ends them)."""

    __slots__ = ("_check", "_failure", "content_started", "done", "final")

    def __init__(self) -> None:
        self._check = EndingCheck()
        self._failure: UpstreamFailure | None = None
        self.content_started = False
        self.done = False
        # The terminal event's ``response`` (what a later turn's previous_response_id
        # needs), once it came.
        self.final: JSON | None = None

    def take(self, items: list[Item]) -> bytes:
        out: list[bytes] = []
        for item in items:
            if self.done:
                break
            if isinstance(item, Stray):
                err = bare_error(item.line)
                if err is not None:
                    out.append(self._fail(UpstreamFailure.from_payload(err)))
                continue
            if not isinstance(item, Event) or item.data is None or not item.data.strip():
                continue  # comments and keep-alives: seamline makes its own heartbeats
            out.append(self._event(item))
        return b"".join(out)

    def _event(self, item: Event) -> bytes:
        assert item.data is not None
        obj = _parse(item.data)
        kind = str(obj.get("type") or item.event.decode("utf-8", "replace"))
        if kind == "error" or (kind == "" and obj.get("error")):
            self._check.see([item])
            self.done = True
            if not self.content_started:
                self._failure = UpstreamFailure.from_object(_error_of(obj))
            return encode_item(item)
        if kind == "response.failed" and not self.content_started:
            response = obj.get("response")
            error = response.get("error") if isinstance(response, dict) else None
            self._failure = UpstreamFailure.from_object({"error": error or {}})
        if kind not in HANDSHAKE and not self._failure:
            # A response.failed before any content is a failure, not content: another
            # account may still take the request.
            self.content_started = True
        self._check.see([item])
        if kind in TERMINAL_EVENTS:
            self.done = True
            response = obj.get("response")
            if isinstance(response, dict) and kind != "response.failed":
                self.final = response
        return encode_item(item)

    def _fail(self, failure: UpstreamFailure) -> bytes:
        self.done = True
        if not self.content_started:
            self._failure = failure
        event = {
            "type": "error", "code": failure.code, "message": failure.message,
            "param": failure.param, "sequence_number": self._check.last_sequence_number + 1,
        }  # fmt: skip
        return encode_events([event])

    def end(self, clean: bool) -> bytes:
        if self.done:
            return b""
        self.done = True
        closing = self._check.closing(clean)
        if closing and not self.content_started:
            self._failure = CUT
        return encode_events(closing)

    def cut(self, error: UpstreamError) -> bytes:
        if self.done:
            return b""
        return self._fail(UpstreamFailure(error.message, error.code, status=error.status))

    def failure(self) -> tuple[int, bytes] | None:
        failed = self._failure
        if failed is None:
            return None
        return failed.status, json.dumps(failed.chat_error()).encode()


def _parse(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _error_of(obj: dict[str, Any]) -> dict[str, Any]:
    """An ``error`` event's data (``{"type": "error", "code", "message"}``) or an
    ``{"error": ...}`` payload, as an object holding the error."""
    if isinstance(obj.get("error"), dict):
        return obj
    return {"error": {k: v for k, v in obj.items() if k in ("code", "message", "param")}}
