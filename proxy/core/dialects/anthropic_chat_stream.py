"""Anthropic stream events in, chat chunks out: an Anthropic account behind ``/v1/chat``.

``AnthropicToChat`` is fed the reframer's items of an Anthropic Messages stream and
gives the chat SSE bytes an OpenAI client reads: ``text_delta`` as ``content``,
``thinking_delta`` as ``reasoning_content``, ``tool_use`` blocks as ``tool_calls``
(id, type and name on the first fragment, ``input_json_delta`` as ``arguments``),
``stop_reason`` as ``finish_reason``, the cumulative usage as the usage chunk (only
when the client asked for it), ``message_stop`` as ``[DONE]``, ``event: error`` as
``data: {"error": ...}`` (its type kept, which names its status), and ``ping`` as a
comment. Unknown event types are ignored, as Anthropic's versioning policy asks.

A stream that stops without ``message_stop`` was truncated, even after a stop reason:
``end`` then gives an error event, never ``[DONE]``. No I/O, no clock (``created`` is
given).
"""

from __future__ import annotations

import json
from typing import Any

from proxy.core.dialects.anthropic_errors import to_openai
from proxy.core.dialects.anthropic_events import TRUNCATED
from proxy.core.dialects.anthropic_maps import chat_usage, finish_reason
from proxy.core.openai import DONE_EVENT, error_json
from proxy.core.shaper import data_block
from proxy.core.sse import Event as SSEEvent
from proxy.core.sse import Item, Stray

