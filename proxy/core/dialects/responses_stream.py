"""Chat-completion chunks in, Responses stream events out.

A state machine with no I/O and no clock: :meth:`ChatToResponses.feed` takes one
parsed chunk, :meth:`~ChatToResponses.end` the upstream's end, :meth:`~ChatToResponses.fail`
its error; each returns the events to send, in order, numbered from 0.

The handshake (``response.created``, ``response.in_progress``) is seamline's own and
is made with the first upstream content or ending, never before; until
:attr:`~ChatToResponses.content_started` the gateway holds it back and may still try
another account. A truncated stream is never completed: an end before
any ``finish_reason``, a cut, or an error ends in ``error`` then ``response.failed``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from proxy.core.dialects.json_field import JsonField, final
from proxy.core.dialects.responses_common import (
    CUT,
    JSON,
    TRUNCATED,
    IdFactory,
    ToolRef,
    UpstreamFailure,
    response_object,
    responses_usage,
)
from proxy.core.dialects.responses_items import (
    Call,
    Message,
    Output,
    Reasoning,
    delta_text,
    logprob_entries,
)
from proxy.core.dialects.responses_request import ChatRequest
from proxy.core.dialects.responses_tools import CUSTOM_ARGUMENT
from proxy.core.dialects.sse_inputs import Done, inputs
from proxy.core.sse import Item

# finish_reason -> how the response ends. Anything else that names an ending (stop,
# tool_calls, function_call, eos, end_turn...) completes it.
_INCOMPLETE = {
    "length": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "max_output_tokens": "max_output_tokens",
    "model_length": "max_output_tokens",
    "content_filter": "content_filter",
    "sensitive": "content_filter",
    "safety": "content_filter",
}
_FAILED = frozenset({"error", "abort", "aborted", "cancelled", "canceled"})


class ChatToResponses:
    """One Responses stream made from one chat-completions stream.

    ``request`` is the translated request (its echo fields and tool names);
    ``response_id`` and ``ids`` make every id (the same seed on a retry gives the
    same ids); ``created_at`` is the gateway's clock, in Unix seconds (OpenAI sends
    an integer).
    """

    def __init__(
        self, request: ChatRequest, *, response_id: str, created_at: float, ids: IdFactory
    ) -> None:
        self._echo = request.echo
        self._names = request.tools
        self._response_id = response_id
        self._created_at = created_at
        self._ids = ids
        self._seq = 0
        self._out: list[JSON] = []
        self._items: list[Output] = []
        self._message: Message | None = None
        self._reasoning: Reasoning | None = None
        self._calls: list[Call] = []
        self._by_index: dict[int, Call] = {}
        self._finish: str | None = None
        self._usage: Any = None
        self._usage_final = False
        self._last: JSON | None = None  # the terminal event's response
        self._model: str | None = None
        self.committed = False  # the handshake was made (returned, maybe not yet written)
        self.done = False  # the terminal event was made
        self.status: str | None = None  # completed, incomplete or failed, once done
        self.failure: UpstreamFailure | None = None  # why, when failed

    @property
    def content_started(self) -> bool:
        """Whether upstream content reached the client's stream. Until it did, the
        gateway writes nothing: a stream that failed before it (an error first, a cut,
        an empty stream) may go to the next account, or be answered with
        ``failure.status``, and its events are dropped."""
        return bool(self._items)

    # --- what the gateway calls -------------------------------------------------------

    def feed(self, chunk: Mapping[str, Any]) -> list[JSON]:
        """One parsed ``chat.completion.chunk``; the events it makes."""
        if self.done:
            return []
        if chunk.get("error"):
            return self.fail(UpstreamFailure.from_object(chunk))
        if self._model is None and isinstance(chunk.get("model"), str) and chunk["model"]:
            self._model = chunk["model"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, Mapping) or choice.get("index") not in (0, None):
                continue  # a Responses answer has one choice
            if self._finish is not None:
                continue  # nothing may follow the end of the answer
            delta = choice.get("delta")
            if isinstance(delta, Mapping):
                self._delta(delta, choice.get("logprobs"))
            if choice.get("finish_reason") is not None:
                self._finished(str(choice["finish_reason"]))
                if self.done:
                    return self._flush()
        if isinstance(chunk.get("usage"), Mapping):
            self._usage = chunk["usage"]
            self._usage_final = self._finish is not None
        if self._finish is not None and self._usage_final:
            # The usage chunk follows the finish: the response is whole, and waits for
            # nothing more (a cut before [DONE] loses nothing).
            self._terminal()
        return self._flush()

    def feed_items(self, items: Iterable[Item]) -> list[JSON]:
        """Reframed upstream events (:class:`proxy.core.sse.Reframer`), as :meth:`feed`,
        :meth:`end` at ``[DONE]`` and :meth:`fail` at an error would take them."""
        out: list[JSON] = []
        for value in inputs(items):
            if isinstance(value, Done):
                out += self.end(clean=True)
            elif isinstance(value, UpstreamFailure):
                out += self.fail(value)
            else:
                out += self.feed(value)
        return out

    def end(self, clean: bool = True) -> list[JSON]:
        """The upstream stream ended: cleanly (``[DONE]`` or the body's end) or not (cut,
        reset, timed out). Only a clean end after a finish_reason completes."""
        if self.done:
            return []
        if clean and self._finish is not None:
            self._terminal()
            return self._flush()
        return self.fail(TRUNCATED if clean else CUT)

    def fail(self, failure: UpstreamFailure) -> list[JSON]:
        """The upstream failed: an ``error`` event, then ``response.failed``.

        Both, the terminal one last, because the clients read different ones:
        openai-python yields both (it raises only on a nested ``error`` object, which
        the SDK's ``ResponseErrorEvent`` has not) and its accumulator gives no final
        response; the Agents SDK raises on either; Codex takes its retry decision from
        ``response.failed``'s error and ignores ``error``. Open items are not closed,
        so no client runs half a tool call; the failed response lists them as
        incomplete."""
        self._fail(failure)
        return self._flush()

    def _fail(self, failure: UpstreamFailure) -> None:
        if self.done:
            return
        self._commit()
        self._emit("error", code=failure.code, message=failure.message, param=failure.param)
        for item in self._items:
            if item.open:
                item.status = "incomplete"
        self._last = self._response("failed", error=failure.response_error())
        self._emit("response.failed", response=self._last)
        self.done = True
        self.status = "failed"
        self.failure = failure

    def response(self) -> JSON:
        """The response as it stands: the terminal event's once :attr:`done`."""
        return self._last if self._last is not None else self._response("in_progress")

    # --- building events --------------------------------------------------------------

    def _emit(self, kind: str, **fields: Any) -> None:
        self._out.append({"type": kind, "sequence_number": self._seq, **fields})
        self._seq += 1

    def _flush(self) -> list[JSON]:
        out, self._out = self._out, []
        return out

    def _response(self, status: str, **fields: Any) -> JSON:
        return response_object(
            self._echo,
            response_id=self._response_id,
            created_at=self._created_at,
            status=status,
            output=[item.item() for item in self._items] if status != "in_progress" else [],
            usage=responses_usage(self._usage),
            model=self._model,
            **fields,
        )

    def _commit(self) -> None:
        if self.committed:
            return
        self.committed = True
        self._emit("response.created", response=self._response("in_progress"))
        self._emit("response.in_progress", response=self._response("in_progress"))

    def _added(self, item: Output) -> None:
        self._commit()
        item.index = len(self._items)
        self._items.append(item)
        self._emit("response.output_item.added", output_index=item.index, item=item.item())

    # --- the delta's parts ------------------------------------------------------------

    def _delta(self, delta: Mapping[str, Any], logprobs: Any) -> None:
        reasoning = delta.get("reasoning_content")
        if reasoning is None:
            reasoning = delta.get("reasoning")  # OpenRouter's and newer vLLM's spelling
        if text := delta_text(reasoning):
            self._reason(text)
        if text := delta_text(delta.get("content")):
            self._say("output_text", text, logprobs)
        if text := delta_text(delta.get("refusal")):
            self._say("refusal", text, None)
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, Mapping):
                self._tool(call)

    def _reason(self, text: str) -> None:
        self._close_message()
        rs = self._reasoning
        if rs is None:
            rs = self._reasoning = Reasoning(self._ids("rs"))
            self._added(rs)
            self._emit(
                "response.reasoning_summary_part.added", item_id=rs.id, output_index=rs.index,
                summary_index=0, part={"type": "summary_text", "text": ""},
            )  # fmt: skip
        rs.text.append(text)
        self._emit(
            "response.reasoning_summary_text.delta", item_id=rs.id, output_index=rs.index,
            summary_index=0, delta=text,
        )  # fmt: skip

    def _say(self, kind: str, text: str, logprobs: Any) -> None:
        self._close_reasoning()
        msg = self._message
        if msg is None:
            msg = self._message = Message(self._ids("msg"))
            self._added(msg)
        if kind not in msg.parts:
            msg.parts[kind] = (len(msg.parts), [])
            empty = {"type": "refusal", "refusal": ""} if kind == "refusal" else {
                "type": "output_text", "text": "", "annotations": [], "logprobs": []
            }  # fmt: skip
            self._emit(
                "response.content_part.added", item_id=msg.id, output_index=msg.index,
                content_index=msg.parts[kind][0], part=empty,
            )  # fmt: skip
        index, texts = msg.parts[kind]
        texts.append(text)
        if kind == "refusal":
            self._emit(
                "response.refusal.delta", item_id=msg.id, output_index=msg.index,
                content_index=index, delta=text,
            )  # fmt: skip
            return
        deltas, parts = logprob_entries(logprobs)
        msg.lp_deltas += deltas
        msg.lp_parts += parts
        self._emit(
            "response.output_text.delta", item_id=msg.id, output_index=msg.index,
            content_index=index, delta=text, logprobs=deltas,
        )  # fmt: skip

    def _slot(self, delta: Mapping[str, Any]) -> Call:
        """The call a tool-call delta belongs to: by its index; for upstreams that send
        none, or reuse one index for every call, a new id is a new call."""
        new_id = delta.get("id") if isinstance(delta.get("id"), str) and delta.get("id") else None
        index = delta.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            call = self._by_index.get(index)
        else:
            index = None
            call = self._calls[-1] if self._calls else None
        if call is None or (new_id and call.raw_id and new_id != call.raw_id):
            call = Call()
            self._calls.append(call)
            if index is not None:
                self._by_index[index] = call
        return call

    def _tool(self, delta: Mapping[str, Any]) -> None:
        self._close_reasoning()
        call = self._slot(delta)
        if call.raw_id is None and isinstance(delta.get("id"), str) and delta["id"]:
            call.raw_id = delta["id"]
            if call.index is None:
                call.call_id = delta["id"]
        fn = delta.get("function")
        fn = fn if isinstance(fn, Mapping) else {}
        if not call.name and isinstance(fn.get("name"), str):
            # The first name wins: some upstreams repeat it in every delta.
            call.name = fn["name"]
        args = fn.get("arguments")
        if isinstance(args, dict | list):
            args = json.dumps(args, ensure_ascii=False)  # some send an object, not text
        if isinstance(args, str):
            call.pending += args
        # Call id and name come before the first argument delta; an upstream that never
        # sends an id gets one made up when its arguments start.
        if call.index is None and call.name and (call.call_id or call.pending):
            self._open_call(call)
        if call.open and call.pending:
            self._call_delta(call)

    def _open_call(self, call: Call) -> None:
        # Text before the calls ends where they begin, as OpenAI's own streams order
        # their items; calls stay open together, for upstreams that interleave them.
        self._close_message()
        call.ref = self._names.get(call.name) or ToolRef("function", call.name)
        call.call_id = call.call_id or self._ids("call")
        call.id = self._ids("ctc" if call.custom else "fc")
        call.open = True
        if call.custom:
            call.field = JsonField(CUSTOM_ARGUMENT)
        self._added(call)

    def _call_delta(self, call: Call) -> None:
        piece, call.pending = call.pending, ""
        call.args.append(piece)
        if call.field is None:
            self._emit(
                "response.function_call_arguments.delta", item_id=call.id,
                output_index=call.index, delta=piece,
            )  # fmt: skip
        elif text := call.field.feed(piece):
            call.sent.append(text)
            self._emit(
                "response.custom_tool_call_input.delta", item_id=call.id,
                output_index=call.index, delta=text,
            )  # fmt: skip

    # --- closing ----------------------------------------------------------------------

    def _close_reasoning(self, status: str = "completed") -> None:
        rs = self._reasoning
        if rs is None:
            return
        self._reasoning = None
        text = "".join(rs.text)
        rs.open = False
        rs.status = status
        self._emit(
            "response.reasoning_summary_text.done", item_id=rs.id, output_index=rs.index,
            summary_index=0, text=text,
        )  # fmt: skip
        self._emit(
            "response.reasoning_summary_part.done", item_id=rs.id, output_index=rs.index,
            summary_index=0, part={"type": "summary_text", "text": text},
        )  # fmt: skip
        self._emit("response.output_item.done", output_index=rs.index, item=rs.item())

    def _close_message(self, status: str = "completed") -> None:
        msg = self._message
        if msg is None:
            return
        self._message = None
        for kind, (index, texts) in sorted(msg.parts.items(), key=lambda p: p[1][0]):
            text = "".join(texts)
            where = {"item_id": msg.id, "output_index": msg.index, "content_index": index}
            if kind == "refusal":
                self._emit("response.refusal.done", **where, refusal=text)
            else:
                self._emit("response.output_text.done", **where, text=text, logprobs=msg.lp_deltas)
            self._emit("response.content_part.done", **where, part=msg.part(kind))
        msg.open = False
        msg.status = status
        self._emit("response.output_item.done", output_index=msg.index, item=msg.item())

    def _close_call(self, call: Call, status: str) -> None:
        if not call.open:
            if call.index is not None or not (call.name or call.pending or call.raw_id):
                return
            self._open_call(call)  # a call whose name never came: still the model's
            if call.pending:
                self._call_delta(call)
        arguments = "".join(call.args)
        where = {"item_id": call.id, "output_index": call.index}
        if call.custom:
            text = final(arguments, CUSTOM_ARGUMENT)
            sent = "".join(call.sent)
            if len(text) > len(sent) and text.startswith(sent):
                self._emit(
                    "response.custom_tool_call_input.delta", **where, delta=text[len(sent) :]
                )
            self._emit("response.custom_tool_call_input.done", **where, input=text)
        else:
            self._emit("response.function_call_arguments.done", **where, arguments=arguments)
        call.open = False
        call.status = status
        self._emit("response.output_item.done", output_index=call.index, item=call.item())

    def _finished(self, reason: str) -> None:
        self._finish = reason
        if reason in _FAILED:
            self._fail(UpstreamFailure(f"upstream ended the answer with finish_reason {reason!r}"))
            return
        status = "incomplete" if reason in _INCOMPLETE else "completed"
        self._close_reasoning(status)
        self._close_message(status)
        for call in self._calls:
            self._close_call(call, status)

    def _terminal(self) -> None:
        if self.done or self._finish is None:
            return
        self._commit()
        reason = _INCOMPLETE.get(self._finish)
        if reason is None:
            self.status = "completed"
            self._last = self._response("completed")
        else:
            self.status = "incomplete"
            self._last = self._response("incomplete", incomplete_reason=reason)
        self._emit(f"response.{self.status}", response=self._last)
        self.done = True
