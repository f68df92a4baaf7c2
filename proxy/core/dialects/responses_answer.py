"""A non-streaming chat completion as one Responses ``response`` object."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.core.dialects.responses_common import JSON, IdFactory
from proxy.core.dialects.responses_request import ChatRequest
from proxy.core.dialects.responses_stream import ChatToResponses


def completion_to_response(
    request: ChatRequest,
    completion: Mapping[str, Any],
    *,
    response_id: str,
    created_at: float,
    ids: IdFactory,
) -> JSON:
    """The ``response`` for a ``chat.completion`` (a 200 answer; an error body is the
    gateway's to pass on as the error it is).

    The completion goes through the stream translator as the two chunks it would
    have been, so a streamed and a non-streamed answer are made of the same items.
    """
    choices = completion.get("choices") or []
    choice = next(
        (c for c in choices if isinstance(c, Mapping) and c.get("index") in (0, None)), {}
    )
    message = choice.get("message")
    message = message if isinstance(message, Mapping) else {}
    delta: JSON = {
        k: message[k]
        for k in ("reasoning_content", "reasoning", "content", "refusal")
        if message.get(k) is not None
    }
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        delta["tool_calls"] = [
            {**call, "index": n} for n, call in enumerate(calls) if isinstance(call, Mapping)
        ]
    translator = ChatToResponses(request, response_id=response_id, created_at=created_at, ids=ids)
    model = completion.get("model")
    head: JSON = {"model": model} if isinstance(model, str) else {}
    first = {"index": 0, "delta": delta, "logprobs": choice.get("logprobs"), "finish_reason": None}
    translator.feed({**head, "choices": [first]})
    # The JSON arrived whole, so its end is known even when an upstream leaves
    # finish_reason null: the answer stopped.
    finish = choice.get("finish_reason") or "stop"
    last: JSON = {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
    if isinstance(completion.get("usage"), Mapping):
        last["usage"] = completion["usage"]
    translator.feed(last)
    translator.end(clean=True)
    return translator.response()
