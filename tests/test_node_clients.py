"""openai-node and @anthropic-ai/sdk, the real Node clients, against seamline's
Responses front, chat route and Messages front over a scripted chat-completions
upstream."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from support.builders import DONE, chunk, event, usage_chunk
from support.upstream import Upstream

NODE_DIR = Path(__file__).parent / "node"
# CI sets this, so that a missing Node fails instead of skipping.
REQUIRE = "SEAMLINE_REQUIRE_NODE"


@pytest.fixture(scope="session")
def node() -> str:
    binary = shutil.which("node")
    npm = shutil.which("npm")
    if binary is None or npm is None:
        reason = "Node.js and npm are not installed (apt-get install nodejs npm)"
        if os.environ.get(REQUIRE):
            pytest.fail(f"{reason}, and {REQUIRE} is set")
        pytest.skip(reason)
    modules = NODE_DIR / "node_modules"
    if not (modules / "openai").is_dir() or not (modules / "@anthropic-ai" / "sdk").is_dir():
        # The versions package-lock.json names, from the npm registry.
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR, check=True)
    return binary


async def run(node: str, scenario: str, base_url: str) -> Any:
    proc = await asyncio.create_subprocess_exec(
        node, str(NODE_DIR / "clients.mjs"), scenario, base_url,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


def answer(*words: str) -> list[bytes]:
    """A chat stream of ``words`` with its usage chunk (5 prompt tokens, 2 completion)."""
    out = [event(chunk(w)) for w in words]
    return [*out, event(chunk(finish="stop")), event(usage_chunk(5, 2)), DONE]


async def test_a_responses_stream(node: str, upstream: Upstream, proxied: str) -> None:
    # CRLF line ends, split reads: what the chat route repairs, repaired here too.
    wire = b"".join(answer("Hel", "lo")).replace(b"\n", b"\r\n")
    upstream.script(*[wire[i : i + 11] for i in range(0, len(wire), 11)], pause=0)
    got = (await run(node, "responsesStream", proxied))["ok"]
    assert got["types"][:2] == ["response.created", "response.in_progress"]
    assert got["types"][-1] == "response.completed"
    assert got["text"] == "Hello"
    assert got["status"] == "completed"
    assert got["usage"]["input_tokens"] == 5 and got["usage"]["output_tokens"] == 2


async def test_the_stream_helper(node: str, upstream: Upstream, proxied: str) -> None:
    upstream.script(*answer("a", "b"))
    got = (await run(node, "responsesHelper", proxied))["ok"]
    assert got == {"deltas": ["a", "b"], "output_text": "ab", "status": "completed"}


async def test_a_whole_response(node: str, upstream: Upstream, proxied: str) -> None:
    upstream.script(*answer("whole"))
    got = (await run(node, "responsesWhole", proxied))["ok"]
    assert got["output_text"] == "whole" and got["status"] == "completed"
    assert got["id"].startswith("resp_")


async def test_a_cut_stream_is_no_completion(node: str, upstream: Upstream, proxied: str) -> None:
    upstream.script(event(chunk("cut ")), ending="reset")
    got = (await run(node, "responsesStream", proxied))["ok"]
    assert "response.completed" not in got["types"]
    assert got["status"] == "failed"
    assert got["text"] == "cut "


async def test_a_chat_stream(node: str, upstream: Upstream, proxied: str) -> None:
    upstream.script(*answer("from ", "node"))
    assert (await run(node, "chatStream", proxied))["ok"] == {"text": "from node"}


async def test_a_messages_stream(node: str, upstream: Upstream, proxied: str) -> None:
    upstream.script(*answer("Hi ", "from ", "claude"))
    got = (await run(node, "messagesStream", proxied))["ok"]
    assert got["types"][0] == "message_start" and got["types"][-1] == "message_stop"
    assert got["text"] == "Hi from claude"
    assert got["stop_reason"] == "end_turn"
    assert got["usage"]["output_tokens"] == 2


async def test_a_cut_messages_stream_is_an_error(
    node: str, upstream: Upstream, proxied: str
) -> None:
    upstream.script(b"data: " + chunk("cut") + b"\n\n", ending="reset")
    got = await run(node, "messagesStream", proxied)
    assert "ok" not in got
    assert got["error"]["type"] == "api_error" or "api_error" in got["error"]["message"]


async def test_a_whole_message(node: str, upstream: Upstream, proxied: str) -> None:
    upstream.script(*answer("whole"))
    got = (await run(node, "messagesWhole", proxied))["ok"]
    assert got == {"text": "whole", "stop_reason": "end_turn"}
