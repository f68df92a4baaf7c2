"""Responses events in, chat-completion chunks out: a chat client served by an account
that speaks the Responses API. Also the Responses-aware ending check for streams
passed through to Responses clients, and a ``response`` object as a chat completion.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.core.dialects.responses_common import (
    CUT,
    JSON,
    TRUNCATED,
    ToolRef,
    UpstreamFailure,
    chat_usage,
    dumps,
)
from proxy.core.dialects.responses_tools import chat_name
from proxy.core.dialects.sse_inputs import Done, inputs
from proxy.core.sse import Event, Item

TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_INCOMPLETE_FINISH = {"max_output_tokens": "length", "content_filter": "content_filter"}


def ended_properly(event_types: Iterable[str]) -> bool:
    """Whether a Responses stream whose events had these types ended as one must: with
    ``response.completed``, ``response.incomplete`` or ``response.failed``."""
    return any(kind in TERMINAL_EVENTS for kind in event_types)


_SEQUENCE = re.compile(rb'"sequence_number"\s*:\s*(\d+)')
_TYPE = re.compile(rb'"type"\s*:\s*"(response\.(?:completed|incomplete|failed))"')


class EndingCheck:
    """Watches a Responses stream passed through byte for byte (its events untouched,
    ``sequence_number`` included) and makes the error event it lacks when it stops
    before its terminal event. Scans bytes, parses nothing: it sees every event."""

    def __init__(self) -> None:
        self.ended = False
        self.last_sequence_number = -1
        self._last_was_error = False

    def see(self, items: Iterable[Item]) -> None:
        for item in items:
            if not isinstance(item, Event) or item.data is None:
                continue
            if (match := _SEQUENCE.search(item.data)) is not None:
                self.last_sequence_number = max(self.last_sequence_number, int(match[1]))
            name = item.event.decode("utf-8", "replace")
            if name in TERMINAL_EVENTS or (not name and _TYPE.search(item.data)):
                self.ended = True
            self._last_was_error = name == "error" or (
                not name and item.data.lstrip().startswith(b'{"type":"error"')
            )

    def closing(self, clean: bool = True) -> list[JSON]:
        """What to send after the upstream's end: nothing after a terminal event or an
        error event (the stream already ends as a client must be told), else one
        ``error`` event numbered after the last."""
        if self.ended or self._last_was_error:
            return []
        failure = TRUNCATED if clean else CUT
        return [{
            "type": "error", "code": failure.code, "message": failure.message, "param": None,
            "sequence_number": self.last_sequence_number + 1,
        }]  # fmt: skip


@dataclass(slots=True)
class _Tool:
    index: int
    custom: bool
    sent: str = ""


class ResponsesToChat:
    """One chat-completions chunk stream made from one Responses stream.

    ``committed`` turns True with the first chunk of the answer: a stream that failed
    before it may still go to another account, or be answered with
    ``failure.status``. After :attr:`done` the gateway writes ``[DONE]`` unless
    :attr:`failed`, whose last chunk is an OpenAI error object.
    """

    def __init__(self, *, include_usage: bool, model: str = "") -> None:
        self._include_usage = include_usage
        self._id = ""
        self._created = 0
        self._model = model
        self._tools: dict[str, _Tool] = {}  # by item id
        self._streamed: set[str] = set()  # items whose text came as deltas
        self._parts: set[tuple[str, int]] = set()  # reasoning summary parts begun
        self.committed = False
        self.done = False
        self.failed = False
        self.failure: UpstreamFailure | None = None
        self.usage: tuple[int, int] | None = None  # (input, output) tokens, once known

    def _chunk(self, delta: JSON, finish: str | None = None) -> JSON:
        if not self.committed:
            delta = {"role": "assistant", **delta}
            self.committed = True
        return {
            "id": self._id, "object": "chat.completion.chunk", "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }  # fmt: skip

    def _head(self, response: Any) -> None:
        if not isinstance(response, Mapping):
            return
        self._id = str(response.get("id") or self._id)
        created = response.get("created_at")
        if isinstance(created, int | float) and not isinstance(created, bool):
            self._created = int(created)
        self._model = str(response.get("model") or self._model)

    def feed(self, event: Mapping[str, Any]) -> list[JSON]:
        """One parsed Responses event; the chunks it makes."""
        if self.done:
            return []
        kind = event.get("type")
        if kind in ("response.created", "response.in_progress", "response.queued"):
            self._head(event.get("response"))
            return []
        if kind in TERMINAL_EVENTS:
            return self._terminal(str(kind), event.get("response"))
        if kind == "error":
            # Its "type" is the event's, not the error's.
            error = {k: event.get(k) for k in ("message", "code", "param")}
            return self.fail(UpstreamFailure.from_object({"error": error}))
        item_id = str(event.get("item_id", ""))
        delta = event.get("delta")
        if kind == "response.output_text.delta" and isinstance(delta, str):
            self._streamed.add(item_id)
            return [self._chunk({"content": delta})]
        if kind == "response.refusal.delta" and isinstance(delta, str):
            self._streamed.add(item_id)
            return [self._chunk({"refusal": delta})]
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            return self._reasoning(event, item_id, delta)
        if kind in (
            "response.function_call_arguments.delta",
            "response.custom_tool_call_input.delta",
        ):
            tool = self._tools.get(item_id)
            if tool is None or not isinstance(delta, str):
                return []
            tool.sent += delta
            return [self._call(tool, None, None, delta)]
        if kind == "response.output_item.added":
            return self._added(event.get("item"))
        if kind == "response.output_item.done":
            return self._done(event.get("item"))
        return []

    def _reasoning(self, event: Mapping[str, Any], item_id: str, delta: Any) -> list[JSON]:
        if not isinstance(delta, str) or not delta:
            return []
        self._streamed.add(item_id)
        part = (item_id, int(event.get("summary_index", event.get("content_index", 0)) or 0))
        if part not in self._parts:
            if any(p[0] == item_id for p in self._parts):
                delta = "\n\n" + delta  # summary parts are paragraphs
            self._parts.add(part)
        return [self._chunk({"reasoning_content": delta})]

    def _call(self, tool: _Tool, call_id: str | None, name: str | None, text: str) -> JSON:
        entry: JSON = {"index": tool.index}
        if call_id is not None:
            entry["id"] = call_id
            entry["type"] = "custom" if tool.custom else "function"
        body: JSON = {} if name is None else {"name": name}
        body["input" if tool.custom else "arguments"] = text
        entry["custom" if tool.custom else "function"] = body
        return self._chunk({"tool_calls": [entry]})

    def _added(self, item: Any) -> list[JSON]:
        if not isinstance(item, Mapping) or item.get("type") not in (
            "function_call",
            "custom_tool_call",
        ):
            return []
        tool = _Tool(len(self._tools), item["type"] == "custom_tool_call")
        self._tools[str(item.get("id") or item.get("call_id"))] = tool
        name = str(item.get("name") or "")
        if isinstance(item.get("namespace"), str):
            # Chat has no namespaces: the flat name seamline's own requests give it.
            name = chat_name({}, ToolRef("function", name, item["namespace"]))
        return [self._call(tool, str(item.get("call_id") or ""), name, "")]

    def _done(self, item: Any) -> list[JSON]:
        """An item whose content did not stream (gateways that deliver items whole):
        its content now, once."""
        if not isinstance(item, Mapping):
            return []
        item_id = str(item.get("id") or item.get("call_id"))
        kind = item.get("type")
        if kind in ("function_call", "custom_tool_call"):
            text = str(item.get("input" if kind == "custom_tool_call" else "arguments") or "")
            tool = self._tools.get(item_id)
            if tool is None:
                out = self._added(item)
                tool = self._tools[item_id]
            else:
                out = []
            if len(text) > len(tool.sent) and text.startswith(tool.sent):
                out.append(self._call(tool, None, None, text[len(tool.sent) :]))
                tool.sent = text
            return out
        if item_id in self._streamed:
            return []
        if kind == "message":
            content = [p for p in item.get("content") or [] if isinstance(p, Mapping)]
            text = "".join(
                str(p.get("text", "")) for p in content if p.get("type") == "output_text"
            )
            refusal = "".join(
                str(p.get("refusal", "")) for p in content if p.get("type") == "refusal"
            )
            delta = {k: v for k, v in (("content", text), ("refusal", refusal)) if v}
            return [self._chunk(delta)] if delta else []
        if kind == "reasoning":
            text = _reasoning_text(item)
            return [self._chunk({"reasoning_content": text})] if text else []
        return []

    def _terminal(self, kind: str, response: Any) -> list[JSON]:
        self._head(response)
        response = response if isinstance(response, Mapping) else {}
        if kind == "response.failed":
            error = response.get("error")
            error = error if isinstance(error, Mapping) else {"message": "upstream response failed"}
            return self.fail(UpstreamFailure.from_object({"error": dict(error)}))
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, Mapping) else None
        if kind == "response.incomplete":
            finish = _INCOMPLETE_FINISH.get(str(reason), "length")
        else:
            finish = "tool_calls" if self._tools else "stop"
        out = [self._chunk({}, finish)]
        usage = chat_usage(response.get("usage"))
        if usage is not None:
            self.usage = usage["prompt_tokens"], usage["completion_tokens"]
        if self._include_usage and usage is not None:
            out.append(
                {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model,
                    "choices": [],
                    "usage": usage,
                }
            )
        self.done = True
        return out

    def fail(self, failure: UpstreamFailure) -> list[JSON]:
        """An OpenAI error object, which the chat SDKs raise as an APIError. Before
        anything was :attr:`committed` the gateway may answer with another account or
        an HTTP error instead."""
        if self.done:
            return []
        self.done = self.failed = True
        self.failure = failure
        return [failure.chat_error()]

    def end(self, clean: bool = True) -> list[JSON]:
        """The upstream's end: before a terminal event, the answer was cut."""
        return self.fail(TRUNCATED if clean else CUT)

    def feed_items(self, items: Iterable[Item]) -> list[JSON]:
        """Reframed upstream events, as :meth:`feed` and :meth:`fail` take them."""
        out: list[JSON] = []
        for value in inputs(items):
            if isinstance(value, UpstreamFailure):
                out += self.fail(value)
            elif not isinstance(value, Done):
                out += self.feed(value)
        return out


