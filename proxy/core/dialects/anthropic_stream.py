"""Chat chunks in, Anthropic Messages stream events out: the ``/v1/messages`` stream.

``ChatToAnthropic`` is fed the parsed chunks of a chat stream (``feed``) or the
reframer's items (``feed_sse``), and told how the upstream ended (``end``, ``fail``);
it gives ``Event`` values, which ``anthropic_events.encode`` writes as SSE. It does no
I/O and keeps no clock.

The order of what it gives: ``message_start`` with the first upstream chunk whatever
it holds (an error chunk first gives the error alone); the content blocks
(``anthropic_blocks``); once the finish_reason and the usage chunk have both arrived
(or the stream ended cleanly without usage) one ``message_delta`` with the stop
reason and cumulative usage; and ``message_stop`` only at a clean end after a
finish_reason. Truncation is never completion: a cut, an end
before any finish_reason, an error chunk or a finish reason that means a failure ends
the stream with an ``error`` event instead, and nothing follows it.

Until ``has_content`` (or ``errored``) is true the gateway may hold what it was given
and still fail over to another account: nothing the client could use was produced.

Reasoning becomes ``thinking`` blocks whose signature is empty: none can be made up,
and anthropic-python needs none (its accumulator takes the block from
``content_block_start`` and only a ``signature_delta``, never sent here, would change
it). Such blocks mean nothing to Anthropic itself: a conversation carried on with
Claude must leave them out, since the API refuses a thinking block whose signature it
did not make. Sent back to seamline they are dropped (or replayed as
``reasoning_content`` to accounts that want it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from proxy.core.dialects.anthropic_blocks import TEXT, THINKING, Blocks
from proxy.core.dialects.anthropic_events import TRUNCATED, Event, error_event, make
from proxy.core.dialects.anthropic_maps import BROKEN_REASONS, anthropic_usage, stop_reason
from proxy.core.openai import DONE, bare_error, error_status, normalize_error, usage_from
from proxy.core.shaper import PING_EVENTS, unglue
from proxy.core.sse import Comment, Item, Stray
from proxy.core.sse import Event as SSEEvent

_OVERLOADED = frozenset({503, 529})
# Keys under which upstreams stream reasoning: DeepSeek's and Qwen's, then OpenRouter's
# and newer vLLM's. Some send both with the same text, so only the first is taken.
_REASONING_KEYS = ("reasoning_content", "reasoning")
# Where upstreams name the stop sequence that ended a "stop": vLLM, then SGLang.
_MATCHED_KEYS = ("stop_reason", "matched_stop")


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def error_kind(status: int) -> str:
    """The error type a mid-stream failure is sent as: ``overloaded_error`` for an
    overloaded upstream, else ``api_error`` (the request was fine; the stream broke)."""
    return "overloaded_error" if status in _OVERLOADED else "api_error"


class ChatToAnthropic:
    """One chat stream translated into one Anthropic message stream."""

    def __init__(
        self,
        model: str,
        message_id: str | None = None,
        stop_sequences: tuple[str, ...] = (),
        tool_names: Mapping[str, str] | None = None,
        input_tokens: int = 0,
    ) -> None:
        self.model = model
        self.message_id = message_id
        self.stop_sequences = stop_sequences
        self.input_tokens = input_tokens  # message_start's figure, until the usage says
        self._tool_names = tool_names or {}
        self._blocks: Blocks | None = None
        self._usage: dict[str, Any] | None = None
        self._stop: tuple[str, str | None] | None = None  # stop_reason, stop_sequence
        self.started = False  # message_start given
        self.finished = False  # a finish_reason arrived
        self.delta_sent = False  # message_delta given
        self.done = False  # message_stop given
        self.errored = False  # an error event given
        self.error: Event | None = None
        # The status the error names: before any content, the gateway's HTTP answer (or
        # its reason to try another account).
        self.error_status: int | None = None

    @property
    def has_content(self) -> bool:
        """Whether anything a client could use was given: a content block, or the end of
        the answer (an empty answer is an answer too)."""
        started = self._blocks is not None and self._blocks.started > 0
        return started or self.finished

    @property
    def usage(self) -> tuple[int, int] | None:
        """(prompt, completion) tokens of the upstream's usage chunk, once it came."""
        return usage_from(self._usage)

    @property
    def lost_fragments(self) -> int:
        """Tool argument fragments that had no block left to go to (for the log)."""
        return self._blocks.lost if self._blocks is not None else 0

    # --- feeding -----------------------------------------------------------------------

    def feed_sse(self, items: list[Item]) -> list[Event]:
        """The reframer's items of a chat stream: data events, ``[DONE]``, error events."""
        out: list[Event] = []
        for item in items:
            if self.done or self.errored:
                break
            if isinstance(item, SSEEvent):
                out += self._sse_event(item)
            elif isinstance(item, Stray):
                err = bare_error(item.line)
                if err is not None:
                    out += self._error_payload(err)
            elif not isinstance(item, Comment):  # pragma: no cover - Item is closed
                raise TypeError(item)
        return out

    def _sse_event(self, item: SSEEvent) -> list[Event]:
        if item.event in PING_EVENTS:
            return []
        if item.event == b"error":
            return self._error_payload(item.data or b"")
        data = (item.data or b"").strip()
        if not data:
            return []
        if data.startswith(DONE):
            return self.end()
        parts = unglue(data) if b"\n" in data else None
        if parts is not None:  # JSON values an upstream forgot to separate
            out: list[Event] = []
            for part in parts:
                out += self._sse_event(SSEEvent(part, item.event))
            return out
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):
            return []  # not a chunk: nothing a Messages client could be given
        return self.feed(chunk)

    def feed(self, chunk: Any) -> list[Event]:
        """One parsed chat chunk."""
        if self.done or self.errored or not isinstance(chunk, dict):
            return []
        if chunk.get("error"):
            return self._error_payload(json.dumps(chunk).encode())
        out: list[Event] = []
        if not self.started:
            self._start(chunk, out)
        blocks = self._blocks
        assert blocks is not None
        for choice in chunk.get("choices") or ():
            # One answer per message: choices past the first (n > 1) have no place.
            if not isinstance(choice, dict) or self.finished:
                continue
            index = choice.get("index")
            if isinstance(index, int) and index != 0:
                continue
            self._choice(choice, blocks, out)
            if self.errored:
                return out
        usage = chunk.get("usage")
        if isinstance(usage, dict) and usage:
            self._usage = usage
            if self.finished and not self.delta_sent:
                self._message_delta(out)
        return out

    def _start(self, chunk: dict[str, Any], out: list[Event]) -> None:
        self.started = True
        if self.message_id is None:
            upstream = _str(chunk.get("id")) or "seamline"
            self.message_id = upstream if upstream.startswith("msg_") else f"msg_{upstream}"
        self._blocks = Blocks(self.message_id.removeprefix("msg_"), self._tool_names)
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        out.append(make("message_start", message=message))

    def _choice(self, choice: dict[str, Any], blocks: Blocks, out: list[Event]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning = next((r for k in _REASONING_KEYS if (r := _str(delta.get(k)))), None)
            if reasoning is not None:
                blocks.text(THINKING, reasoning, out)
            for key in ("content", "refusal"):
                text = _str(delta.get(key))
                if text is not None:
                    blocks.text(TEXT, text, out)
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                if isinstance(call, dict):
                    blocks.tool(blocks.tool_index(call), call, out)
            if isinstance(delta.get("function_call"), dict):  # the legacy single call
                blocks.tool(-1, {"function": delta["function_call"]}, out)
        finish = _str(choice.get("finish_reason"))
        if finish is not None:
            self._finish(finish, choice, blocks, out)

    def _finish(
        self, reason: str, choice: dict[str, Any], blocks: Blocks, out: list[Event]
    ) -> None:
        if reason in BROKEN_REASONS:
            kind = BROKEN_REASONS[reason]
            self.error_status = 529 if kind == "overloaded_error" else 502
            self._fail_with(kind, f"upstream broke off the answer: {reason}", out)
            return
        self.finished = True
        blocks.close_all(out)
        stop, sequence = stop_reason(reason), None
        matched = next((m for k in _MATCHED_KEYS if (m := _str(choice.get(k)))), None)
        if stop in ("end_turn", "stop_sequence") and matched in self.stop_sequences:
            stop, sequence = "stop_sequence", matched
        if stop == "end_turn" and blocks.tools_started:
            # Some upstreams say "stop" after tool calls; Anthropic's clients run the
            # tools on "tool_use".
            stop = "tool_use"
        self._stop = (stop, sequence)

    def _message_delta(self, out: list[Event]) -> None:
        self.delta_sent = True
        stop, sequence = self._stop or ("end_turn", None)
        # Without a usage chunk, message_start's input figure stands.
        usage = {"output_tokens": 0} if self._usage is None else anthropic_usage(self._usage)
        delta = {"stop_reason": stop, "stop_sequence": sequence}
        out.append(make("message_delta", delta=delta, usage=usage))

    # --- endings -----------------------------------------------------------------------

    def end(self, clean: bool = True) -> list[Event]:
        """The upstream's stream ended: ``clean`` for ``[DONE]`` or an orderly close,
        not for a connection lost midway (which is a cut even after a finish_reason)."""
        if self.done or self.errored:
            return []
        if not clean:
            return self.fail(f"{TRUNCATED}: the upstream connection was lost")
        if not self.finished:
            return self.fail(f"{TRUNCATED}: no finish_reason")
        out: list[Event] = []
        if not self.delta_sent:
            self._message_delta(out)
        self.done = True
        out.append(make("message_stop"))
        return out

    def fail(self, message: str, status: int = 502) -> list[Event]:
        """The stream failed here (a timeout, a cut, a limit): its ``error`` event."""
        if self.done or self.errored:
            return []
        out: list[Event] = []
        self.error_status = status
        self._fail_with(error_kind(status), message, out)
        return out

    def _fail_with(self, kind: str, message: str, out: list[Event]) -> None:
        self.errored = True
        self.error = error_event(kind, message)
        out.append(self.error)

    def _error_payload(self, payload: bytes) -> list[Event]:
        """An upstream error (event, chunk or bare line) in the upstream's words."""
        if self.done or self.errored:
            return []
        message = json.loads(normalize_error(payload))["error"].get("message") or "upstream error"
        return self.fail(str(message), error_status(payload))
