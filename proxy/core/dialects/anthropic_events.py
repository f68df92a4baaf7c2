"""Anthropic stream events: the event value, its SSE encoding, pings, errors, endings.

An Anthropic stream is named events, each ``event: NAME`` and one ``data:`` line whose
JSON ``type`` is the name. anthropic-python reads the name only to skip pings, to raise
on ``error`` and to skip unnamed events; everything else it dispatches on the data's
``type``, so both always agree here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from proxy.core.dialects.anthropic_errors import error_body
from proxy.core.sse import Event as SSEEvent
from proxy.core.sse import Item

PING = b'event: ping\ndata: {"type":"ping"}\n\n'
TRUNCATED = "upstream stream ended before the answer was complete (truncated)"


@dataclass(frozen=True, slots=True)
class Event:
    """One Anthropic stream event: its name, and its data (whose ``type`` is the name)."""

    name: str
    data: dict[str, Any]


def make(name: str, **fields: Any) -> Event:
    """An event whose data is ``{"type": name, **fields}``."""
    return Event(name, {"type": name, **fields})


def dumps(obj: Any) -> bytes:
    """Compact JSON, UTF-8 as it is: what the SDKs parse, in the fewest bytes."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def encode(events: list[Event]) -> bytes:
    """The events as SSE bytes, one ``event:`` line and one ``data:`` line each."""
    # json.dumps escapes every line end inside strings, so one data line always holds.
    return b"".join(
        [b"event: " + e.name.encode() + b"\ndata: " + dumps(e.data) + b"\n\n" for e in events]
    )


def ping() -> bytes:
    """A heartbeat as Anthropic sends it (``event: ping``), which every SDK skips."""
    return PING


def error_event(kind: str, message: str) -> Event:
    """An ``error`` event: anthropic-python raises it as an ``APIStatusError``."""
    return Event("error", error_body(kind, message))


class EndingCheck:
    """Watches an Anthropic stream passed through unchanged, to tell how it ended.

    A stream that stops without ``message_stop`` (and without an ``error`` event) was
    truncated, whatever it held: ``finish`` then gives the error event the client must
    see instead of a clean end. ``content`` tells the gateway when a first content
    block (or the end of the answer) arrived, until which it may still fail over.
    """

    __slots__ = ("content", "error_payload", "errored", "finished", "started")

    def __init__(self) -> None:
        self.started = False  # message_start seen
        self.content = False  # a content block, a message_delta or the stop seen
        self.finished = False  # message_stop seen
        self.errored = False  # an error event seen
        self.error_payload: bytes | None = None

    def feed(self, items: list[Item]) -> None:
        for item in items:
            if not isinstance(item, SSEEvent) or not item.event:
                continue
            name = item.event
            if name == b"error":
                self.errored = True
                if self.error_payload is None:
                    self.error_payload = item.data or b""
            elif name == b"message_start":
                self.started = True
            elif name == b"message_stop":
                self.finished = self.content = True
            elif name in (b"content_block_start", b"message_delta"):
                self.content = True

    def finish(self, clean: bool = True) -> bytes:
        """Bytes that end the client's stream after the upstream's ended: nothing after
        ``message_stop`` or an error, else an ``api_error`` event saying it was cut."""
        if self.finished or self.errored:
            return b""
        self.errored = True
        reason = TRUNCATED if clean else f"{TRUNCATED}: the upstream connection was lost"
        return encode([error_event("api_error", reason)])
