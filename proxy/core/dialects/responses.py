"""The Responses API dialect (issue #16): what the gateway calls.

Serving ``/v1/responses`` from a chat-completions account::

    request = translate_request(body, history_items)  # RequestError: its 400 body
    # request.body goes upstream (aliases applied; without_reasoning() for upstreams
    # that refuse reasoning_content); request.dropped_tools go to the trace/header.
    translator = ChatToResponses(
        request, response_id=rid, created_at=now, ids=sequential_ids(seed)
    )
    events = translator.feed_items(reframer.feed(data))  # or .feed(chunk) per chunk
    events += translator.end(clean=True)  # at the body's end; end(clean=False) on a cut
    # Hold the events until translator.content_started: a stream that is done and
    # failed before it (translator.failure) may go to the next account (a new
    # translator, same rid and seed) or become the HTTP error failure.status names.
    write(encode_events(events))

    # not streaming:
    response = completion_to_response(request, completion, response_id=rid, ...)

Serving a chat client from a Responses account (``api = "responses"``)::

    native = chat_to_responses_request(body)  # RequestError: leave it to a chat account
    to_chat = ResponsesToChat(include_usage=native.include_usage)
    chunks = to_chat.feed_items(reframer.feed(data)); ...; chunks += to_chat.end(clean)
    write(chat_sse(chunks) + (DONE_EVENT if to_chat.done and not to_chat.failed else b""))
    answer = response_to_completion(response_object)  # not streaming

Passing a Responses stream through to a Responses client: :class:`EndingCheck`.
"""

from __future__ import annotations

from proxy.core.dialects.native_request import NativeRequest, chat_to_responses_request
from proxy.core.dialects.native_stream import (
    TERMINAL_EVENTS,
    ChatAnswer,
    EndingCheck,
    ResponsesToChat,
    chat_sse,
    ended_properly,
    response_to_completion,
)
from proxy.core.dialects.responses_answer import completion_to_response
from proxy.core.dialects.responses_common import (
    Echo,
    IdFactory,
    RequestError,
    ToolRef,
    UpstreamFailure,
    encode_event,
    encode_events,
    sequential_ids,
)
from proxy.core.dialects.responses_request import (
    HANDLED,
    IGNORED,
    REFUSED,
    ChatRequest,
    translate_request,
    without_reasoning,
)
from proxy.core.dialects.responses_stream import ChatToResponses

__all__ = [
    "HANDLED",
    "IGNORED",
    "REFUSED",
    "TERMINAL_EVENTS",
    "ChatAnswer",
    "ChatRequest",
    "ChatToResponses",
    "Echo",
    "EndingCheck",
    "IdFactory",
    "NativeRequest",
    "RequestError",
    "ResponsesToChat",
    "ToolRef",
    "UpstreamFailure",
    "chat_sse",
    "chat_to_responses_request",
    "completion_to_response",
    "encode_event",
    "encode_events",
    "ended_properly",
    "response_to_completion",
    "sequential_ids",
    "translate_request",
    "without_reasoning",
]