PING_COMMENT = b": ping\n\n"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class AnthropicToChat:
    """One Anthropic message stream translated into one chat completion stream."""

    def __init__(self, created: int, include_usage: bool, model: str | None = None) -> None:
        self.created = created
        self.include_usage = include_usage
        self.model = model
        self.id = ""
        self._kinds: dict[int, str] = {}  # Anthropic block index -> its kind
        self._tools: dict[int, int] = {}  # Anthropic block index -> chat tool index
        self._usage: dict[str, Any] = {}
        self.started = False  # message_start seen
        self.has_content = False  # text, reasoning, a tool call or the stop reason given
        self.finished = False  # the stop reason given
        self.done = False  # [DONE] given
        self.errored = False
        self.error_status: int | None = None
        self.error_payload: bytes | None = None  # the first error given, OpenAI's JSON
        self.events = 0  # data events given

    @property
    def usage(self) -> dict[str, Any]:
        """The usage so far, as a chat ``usage`` object."""
        return chat_usage(self._usage)

    def feed_sse(self, items: list[Item]) -> bytes:
        """The reframer's items of an Anthropic stream: the bytes for the chat client."""
        out: list[bytes] = []
        for item in items:
            if self.done or self.errored:
                break
            if isinstance(item, Stray) and item.line.startswith(b"{"):
                # A bare JSON line: an error body some gateways send mid-stream.
                out.append(self._maybe_error(item.line))
            if not isinstance(item, SSEEvent):
                continue
            if item.event == b"ping":
                out.append(PING_COMMENT)
                continue
            if item.event == b"error":
                out.append(self._error(item.data or b""))
                continue
            try:
                data = json.loads(item.data or b"")
            except (ValueError, RecursionError):
                continue  # not an event any SDK would read
            out.append(self.event(data))
        return b"".join(out)

    def event(self, data: Any) -> bytes:
        """One parsed Anthropic event, dispatched on its ``type`` as the SDKs do."""
        if self.done or self.errored or not isinstance(data, dict):
            return b""
        kind = data.get("type")
        if kind == "message_start":
            return self._message_start(data.get("message"))
        if kind == "content_block_start":
            return self._block_start(data.get("index"), data.get("content_block"))
        if kind == "content_block_delta":
            return self._block_delta(data.get("index"), data.get("delta"))
        if kind == "message_delta":
            return self._message_delta(data)
        if kind == "message_stop":
            return self._message_stop()
        if kind == "error":
            return self._error(_dumps(data))
        if kind == "ping":
            return PING_COMMENT
        return b""  # content_block_stop, and types newer than this code

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        self.events += 1
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return data_block(
            _dumps(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model or "",
                    "choices": [choice],
                }
            )
        )

    def _message_start(self, message: Any) -> bytes:
        if self.started or not isinstance(message, dict):
            return b""
        self.started = True
        self.id = str(message.get("id") or "")
        self.model = self.model or str(message.get("model") or "")
        if isinstance(message.get("usage"), dict):
            self._usage.update(message["usage"])
        return self._chunk({"role": "assistant", "content": ""})

    def _block_start(self, index: Any, block: Any) -> bytes:
        if not isinstance(index, int) or not isinstance(block, dict):
            return b""
        kind = block.get("type")
        self._kinds[index] = str(kind)
        if kind == "text" and block.get("text"):
            return self._content("content", block["text"])
        if kind == "thinking" and block.get("thinking"):
            return self._content("reasoning_content", block["thinking"])
        if kind != "tool_use":
            return b""  # server tools ran at Anthropic; redacted thinking says nothing
        self.has_content = True
        n = self._tools[index] = len(self._tools)
        arguments = block.get("input")
        # Anthropic starts with an empty input and streams it; a non-empty one is whole.
        text = _dumps(arguments).decode() if isinstance(arguments, dict) and arguments else ""
        function = {"name": block.get("name") or "", "arguments": text}
        call = {"index": n, "id": block.get("id") or "", "type": "function", "function": function}
        return self._chunk({"tool_calls": [call]})

    def _content(self, key: str, text: str) -> bytes:
        self.has_content = True
        return self._chunk({key: text})

    def _block_delta(self, index: Any, delta: Any) -> bytes:
        if not isinstance(delta, dict):
            return b""
        kind = delta.get("type")
        if kind == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
            return self._content("content", delta["text"])
        if (
            kind == "thinking_delta"
            and isinstance(delta.get("thinking"), str)
            and delta["thinking"]
        ):
            return self._content("reasoning_content", delta["thinking"])
        if kind == "input_json_delta" and index in self._tools:
            fragment = delta.get("partial_json")
            if isinstance(fragment, str) and fragment:
                call = {"index": self._tools[index], "function": {"arguments": fragment}}
                return self._chunk({"tool_calls": [call]})
        return b""  # signature and citation deltas have no chat meaning

    def _message_delta(self, data: dict[str, Any]) -> bytes:
        usage = data.get("usage")
        if isinstance(usage, dict):
            # Cumulative counts: they replace, and an absent one keeps message_start's.
            self._usage.update({k: v for k, v in usage.items() if v is not None})
        delta = data.get("delta")
        stop = delta.get("stop_reason") if isinstance(delta, dict) else None
        if stop is None or self.finished:
            return b""
        self.finished = self.has_content = True
        return self._chunk({}, finish_reason(stop))

    def _message_stop(self) -> bytes:
        self.done = True
        out = b""
        if not self.finished:
            # Anthropic always says why it stopped; a chat client must see a reason too.
            self.finished = True
            out = self._chunk({}, "stop")
        if self.include_usage:
            self.events += 1
            body = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model or "",
                "choices": [],
                "usage": self.usage,
            }
            out += data_block(_dumps(body))
        return out + DONE_EVENT

    def _maybe_error(self, line: bytes) -> bytes:
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            return b""
        return self._error(line) if isinstance(obj, dict) and obj.get("error") else b""

    def _error(self, payload: bytes, status: int | None = None) -> bytes:
        if self.done or self.errored:
            return b""
        self.errored = True
        self.error_status, body = to_openai(payload, status)
        self.error_payload = body
        return data_block(body)

    def end(self, clean: bool = True) -> bytes:
        """The upstream's stream ended: nothing after ``[DONE]`` or an error, else the
        error event of a truncated answer (even after a stop reason: no message_stop)."""
        if self.done or self.errored:
            return b""
        reason = TRUNCATED if clean else f"{TRUNCATED}: the upstream connection was lost"
        return self.fail(f"{reason} (no message_stop)")

    def fail(self, message: str, status: int = 502) -> bytes:
        """The stream failed here (a timeout, a cut, a limit): its error event."""
        if self.done or self.errored:
            return b""
        self.errored = True
        self.error_status = status
        self.error_payload = error_json(message)
        return data_block(self.error_payload)
