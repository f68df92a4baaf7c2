"""Messages requests -> chat requests: every field, and what Claude Code really sends."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.core.dialects.anthropic_errors import AnthropicError
from proxy.core.dialects.anthropic_maps import chat_tool_name
from proxy.core.dialects.anthropic_request import (
    ChatTarget,
    ReasoningSwitch,
    clamp_effort,
    effort_for_budget,
    to_chat,
)
from support.claude_code import CLAUDE_CODE, LONG_MCP


def body(**fields: Any) -> dict[str, Any]:
    """A minimal Messages request with these fields."""
    request: dict[str, Any] = {
        "model": "claude-x",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    request.update(fields)
    return request


def chat(target: ChatTarget | None = None, **fields: Any) -> dict[str, Any]:
    return to_chat(body(**fields), target).body


def user(*blocks: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


# --- Claude Code -----------------------------------------------------------------------


def test_a_claude_code_request_becomes_the_chat_request_it_means() -> None:
    req = to_chat(CLAUDE_CODE)
    short = chat_tool_name(LONG_MCP)
    assert len(short) == 64
    assert req.body == {
        "model": "claude-sonnet-4-5-20250929",
        "messages": [
            {
                "role": "system",
                "content": "You are Claude Code, Anthropic's official CLI for Claude.\nBe concise.",
            },
            {
                "role": "user",
                "content": "<system-reminder>todo list empty</system-reminder>\nfix the bug",
            },
            {
                "role": "assistant",
                "content": "I'll read it.",
                "tool_calls": [
                    {
                        "id": "toolu_01",
                        "type": "function",
                        "function": {"name": "Read", "arguments": '{"file_path": "/a.py"}'},
                    },
                    {
                        "id": "toolu_02",
                        "type": "function",
                        "function": {"name": short, "arguments": "{}"},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_01", "content": "1\tprint()"},
            {
                "role": "tool",
                "tool_call_id": "toolu_02",
                "content": "Error: <tool_use_error>denied</tool_use_error>",
            },
            {"role": "user", "content": "<system-reminder>file changed</system-reminder>"},
            {"role": "system", "content": "<total_tokens>5000000 tokens left</total_tokens>"},
        ],
        "max_tokens": 32000,
        "temperature": 1,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "Read",
                    "parameters": CLAUDE_CODE["tools"][0]["input_schema"],
                    "description": "Reads a file",
                },
            },
            {
                "type": "function",
                "function": {"name": short, "parameters": {"type": "object"}, "description": "MCP"},
            },
        ],
        "reasoning_effort": "medium",
        "user": "user_abc_account_def_session_ghi",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert req.stream is True
    assert req.model == "claude-sonnet-4-5-20250929"
    assert req.tool_names == {short: LONG_MCP}
    assert set(req.dropped) == {
        "billing header system block",
        "field context_management",
        "server tool web_search_20250305",
        "thinking block",
    }


def test_the_billing_header_is_dropped_so_the_prompt_prefix_stays_the_same() -> None:
    first, second = (
        to_chat(
            {**CLAUDE_CODE, "system": [{"type": "text", "text": h}, *CLAUDE_CODE["system"][1:]]}
        )
        for h in ("x-anthropic-billing-header: cch=aaaa;", "x-anthropic-billing-header: cch=bbbb;")
    )
    assert first.body == second.body


def test_system_role_messages_stay_where_they_are_or_become_user_messages() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "system", "content": [{"type": "text", "text": "reminder"}]},
        {"role": "assistant", "content": "b"},
    ]
    assert chat(messages=messages)["messages"][1] == {"role": "system", "content": "reminder"}
    target = ChatTarget(system_role="user")
    assert chat(target, messages=messages)["messages"][1] == {"role": "user", "content": "reminder"}


def test_cache_markers_survive_for_accounts_that_take_them() -> None:
    req = to_chat(CLAUDE_CODE, ChatTarget(cache_control=True))
    system, first = req.body["messages"][:2]
    ephemeral = {"type": "ephemeral"}
    assert system["content"] == [
        {"type": "text", "text": CLAUDE_CODE["system"][1]["text"], "cache_control": ephemeral},
        {"type": "text", "text": "Be concise.", "cache_control": ephemeral},
    ]
    assert first["content"][1] == {
        "type": "text",
        "text": "fix the bug",
        "cache_control": ephemeral,
    }


# --- system and content ---------------------------------------------------------------


def test_system_as_a_string() -> None:
    assert chat(system="Be brief.")["messages"][0] == {"role": "system", "content": "Be brief."}
    assert chat(system="")["messages"][0]["role"] == "user"


def test_images_by_base64_and_by_url() -> None:
    messages = user(
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
        {"type": "text", "text": "what are these?"},
    )
    req = to_chat(body(messages=messages))
    assert req.body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "text", "text": "what are these?"},
            ],
        }
    ]
    assert "image of source file" in req.dropped


def test_documents_as_text_and_as_pdf_files() -> None:
    messages = user(
        {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
        },
        {
            "type": "document",
            "title": "spec.pdf",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
        },
    )
    assert chat(messages=messages)["messages"][0]["content"] == [
        {"type": "text", "text": "notes"},
        {
            "type": "file",
            "file": {"filename": "spec.pdf", "file_data": "data:application/pdf;base64,JVBE"},
        },
    ]


def test_tool_results_become_tool_messages_then_the_user_message_in_order() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "t1", "name": "a", "input": {}},
                {"type": "tool_use", "id": "t2", "name": "b", "input": {"x": [1]}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "first"},
                {"type": "tool_result", "tool_use_id": "t1", "content": "one"},
                {
                    "type": "tool_result",
                    "tool_use_id": "t2",
                    "content": [
                        {"type": "text", "text": "two"},
                        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                        {"type": "text", "text": "three"},
                    ],
                },
                {"type": "text", "text": "then"},
            ],
        },
    ]
    out = chat(messages=messages)["messages"]
    assert out[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
            {"id": "t2", "type": "function", "function": {"name": "b", "arguments": '{"x": [1]}'}},
        ],
    }
    assert out[2:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "one"},
        {"role": "tool", "tool_call_id": "t2", "content": "two\nthree"},
        # Chat tool messages hold text: a result's images follow in the user message.
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                {"type": "text", "text": "first"},
                {"type": "text", "text": "then"},
            ],
        },
    ]


def test_tool_result_errors_and_empty_results() -> None:
    messages = user(
        {"type": "tool_result", "tool_use_id": "t1", "is_error": True},
        {"type": "tool_result", "tool_use_id": "t2", "content": []},
    )
    assert chat(messages=messages)["messages"] == [
        {"role": "tool", "tool_call_id": "t1", "content": "Error"},
        {"role": "tool", "tool_call_id": "t2", "content": ""},
    ]


def test_assistant_thinking_goes_back_only_to_accounts_that_want_it() -> None:
    messages = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "redacted_thinking", "data": "xyz"},
                {"type": "text", "text": "a"},
            ],
        },
    ]
    assert chat(messages=messages)["messages"][1] == {"role": "assistant", "content": "a"}
    replayed = chat(ChatTarget(replay_reasoning=True), messages=messages)["messages"][1]
    assert replayed == {"role": "assistant", "content": "a", "reasoning_content": "hmm"}


def test_server_tool_blocks_in_history_are_dropped() -> None:
    messages = [
        {"role": "user", "content": "search"},
        {
            "role": "assistant",
            "content": [
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
                {"type": "text", "text": "found it"},
            ],
        },
    ]
    req = to_chat(body(messages=messages))
    assert req.body["messages"][1] == {"role": "assistant", "content": "found it"}
    assert {"server_tool_use block", "web_search_tool_result block"} <= set(req.dropped)


def test_a_single_block_sent_without_its_list() -> None:
    messages = [{"role": "user", "content": {"type": "text", "text": "alone"}}]
    assert chat(messages=messages)["messages"] == [{"role": "user", "content": "alone"}]


# --- tools and tool choice -----------------------------------------------------------


TOOL = {"name": "f", "description": "does f", "input_schema": {"type": "object", "properties": {}}}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    out = chat(tools=[TOOL], tool_choice=choice)
    assert out["tool_choice"] == expected
    assert "parallel_tool_calls" not in out


def test_disable_parallel_tool_use_is_parallel_tool_calls_false() -> None:
    out = chat(tools=[TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert out["parallel_tool_calls"] is False


def test_a_tool_without_a_schema_takes_an_empty_object() -> None:
    out = chat(tools=[{"name": "ping"}])
    assert out["tools"] == [
        {
            "type": "function",
            "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}},
        }
    ]


def test_tool_choice_without_tools_is_left_out() -> None:
    out = chat(tools=[{"type": "bash_20250124", "name": "bash"}], tool_choice={"type": "any"})
    assert "tools" not in out and "tool_choice" not in out


def test_tool_choice_naming_a_server_tool_is_refused() -> None:
    tools = [TOOL, {"type": "web_search_20250305", "name": "web_search"}]
    with pytest.raises(AnthropicError) as info:
        to_chat(body(tools=tools, tool_choice={"type": "tool", "name": "web_search"}))
    assert info.value.status == 400
    assert "web_search" in info.value.message


def test_tool_choice_naming_no_tool_is_refused() -> None:
    with pytest.raises(AnthropicError):
        to_chat(body(tools=[TOOL], tool_choice={"type": "tool", "name": "g"}))


def test_long_tool_names_are_shortened_the_same_way_everywhere() -> None:
    other = LONG_MCP + "_2"
    tools = [{"name": LONG_MCP}, {"name": other}]
    req = to_chat(body(tools=tools, tool_choice={"type": "tool", "name": other}))
    names = [t["function"]["name"] for t in req.body["tools"]]
    assert all(len(n) <= 64 for n in names) and names[0] != names[1]
    assert req.body["tool_choice"]["function"]["name"] == names[1]
    assert req.tool_names == {names[0]: LONG_MCP, names[1]: other}
    assert to_chat(body(tools=tools)).body["tools"] == req.body["tools"]


# --- sampling, stops, user, stream -----------------------------------------------------


def test_sampling_fields_and_top_k_where_the_account_takes_it() -> None:
    fields = {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop_sequences": ["END", "\n\nHuman:"],
    }
    req = to_chat(body(**fields))
    assert req.body["temperature"] == 0.2 and req.body["top_p"] == 0.9
    assert "top_k" not in req.body and "top_k" in req.dropped
    assert req.body["stop"] == ["END", "\n\nHuman:"]
    assert req.stop_sequences == ("END", "\n\nHuman:")
    assert to_chat(body(**fields), ChatTarget(top_k=True)).body["top_k"] == 40


def test_a_request_without_stream_asks_for_none() -> None:
    out = chat(stream=False)
    assert "stream" not in out and "stream_options" not in out


def test_metadata_user_id_is_user() -> None:
    assert chat(metadata={"user_id": "u-1"})["user"] == "u-1"
    assert "user" not in chat(metadata={})


def test_unknown_fields_are_ignored_and_named() -> None:
    req = to_chat(body(service_tier="auto", container="c", mcp_servers=[], brand_new=1))
    assert set(req.body) == {"model", "messages", "max_tokens"}
    assert {"field service_tier", "field container", "field mcp_servers", "field brand_new"} <= set(
        req.dropped
    )


def test_structured_output_is_a_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    expected = {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
    assert (
        chat(output_config={"format": {"type": "json_schema", "schema": schema}})["response_format"]
        == expected
    )
    assert (
        chat(output_format={"type": "json_schema", "schema": schema})["response_format"] == expected
    )


# --- thinking ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "effort"),
    # Claude Code's "think" (4,000), "think hard" (10,000) and "ultrathink" (31,999).
    [
        (1024, "low"),
        (4000, "low"),
        (4096, "medium"),
        (10000, "medium"),
        (16384, "high"),
        (31999, "high"),
    ],
)
def test_thinking_budgets_map_to_efforts(budget: int, effort: str) -> None:
    assert effort_for_budget(budget) == effort
    assert chat(thinking={"type": "enabled", "budget_tokens": budget})["reasoning_effort"] == effort


def test_adaptive_thinking_takes_the_effort_or_anthropics_default() -> None:
    assert chat(thinking={"type": "adaptive"})["reasoning_effort"] == "high"
    adaptive = {"type": "adaptive"}
    assert chat(thinking=adaptive, output_config={"effort": "low"})["reasoning_effort"] == "low"
    # An effort alone still says how hard to work.
    assert chat(output_config={"effort": "medium"})["reasoning_effort"] == "medium"


def test_disabled_thinking_asks_for_no_reasoning() -> None:
    disabled = {"type": "disabled"}
    assert "reasoning_effort" not in chat(thinking=disabled, output_config={"effort": "high"})
    assert "reasoning_effort" not in chat()


def test_efforts_beyond_the_accounts_are_lowered_to_its_highest() -> None:
    assert chat(output_config={"effort": "max"})["reasoning_effort"] == "high"
    target = ChatTarget(efforts=("low", "medium", "high", "xhigh"))
    assert chat(target, output_config={"effort": "xhigh"})["reasoning_effort"] == "xhigh"
    assert clamp_effort("minimal", ("low", "high")) == "low"
    assert clamp_effort("high", ()) is None


def test_an_accounts_reasoning_switch_replaces_reasoning_effort() -> None:
    vllm = ReasoningSwitch(
        on={"chat_template_kwargs": {"enable_thinking": True}},
        off={"chat_template_kwargs": {"enable_thinking": False}},
    )
    out = chat(ChatTarget(reasoning=vllm), thinking={"type": "enabled", "budget_tokens": 2048})
    assert out["chat_template_kwargs"] == {"enable_thinking": True}
    assert "reasoning_effort" not in out
    off = chat(ChatTarget(reasoning=vllm), thinking={"type": "disabled"})
    assert off["chat_template_kwargs"] == {"enable_thinking": False}
    assert "chat_template_kwargs" not in chat(ChatTarget(reasoning=vllm))


def test_a_switch_with_a_budget_field_gets_the_budget() -> None:
    dashscope = ReasoningSwitch(
        on={"enable_thinking": True}, off={"enable_thinking": False}, budget_field="thinking_budget"
    )
    target = ChatTarget(reasoning=dashscope)
    out = chat(target, thinking={"type": "enabled", "budget_tokens": 5000})
    assert (out["enable_thinking"], out["thinking_budget"]) == (True, 5000)
    adaptive = chat(target, thinking={"type": "adaptive"}, output_config={"effort": "medium"})
    assert effort_for_budget(adaptive["thinking_budget"]) == "medium"


# --- refusals, in Anthropic's format ------------------------------------------------------


@pytest.mark.parametrize(
    "request_body",
    [
        [],
        {"messages": [{"role": "user", "content": "hi"}]},
        {"model": "m"},
        body(messages=[]),
        body(messages=[{"role": "tool", "content": "x"}]),
        body(messages=[{"role": "user", "content": 5}]),
        body(max_tokens="many"),
        body(max_tokens=0),
        body(temperature="hot"),
        body(stop_sequences="END"),
        body(tools={"name": "f"}),
        body(tools=[{"description": "no name"}]),
        body(tool_choice="auto"),
        body(tool_choice={"type": "sometimes"}),
        body(thinking={"type": "enabled", "budget_tokens": -1}),
        body(messages=user({"type": "tool_result", "content": "no id"})),
        body(messages=[{"role": "assistant", "content": [{"type": "tool_use", "name": "f"}]}]),
        body(system=5),
    ],
)
def test_malformed_requests_are_refused_as_anthropic_would(request_body: Any) -> None:
    with pytest.raises(AnthropicError) as info:
        to_chat(request_body)
    err = info.value
    assert err.status == 400
    assert json.loads(err.json_bytes()) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": err.message},
    }


def test_no_messages_is_refused_even_with_a_system_prompt() -> None:
    with pytest.raises(AnthropicError):
        to_chat(body(system="s", messages=[]))
