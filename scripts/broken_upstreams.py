"""The ways real providers break the OpenAI stream contract, as the bytes they send.

One definition for the two places that play them: the demo (scripts/demo.py) through the
bench's fake upstream (scripts/fake_upstream.py, its ``broken`` option), and the
end-to-end tests through their scripted upstream (``support.upstream.play``). It lives in
scripts/ because the scripts cannot import the tests while the tests can import scripts/
(pytest puts it on the path), and it imports nothing, seamline included, so that both
take it as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

WORDS = ("The ", "quick ", "brown ", "fox ", "jumps.")
ANSWER = "".join(WORDS)
READ = 7  # bytes a read: small, as real networks split a stream


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    """One chat.completion.chunk, spaced as json.dumps spaces it."""
    delta = {} if content is None else {"content": content}
    obj = {
        "id": "demo",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "demo",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return json.dumps(obj, ensure_ascii=False).encode()


def events(sep: bytes = b"\n\n", done: bool = True) -> bytes:
    """The whole answer as a well-formed stream, each event ended by ``sep``."""
    body = b"".join(b"data: " + chunk(w) + sep for w in WORDS)
    body += b"data: " + chunk(finish="stop") + sep
    return body + (b"data: [DONE]" + sep if done else b"")


def glued() -> bytes:
    """The answer with its first three events glued into one block."""
    lines = [b"data: " + chunk(w) for w in WORDS] + [b"data: " + chunk(finish="stop")]
    return b"\n".join(lines[:3]) + b"\n\n" + b"\n\n".join(lines[3:]) + b"\n\ndata: [DONE]\n\n"


def completion_json() -> bytes:
    """The answer as one chat.completion."""
    message = {"role": "assistant", "content": ANSWER}
    return json.dumps(
        {
            "id": "demo",
            "object": "chat.completion",
            "created": 0,
            "model": "demo",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }
    ).encode()


@dataclass(frozen=True, slots=True)
class Scenario:
    """One broken upstream: what it does, the bytes it answers a streamed request with,
    and the text a client reads through seamline (None: an explicit error, never a
    stream that passes for complete)."""

    name: str
    what: str
    body: bytes
    content_type: str = "text/event-stream"
    through: str | None = ANSWER

    def reads(self) -> list[bytes]:
        """The body in the small reads the upstream sends it in."""
        return [self.body[i : i + READ] for i in range(0, len(self.body), READ)]


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("bom", "a UTF-8 BOM before the first event", b"\xef\xbb\xbf" + events()),
        Scenario("glued", "two data: lines with no blank line between", glued()),
        Scenario("ping", "`event: ping` blocks with no data", b"event: ping\n\n" + events()),
        Scenario("keepalive", "empty `data:` keep-alives", b"data:\n\n" + events()),
        Scenario("retry", "a `retry:` block", b"retry: 3000\n\n" + events()),
        Scenario(
            "id-comment",
            "an `id:` then a comment block",
            b"id: 1\n" + events().replace(b"\n\n", b"\n\n: hi\n\n", 1),
        ),
        Scenario(
            "bad-utf8",
            "a byte that is not UTF-8",
            events().replace(b"fox", b"f\xffx", 1),
            through=ANSWER.replace("fox", "f\ufffdx"),
        ),
        Scenario(
            "json-body",
            "a JSON completion where a stream was asked",
            completion_json(),
            content_type="application/json",
        ),
        Scenario("no-done", "no [DONE] after the finish_reason", events(done=False)),
        Scenario(
            "truncated",
            "the stream stops mid-answer",
            b"".join(b"data: " + chunk(w) + b"\n\n" for w in WORDS[:2]),
            through=None,
        ),
    )
}
