"""What the tests send and script, built one way: chat chunks and streams, completions,
error bodies, seamline configs, and HTTP answers as the exact bytes on the wire."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from functools import cache
from typing import Any

# -- what a chat upstream answers -----------------------------------------------------


DONE = b"data: [DONE]\n\n"


def compact(obj: Any) -> bytes:
    """``obj`` as compact JSON bytes, non-ASCII left as UTF-8."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def event(payload: bytes) -> bytes:
    """One SSE event carrying ``payload``: its data line and the blank line."""
    return b"data: " + payload + b"\n\n"


def chunk_object(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    """One chat.completion.chunk with one choice; ``extra`` adds or replaces fields."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
        **extra,
    }


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> bytes:
    """One chat.completion.chunk carrying ``content``, as compact JSON bytes."""
    return compact(chunk_object({} if content is None else {"content": content}, finish, **extra))


def usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    """A chat usage object; the cached prompt tokens in its details when there are some."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def usage_chunk(prompt: int, completion: int) -> bytes:
    """The chunk after the finish that carries the usage (no choices)."""
    return chunk(choices=[], usage=usage(prompt, completion))


def repaired_quirks(chat_usage: dict[str, Any]) -> dict[str, list[bytes]]:
    """Upstream streams the chat route repairs, by name, each meaning "Hello" with
    ``chat_usage``: what every translating front must read as the chat route does."""
    payloads = [
        chunk("Hel"),
        chunk("lo"),
        chunk(finish="stop"),
        chunk(choices=[], usage=chat_usage),
    ]
    lf = b"".join(event(p) for p in payloads) + DONE
    return {
        "lf": [lf],
        "crlf": [lf.replace(b"\n", b"\r\n")],
        "cr_only": [lf.replace(b"\n", b"\r")],
        "bom": [b"\xef\xbb\xbf" + lf],
        "split_every_byte": [lf[i : i + 1] for i in range(len(lf))],
        # No blank line between events: one event of several data lines.
        "glued_events": [b"".join(b"data: " + p + b"\n" for p in payloads) + b"\n"],
        "no_done": [lf.removesuffix(DONE)],
        "no_space_after_colon": [lf.replace(b"data: ", b"data:")],
        "comments_and_pings": [b": keep-alive\n\nevent: ping\ndata: {}\n\n" + lf],
    }


def sse_stream(*contents: str, done: bool = True) -> list[bytes]:
    """A well-formed chat stream: one event per content piece, a finish, [DONE]."""
    out = [event(chunk(c)) for c in contents]
    out.append(event(chunk(finish="stop")))
    if done:
        out.append(DONE)
    return out


def sse_of(chunks: Iterable[Any], done: bool = True) -> bytes:
    """Chunk objects as a chat upstream writes them, then [DONE]."""
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return body + (DONE if done else b"")


def completion(text: str, prompt: int = 3, completion_tokens: int = 2) -> bytes:
    """A non-streamed chat.completion with usage."""
    obj = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": usage(prompt, completion_tokens),
    }
    return json.dumps(obj, separators=(",", ":")).encode()


def error_body(message: str, code: str | None = None) -> bytes:
    """An OpenAI error object, as an upstream refusing a request sends it."""
    err = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return json.dumps({"error": err}).encode()


# -- seamline's config ----------------------------------------------------------------

ADMIN_KEY = "admin-key-3f9a1c-secret"
FILL_FIRST = 'strategy = "fill_first"'


def key_of(name: str) -> str:
    """The API key of the account ``name``, as every builder here spells it."""
    return f"sk-test-{name}-secret"


def toml(**opts: Any) -> str:
    # JSON spells strings, numbers, booleans and arrays of strings the way TOML does.
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in opts.items())


def account(name: str, url: str, **opts: Any) -> str:
    """One ``[[accounts]]`` table: an API-key account at ``url``."""
    return "[[accounts]]\n" + toml(name=name, base_url=url, api_key=key_of(name), **opts)


def conf(
    *accounts: str, routing: str = "", timeouts: str = "", state: str = ":memory:", **server: Any
) -> str:
    """A config: ``[server]`` with port 0, the admin key, no drain grace and ``server``
    (an option given None is left out), these timeouts and routing, then the accounts."""
    defaults = {"port": 0, "admin_key": ADMIN_KEY, "drain_grace_s": 0}
    head = "[server]\n" + toml(**{k: v for k, v in {**defaults, **server}.items() if v is not None})
    head += f"[timeouts]\n{timeouts}\n[routing]\n{routing}\n[state]\npath = {json.dumps(state)}\n"
    return head + "".join(accounts)


def config_text(*accounts: tuple[str, str], extra: str = "", server: str = "") -> str:
    """A config: port 0 and ``server`` lines, memory state unless ``extra`` has its own,
    ``extra``, then an account per (name, url)."""
    text = f"[server]\nport = 0\n{server}\n"
    if "[state]" not in extra:
        text += '[state]\npath = ":memory:"\n'
    return text + f"{extra}\n" + "".join(account(name, url) for name, url in accounts)


def redis_config(url: str, accounts: str, routing: str = "round_robin") -> str:
    """A config sharing its state through the Redis at ``url``; the admin key is "adm"."""
    return f"""
[server]
port = 0
admin_key = "adm"
metrics_public = true
[routing]
strategy = "{routing}"
[state]
backend = "redis"
url = "{url}"
sync_s = 0.1
{accounts}
"""


# -- HTTP answers, as the bytes on the wire -------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
STALE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"  # what no one asked for


def chunks(*pieces: bytes) -> bytes:
    """``pieces`` in the chunked encoding, without the last chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)


def large(size: int) -> bytes:
    """An answer with a body of ``size`` bytes, by its length."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (size, b"x" * size)


@cache
def bomb() -> bytes:
    """64 MiB of zeros, gzipped (about 64 KiB)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    return b"".join(z.compress(block) for _ in range(64)) + z.flush()


def split(data: bytes, parts: int) -> list[bytes]:
    """``data`` cut into ``parts`` pieces of about one size."""
    size = -(-len(data) // parts)
    return [data[i : i + size] for i in range(0, len(data), size)]
