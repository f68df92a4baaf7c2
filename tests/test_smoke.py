from __future__ import annotations

from support.builders import sse_stream
from support.clients import collect, text_of
from support.upstream import Upstream


async def test_plain_stream_reaches_openai_client(upstream: Upstream, proxied: str) -> None:
    upstream.script(*sse_stream("Hel", "lo"))
    chunks = await collect(proxied)
    assert text_of(chunks) == "Hello"
    assert chunks[-1].choices[0].finish_reason == "stop"
