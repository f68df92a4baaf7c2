"""A Responses request as a chat-completions request: every field, every kind of tool,
and the errors that name the parameter they refuse."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import Response

from proxy.core.dialects.responses_common import RequestError, ToolRef, response_object
from proxy.core.dialects.responses_request import (
    IGNORED,
    ChatRequest,
    translate_request,
    without_reasoning,
)


def chat(**body: Any) -> dict[str, Any]:
    return translate(**body).body


def translate(history: list[dict[str, Any]] | None = None, **body: Any) -> ChatRequest:
    return translate_request({"model": "m", **body}, history or [])


def refused(**body: Any) -> RequestError:
    with pytest.raises(RequestError) as caught:
        translate(**body)
    return caught.value


def msg(role: str, *parts: Any) -> dict[str, Any]:
    content = [p if isinstance(p, dict) else {"type": "input_text", "text": p} for p in parts]
    return {"type": "message", "role": role, "content": content}


def said(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text}],
    }


def fc(call_id: str, name: str, args: str = "{}", **extra: Any) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": args, **extra}


def out(call_id: str, output: Any = "ok", kind: str = "function_call_output") -> dict[str, Any]:
    return {"type": kind, "call_id": call_id, "output": output}


def tool_call(call_id: str, name: str, args: str = "{}") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


# --- messages ----------------------------------------------------------------------------


def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    request = translate(instructions="Be brief.", input="Hello")
    assert request.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    assert request.input_items == (msg("user", "Hello"),)


def test_leading_system_and_developer_items_join_the_instructions() -> None:
    messages = chat(
        instructions="Rules.",
        input=[
            msg("developer", "Be safe."),
            msg("system", "Be kind."),
            msg("user", "Hi"),
            msg("developer", "Later."),
        ],
    )
    assert messages["messages"] == [
        {"role": "system", "content": "Rules.\n\nBe safe.\n\nBe kind."},
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Later."},
    ]


def test_user_parts_become_chat_parts_and_one_text_stays_a_string() -> None:
    image = {"type": "input_image", "image_url": "data:image/png;base64,AAA", "detail": "high"}
    file = {
        "type": "input_file",
        "file_data": "data:application/pdf;base64,BBB",
        "filename": "a.pdf",
    }
    audio = {"type": "input_audio", "input_audio": {"data": "CCC", "format": "wav"}}
    messages = chat(
        input=[msg("user", "Look", image, file, audio), {"role": "user", "content": "easy"}]
    )["messages"]
    assert messages[0]["content"] == [
        {"type": "text", "text": "Look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA", "detail": "high"}},
        {
            "type": "file",
            "file": {"file_data": "data:application/pdf;base64,BBB", "filename": "a.pdf"},
        },
        {"type": "input_audio", "input_audio": {"data": "CCC", "format": "wav"}},
    ]
    assert messages[1] == {"role": "user", "content": "easy"}


def test_an_assistant_turn_is_one_message_with_its_text_calls_and_reasoning() -> None:
    items = [
        msg("user", "Weather?"),
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "Need a tool."}],
        },
        said("Checking."),
        fc("call_1", "f", '{"city":"Oslo"}'),
        fc("call_2", "g"),
        out("call_1", "sunny"),
        out("call_2", [{"type": "input_text", "text": "cold"}]),
        said("Sunny and cold."),
    ]
    assert chat(input=items)["messages"] == [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "reasoning_content": "Need a tool.",
            "tool_calls": [tool_call("call_1", "f", '{"city":"Oslo"}'), tool_call("call_2", "g")],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "cold"},
        {"role": "assistant", "content": "Sunny and cold."},
    ]


def test_the_items_of_one_answer_are_one_assistant_message_in_their_order() -> None:
    # As seamline streams one chat answer: text, then calls, with reasoning between.
    items = [
        said("a"),
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "b"}]},
        fc("c1", "f"),
        said("c"),
        fc("c2", "g"),
        out("c1"),
        out("c2"),
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "lost"}]},
        msg("user", "next"),
    ]
    messages = chat(input=items)["messages"]
    assert messages[0] == {
        "role": "assistant",
        "content": "ac",
        "reasoning_content": "b",
        "tool_calls": [tool_call("c1", "f"), tool_call("c2", "g")],
    }
    # Reasoning of a turn that said nothing is dropped: nothing after depends on it.
    assert [m["role"] for m in messages[1:]] == ["tool", "tool", "user"]


def test_a_message_between_calls_and_their_results_waits_for_the_results() -> None:
    items = [fc("c1", "f"), msg("user", "hurry"), out("c1")]
    roles = [m["role"] for m in chat(input=items)["messages"]]
    assert roles == ["assistant", "tool", "user"]


def test_images_in_a_tool_result_follow_the_results_as_a_user_message() -> None:
    image = {"type": "input_image", "image_url": "https://x/y.png", "detail": "auto"}
    items = [
        fc("c1", "view_image"),
        fc("c2", "f"),
        out("c1", [{"type": "input_text", "text": "here"}, image]),
        out("c2"),
    ]
    messages = chat(input=items)["messages"]
    assert [m["role"] for m in messages] == ["assistant", "tool", "tool", "user"]
    assert messages[1]["content"] == "here"
    assert messages[3]["content"] == [
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "auto"}}
    ]


def test_custom_and_namespaced_calls_in_the_history_use_their_chat_names() -> None:
    tools = [
        {"type": "custom", "name": "apply_patch"},
        {
            "type": "namespace",
            "name": "mcp__gh",
            "description": "GitHub",
            "tools": [{"type": "function", "name": "_issues"}],
        },
    ]
    items = [
        {
            "type": "custom_tool_call",
            "call_id": "c1",
            "name": "apply_patch",
            "input": "*** Begin Patch",
        },
        out("c1", "done", "custom_tool_call_output"),
        fc("c2", "_issues", namespace="mcp__gh"),
        out("c2"),
    ]
    messages = chat(tools=tools, input=items)["messages"]
    assert messages[0]["tool_calls"] == [
        tool_call("c1", "apply_patch", json.dumps({"input": "*** Begin Patch"}))
    ]
    assert messages[1] == {"role": "tool", "tool_call_id": "c1", "content": "done"}
    assert messages[2]["tool_calls"] == [tool_call("c2", "mcp__gh_issues")]


def test_the_earlier_conversation_comes_before_the_input_and_its_instructions_do_not() -> None:
    history = [msg("user", "first"), said("one")]
    request = translate(
        history=history, instructions="Now.", input="second", previous_response_id="resp_1"
    )
    assert request.body["messages"] == [
        {"role": "system", "content": "Now."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "second"},
    ]
    assert request.input_items == (msg("user", "second"),)
    assert request.echo.previous_response_id == "resp_1"


def test_hosted_tool_records_are_left_out_of_the_history() -> None:
    items = [
        msg("user", "q"),
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
        said("a"),
    ]
    assert [m["role"] for m in chat(input=items)["messages"]] == ["user", "assistant"]


@pytest.mark.parametrize(
    ("item", "param"),
    [
        (
            {
                "type": "local_shell_call",
                "id": "x",
                "call_id": "c",
                "action": {},
                "status": "completed",
            },
            "input[0].type",
        ),
        ({"type": "item_reference", "id": "msg_1"}, "input[0].type"),
        ({"type": "message", "role": "critic", "content": "x"}, "input[0].role"),
        (
            msg("user", {"type": "input_image", "file_id": "file_1", "detail": "auto"}),
            "input[0].content[0].image_url",
        ),
        (
            msg("user", {"type": "input_file", "file_url": "https://x/a.pdf"}),
            "input[0].content[0].file_url",
        ),
        (
            msg("system", {"type": "input_image", "image_url": "https://x", "detail": "auto"}),
            "input[0].content",
        ),
        ({"type": "function_call", "name": "f", "arguments": "{}"}, "input[0].call_id"),
        ("not an item", "input[0]"),
    ],
)
def test_input_it_cannot_send_is_refused_by_its_place(item: Any, param: str) -> None:
    assert refused(input=[item]).param == param


# --- tools -------------------------------------------------------------------------------


def test_function_tools_are_nested_and_keep_strict_only_when_given() -> None:
    request = translate(
        tools=[
            {
                "type": "function",
                "name": "f",
                "description": "eff",
                "parameters": {"type": "object"},
                "strict": True,
            },
            {"type": "function", "name": "g"},
        ]
    )
    assert request.body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "f",
                "description": "eff",
                "parameters": {"type": "object"},
                "strict": True,
            },
        },
        {
            "type": "function",
            "function": {"name": "g", "parameters": {"type": "object", "properties": {}}},
        },
    ]
    assert request.tools == {"f": ToolRef("function", "f"), "g": ToolRef("function", "g")}


def test_a_namespace_is_flattened_and_mapped_back() -> None:
    request = translate(
        tools=[
            {
                "type": "namespace",
                "name": "crm",
                "description": "The CRM.",
                "tools": [
                    {"type": "function", "name": "find", "parameters": {"type": "object"}},
                    {"type": "custom", "name": "note", "description": "Write a note."},
                ],
            }
        ]
    )
    names = [t["function"]["name"] for t in request.body["tools"]]
    assert names == ["crm__find", "crm__note"]
    assert request.body["tools"][0]["function"]["description"] == "The CRM."
    assert request.tools["crm__find"] == ToolRef("function", "find", "crm")
    assert request.tools["crm__note"] == ToolRef("custom", "note", "crm")


def test_a_custom_tool_is_a_function_of_one_string_and_its_grammar_is_told() -> None:
    grammar = {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}
    request = translate(
        tools=[
            {
                "type": "custom",
                "name": "apply_patch",
                "description": "Patch files.",
                "format": grammar,
            }
        ]
    )
    fn = request.body["tools"][0]["function"]
    assert fn["parameters"]["required"] == ["input"]
    assert fn["parameters"]["properties"]["input"]["type"] == "string"
    assert fn["description"].startswith("Patch files.") and "start: /.+/" in fn["description"]
    assert request.tools["apply_patch"] == ToolRef("custom", "apply_patch")


def test_hosted_tools_are_left_out_and_listed() -> None:
    hosted = [
        "web_search",
        "web_search_preview",
        "file_search",
        "code_interpreter",
        "image_generation",
        "computer_use_preview",
        "mcp",
        "local_shell",
    ]
    request = translate(tools=[{"type": t} for t in hosted] + [{"type": "function", "name": "f"}])
    assert request.dropped_tools == tuple(hosted)
    assert [t["function"]["name"] for t in request.body["tools"]] == ["f"]
    assert "tools" not in translate(tools=[{"type": "web_search"}]).body


def test_names_a_chat_upstream_would_refuse_are_made_valid_and_distinct() -> None:
    long = "x" * 80
    request = translate(
        tools=[
            {"type": "function", "name": "a.b"},
            {"type": "function", "name": "a_b"},
            {"type": "function", "name": long},
        ]
    )
    names = [t["function"]["name"] for t in request.body["tools"]]
    assert names[:2] == ["a_b", "a_b_2"]
    assert len(names[2]) == 64 and names[2].startswith("x" * 55)
    assert request.tools["a_b"].name == "a.b" and request.tools["a_b_2"].name == "a_b"
    assert request.tools[names[2]].name == long


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("none", "none"),
        ("required", "required"),
        ({"type": "function", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
        (
            {"type": "custom", "name": "apply_patch"},
            {"type": "function", "function": {"name": "apply_patch"}},
        ),
        (
            {"type": "function", "name": "find"},
            {"type": "function", "function": {"name": "crm__find"}},
        ),
    ],
)
def test_tool_choice_names_the_chat_tool(choice: Any, expected: Any) -> None:
    tools = [
        {"type": "function", "name": "f"},
        {"type": "custom", "name": "apply_patch"},
        {
            "type": "namespace",
            "name": "crm",
            "description": "",
            "tools": [{"type": "function", "name": "find"}],
        },
    ]
    assert chat(tools=tools, tool_choice=choice)["tool_choice"] == expected


def test_auto_tool_choice_is_the_default_and_sent_as_none() -> None:
    assert "tool_choice" not in chat(tools=[{"type": "function", "name": "f"}], tool_choice="auto")


def test_allowed_tools_offers_only_those_tools() -> None:
    body = chat(
        tools=[
            {"type": "function", "name": "f"},
            {"type": "function", "name": "g"},
            {"type": "web_search"},
        ],
        tool_choice={
            "type": "allowed_tools",
            "mode": "required",
            "tools": [{"type": "function", "name": "g"}, {"type": "web_search"}],
        },
    )
    assert [t["function"]["name"] for t in body["tools"]] == ["g"]
    assert body["tool_choice"] == "required"


@pytest.mark.parametrize(
    "choice",
    [
        {"type": "web_search_preview"},
        {"type": "mcp", "server_label": "x"},
        {"type": "function", "name": "nope"},
        "required",
        {"type": "allowed_tools", "mode": "required", "tools": [{"type": "web_search"}]},
    ],
)
def test_a_tool_choice_that_depends_on_a_tool_it_cannot_offer_is_refused(choice: Any) -> None:
    error = refused(tools=[{"type": "web_search"}], tool_choice=choice)
    assert error.param is not None and error.param.startswith("tool_choice")
    assert error.status == 400


def test_parallel_tool_calls_goes_only_with_tools() -> None:
    assert (
        chat(tools=[{"type": "function", "name": "f"}], parallel_tool_calls=False)[
            "parallel_tool_calls"
        ]
        is False
    )
    assert "parallel_tool_calls" not in chat(parallel_tool_calls=False)


# --- parameters --------------------------------------------------------------------------


def test_sampling_limits_and_reasoning_go_under_their_chat_names() -> None:
    body = chat(
        input="x",
        max_output_tokens=100,
        temperature=0.3,
        top_p=0.8,
        stop=["END"],
        user="u",
        reasoning={"effort": "high", "summary": "auto"},
        metadata={"a": "b"},
    )
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "stream": False,
        "max_tokens": 100,
        "temperature": 0.3,
        "top_p": 0.8,
        "stop": ["END"],
        "user": "u",
        "reasoning_effort": "high",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ({"format": {"type": "text"}}, None),
        ({"format": {"type": "json_object"}}, {"type": "json_object"}),
        (
            {
                "format": {
                    "type": "json_schema",
                    "name": "out",
                    "schema": {"type": "object"},
                    "strict": True,
                }
            },
            {
                "type": "json_schema",
                "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
            },
        ),
    ],
)
def test_text_format_is_the_response_format(text: Any, expected: Any) -> None:
    assert chat(text=text).get("response_format") == expected


def test_verbosity_and_logprobs_are_asked_for() -> None:
    body = chat(text={"verbosity": "low"}, include=["message.output_text.logprobs"], top_logprobs=3)
    assert (body["verbosity"], body["logprobs"], body["top_logprobs"]) == ("low", True, 3)


def test_a_streaming_client_gets_a_stream_with_the_usage_chunk() -> None:
    assert chat(stream=True)["stream_options"] == {"include_usage": True}
    body = chat(stream=False)
    assert body["stream"] is False and "stream_options" not in body


def test_harmless_fields_are_accepted_and_listed_and_nulls_are_absent() -> None:
    request = translate(
        service_tier="flex",
        prompt_cache_key="k",
        include=["reasoning.encrypted_content"],
        client_metadata={"x": "y"},
        safety_identifier="s",
        temperature=None,
        truncation="auto",
    )
    assert set(request.ignored) == {
        "service_tier",
        "prompt_cache_key",
        "client_metadata",
        "safety_identifier",
    }
    assert set(request.ignored) <= IGNORED
    assert "temperature" not in request.body


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("conversation", "conv_1", "unsupported_parameter"),
        ("prompt", {"id": "pmpt_1"}, "unsupported_parameter"),
        ("background", True, "unsupported_parameter"),
        ("frequency_penalty", 1, "unknown_parameter"),
        ("text", {"format": {"type": "grammar"}}, "invalid_value"),
        ("tools", {"type": "function"}, "invalid_type"),
        ("input", 3, "invalid_type"),
    ],
)
def test_fields_that_would_change_the_answer_are_refused_by_name(
    field: str, value: Any, code: str
) -> None:
    error = refused(**{field: value})
    assert error.param is not None and error.param.startswith(field)
    assert error.code == code
    assert error.body() == {
        "error": {
            "message": error.message,
            "type": "invalid_request_error",
            "param": error.param,
            "code": code,
        }
    }
    assert json.loads(error.json_bytes()) == error.body()


def test_a_request_without_a_model_is_refused() -> None:
    with pytest.raises(RequestError) as caught:
        translate_request({"input": "x"})
    assert caught.value.param == "model"


# --- what clients send ---------------------------------------------------------------------


def test_a_codex_turn_translates_and_drops_only_web_search() -> None:
    body = {
        "model": "qwen3-coder",
        "instructions": "You are Codex.",
        "input": [
            msg("developer", "<permissions>"),
            msg("user", "<environment_context>"),
            msg("user", "fix it"),
        ],
        "tools": [
            {
                "type": "function",
                "name": "shell",
                "parameters": {"type": "object", "properties": {"command": {"type": "array"}}},
                "strict": False,
            },
            {
                "type": "custom",
                "name": "apply_patch",
                "description": "Use apply_patch.",
                "format": {"type": "grammar", "syntax": "lark", "definition": "start: begin_patch"},
            },
            {"type": "web_search"},
            {
                "type": "namespace",
                "name": "mcp__docs__",
                "description": "Docs.",
                "tools": [{"type": "function", "name": "search"}],
            },
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "thread-1",
        "text": {"verbosity": "medium"},
        "client_metadata": {"x-codex": "1"},
    }
    request = translate_request(body)
    assert request.dropped_tools == ("web_search",)
    assert [t["function"]["name"] for t in request.body["tools"]] == [
        "shell",
        "apply_patch",
        "mcp__docs__search",
    ]
    assert request.body["messages"][0] == {
        "role": "system",
        "content": "You are Codex.\n\n<permissions>",
    }
    assert request.body["stream_options"] == {"include_usage": True}
    assert request.echo.store is False


def test_the_echo_validates_as_the_sdks_response() -> None:
    request = translate(
        tools=[
            {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True},
            {"type": "custom", "name": "c"},
            {"type": "web_search"},
            {
                "type": "namespace",
                "name": "n",
                "description": "d",
                "tools": [{"type": "function", "name": "x"}],
            },
        ],
        tool_choice={"type": "function", "name": "f"},
        text={"format": {"type": "json_schema", "name": "o", "schema": {}}},
        reasoning={"effort": "low"},
        instructions="i",
        metadata={"k": "v"},
        top_logprobs=2,
        prompt_cache_key="p",
    )
    obj = response_object(
        request.echo, response_id="resp_1", created_at=1.5, status="in_progress", output=[]
    )
    response = Response.model_validate(obj)
    assert response.tool_choice.type == "function"  # type: ignore[union-attr]
    assert obj["prompt_cache_key"] == "p" and obj["store"] is True


def test_replayed_reasoning_can_be_left_out_for_upstreams_that_refuse_it() -> None:
    body = chat(
        input=[{"type": "reasoning", "summary": [{"type": "summary_text", "text": "t"}]}, said("a")]
    )
    assert body["messages"][0]["reasoning_content"] == "t"
    assert without_reasoning(body)["messages"][0] == {"role": "assistant", "content": "a"}
    assert body["messages"][0]["reasoning_content"] == "t"  # the original is untouched


def test_reasoning_after_the_last_message_of_a_turn_stays_with_that_turn() -> None:
    items = [
        said("a"),
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "after"}]},
        msg("user", "next"),
    ]
    messages = chat(input=items)["messages"]
    assert messages[0] == {"role": "assistant", "content": "a", "reasoning_content": "after"}