def chat_sse(chunks: Iterable[JSON]) -> bytes:
    """Chunks as ``data:`` events."""
    return b"".join(b"data: " + dumps(chunk) + b"\n\n" for chunk in chunks)


def _reasoning_text(item: Mapping[str, Any]) -> str:
    for key in ("summary", "content"):
        parts = item.get(key)
        if isinstance(parts, list):
            texts = [str(p.get("text", "")) for p in parts if isinstance(p, Mapping)]
            if any(texts):
                return "\n\n".join(texts)
    return ""


@dataclass(frozen=True, slots=True)
class ChatAnswer:
    """A non-streamed answer for a chat client: a ``chat.completion`` with status 200,
    or an OpenAI error body with the status it names."""

    body: JSON
    status: int


def response_to_completion(response: Mapping[str, Any]) -> ChatAnswer:
    """A Responses ``response`` object as a ``chat.completion``."""
    if response.get("status") == "failed":
        error = response.get("error")
        failure = UpstreamFailure.from_object(
            {"error": dict(error) if isinstance(error, Mapping) else {}}
        )
        return ChatAnswer(failure.chat_error(), failure.status)
    text: list[str] = []
    refusal: list[str] = []
    reasoning: list[str] = []
    calls: list[JSON] = []
    for item in response.get("output") or []:
        if not isinstance(item, Mapping):
            continue
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or []:
                if isinstance(part, Mapping) and part.get("type") == "output_text":
                    text.append(str(part.get("text", "")))
                elif isinstance(part, Mapping) and part.get("type") == "refusal":
                    refusal.append(str(part.get("refusal", "")))
        elif kind == "reasoning":
            reasoning.append(_reasoning_text(item))
        elif kind == "function_call":
            calls.append(
                {
                    "id": item.get("call_id"),
                    "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
                }
            )
        elif kind == "custom_tool_call":
            calls.append(
                {
                    "id": item.get("call_id"),
                    "type": "custom",
                    "custom": {"name": item.get("name"), "input": item.get("input", "")},
                }
            )
    message: JSON = {"role": "assistant", "content": "".join(text) if text else None}
    if refusal:
        message["refusal"] = "".join(refusal)
    if any(reasoning):
        message["reasoning_content"] = "\n\n".join(r for r in reasoning if r)
    if calls:
        message["tool_calls"] = calls
    details = response.get("incomplete_details")
    if response.get("status") == "incomplete":
        reason = details.get("reason") if isinstance(details, Mapping) else None
        finish = _INCOMPLETE_FINISH.get(str(reason), "length")
    else:
        finish = "tool_calls" if calls else "stop"
    created = response.get("created_at")
    body: JSON = {
        "id": response.get("id", ""),
        "object": "chat.completion",
        "created": int(created) if isinstance(created, int | float) else 0,
        "model": response.get("model", ""),
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
    }
    usage = chat_usage(response.get("usage"))
    if usage is not None:
        body["usage"] = usage
    return ChatAnswer(body, 200)
