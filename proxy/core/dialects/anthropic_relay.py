"""An Anthropic Messages stream from an Anthropic account, on its way to a Messages
client: passed through event by event as the upstream framed it (reframed: line ends,
split and glued reads repaired), and its ending checked (:class:`EndingCheck`): a
stream that stops without ``message_stop`` or an ``error`` event ends with an
``api_error`` event, never as if complete.

Until the first content block (or the end of the answer) nothing needs to reach the
client: ``message_start`` and pings are held, so an error then may still go to another
account, or be answered with the HTTP status its type names.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.core.dialects.anthropic_errors import to_openai
from proxy.core.dialects.anthropic_events import EndingCheck
from proxy.core.dialects.anthropic_maps import chat_usage
from proxy.core.dialects.native_relay import encode_item
from proxy.core.sse import Event, Item
from proxy.errors import UpstreamError

_USAGE_EVENTS = frozenset({b"message_start", b"message_delta"})


class MessagesRelay:
    """``fronts.Translator`` for a native Messages stream."""

    __slots__ = ("_check", "_usage")

    def __init__(self) -> None:
        self._check = EndingCheck()
        self._usage: dict[str, Any] = {}

    @property
    def usage(self) -> tuple[int, int] | None:
        """(prompt, completion) tokens as the stream told them (``message_start``'s
        input, ``message_delta``'s cumulative output), for the pool's accounting."""
        if not self._usage:
            return None
        counted = chat_usage(self._usage)
        return counted["prompt_tokens"], counted["completion_tokens"]

    @property
    def content_started(self) -> bool:
        return self._check.content

    @property
    def done(self) -> bool:
        return self._check.finished or self._check.errored

    def take(self, items: list[Item]) -> bytes:
        out: list[bytes] = []
        for item in items:
            if self.done:
                break
            if isinstance(item, Event) and item.data is not None:
                self._check.feed([item])
                if item.event in _USAGE_EVENTS:
                    self._note_usage(item.data)
                out.append(encode_item(item))
        return b"".join(out)

    def _note_usage(self, data: bytes) -> None:
        # Two events a stream: parsing them costs nothing that shows.
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            return
        if not isinstance(obj, dict):
            return
        message = obj.get("message")
        usage = message.get("usage") if isinstance(message, dict) else obj.get("usage")
        if isinstance(usage, dict):
            self._usage.update(usage)

    def end(self, clean: bool) -> bytes:
        return self._check.finish(clean)

    def cut(self, error: UpstreamError) -> bytes:
        return self._check.finish(False)

    def failure(self) -> tuple[int, bytes] | None:
        """Before any content: the error event's status and OpenAI's words for it (a
        cut before content is a 502)."""
        check = self._check
        if not check.errored or check.content:
            return None
        if check.error_payload is None:
            return 502, b'{"error":{"message":"upstream stream ended before its answer"}}'
        return to_openai(check.error_payload)
