"""The OpenAI Agents SDK runs an agent with a function tool through seamline's
Responses front, over a scripted chat-completions upstream."""

from __future__ import annotations

import json
from typing import Any

import pytest
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

from support.builders import DONE, chunk, chunk_object, event, sse_stream
from support.clients import client
from support.upstream import Upstream

CALLS: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    CALLS.append(city)
    return f"sunny in {city}"


def tool_call_stream() -> list[bytes]:
    call = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
    pieces = [call, {"index": 0, "function": {"arguments": '{"city":'}},
              {"index": 0, "function": {"arguments": '"Paris"}'}}]  # fmt: skip
    out = [event(json.dumps(chunk_object({"tool_calls": [tc]})).encode()) for tc in pieces]
    return [*out, event(chunk(finish="tool_calls")), DONE]


@pytest.fixture(autouse=True)
def _no_tracing_export() -> None:
    # The SDK would send its traces to OpenAI: nothing leaves loopback here.
    set_tracing_disabled(True)


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
async def test_an_agent_calls_its_tool_and_answers(
    upstream: Upstream, proxied: str, streamed: bool
) -> None:
    CALLS.clear()
    upstream.script(*tool_call_stream())
    upstream.script(*sse_stream("It is ", "sunny in Paris."))
    async with client(proxied) as openai_client:
        model = OpenAIResponsesModel(model="m", openai_client=openai_client)
        agent = Agent(name="weather", instructions="Answer briefly.", model=model,
                      tools=[get_weather])  # fmt: skip
        if streamed:
            run = Runner.run_streamed(agent, "Weather in Paris?")
            kinds = [event.type async for event in run.stream_events()]
            final: Any = run.final_output
            assert "raw_response_event" in kinds
        else:
            result = await Runner.run(agent, "Weather in Paris?")
            final = result.final_output
    assert final == "It is sunny in Paris."
    assert CALLS == ["Paris"]
    first, second = (json.loads(r["body"]) for r in upstream.requests)
    assert first["messages"][0] == {"role": "system", "content": "Answer briefly."}
    assert first["tools"][0]["function"]["name"] == "get_weather"
    # The second turn carries the call and its output, as chat messages.
    assistant = second["messages"][-2]
    assert assistant["tool_calls"][0]["id"] == "call_1"
    assert assistant["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'
    assert second["messages"][-1] == {
        "role": "tool", "tool_call_id": "call_1", "content": "sunny in Paris",
    }  # fmt: skip
