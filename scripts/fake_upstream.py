"""A fast local fake OpenAI-compatible upstream, for the bench and the demo.

Raw asyncio protocols, no framework: one ``transport.write`` per event, pre-encoded
bytes, HTTP/1.1 keep-alive and chunked transfer encoding. Each content event carries
``"<seq> <send time>"`` as its content, the send time in ``time.monotonic_ns()``
(CLOCK_MONOTONIC on Linux, one clock for every process on the machine), so a client
can compute per-event latency and check that nothing was lost or reordered.

What a stream does is decided by the request body's ``bench`` object:

``n``            content events (default 5)
``interval_ms``  gap between events; 0 = as fast as the client reads (flow-controlled)
``hold``         a group name: send the first event, then wait for
                 ``POST /bench/release`` with ``{"group": ...}`` before the rest, which
                 then start spread evenly over one interval
``broken``       a scenario of scripts/broken_upstreams.py (the demo's): answer with its
                 bytes instead, in its small reads, whatever else the request asks

After the content events: a ``finish_reason`` chunk, a usage chunk when the request
asked for ``stream_options.include_usage``, and ``data: [DONE]``. A request without
``"stream": true`` gets one ``chat.completion`` JSON body. ``GET /v1/models`` lists
one model.

Run alone: ``python scripts/fake_upstream.py --port 9000``; it prints
``listening <port>`` on stdout once ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import time
from typing import Any, cast

from broken_upstreams import SCENARIOS, Scenario

CHUNK_ID = b'"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000'
_PREFIX = b"data: {" + CHUNK_ID + b',"model":"bench","choices":[{"index":0,"delta":{"content":"'
_SUFFIX = b'"},"logprobs":null,"finish_reason":null}]}\n\n'
_FIXED = len(_PREFIX) + len(_SUFFIX)
_FINISH = (
    b"data: {" + CHUNK_ID + b',"model":"bench","choices":[{"index":0,"delta":{},'
    b'"logprobs":null,"finish_reason":"stop"}]}\n\n'
)
_USAGE = (
    b"data: {" + CHUNK_ID + b',"model":"bench","choices":[],'
    b'"usage":{"prompt_tokens":1,"completion_tokens":%d,"total_tokens":%d}}\n\n'
)
_DONE = b"data: [DONE]\n\n"
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
)
_MAX_HEAD = 64 * 1024


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def event(seq: int, now_ns: int) -> bytes:
    """One content event, framed as one chunk."""
    mid = b"%d %d" % (seq, now_ns)
    return b"%x\r\n%b%b%b\r\n" % (_FIXED + len(mid), _PREFIX, mid, _SUFFIX)


def ending(n: int, usage: bool) -> bytes:
    """The finish chunk, the usage chunk when asked, [DONE], and the last chunk."""
    body = _FINISH + (_USAGE % (n, n + 1) if usage else b"") + _DONE
    return chunk(body) + b"0\r\n\r\n"


def _response(status: str, ctype: str, body: bytes, close: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode() + body


def _completion(n: int) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(map(str, range(n)))},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1},
        }
    ).encode()


_MODELS = json.dumps(
    {"object": "list", "data": [{"id": "bench", "object": "model", "owned_by": "bench"}]}
).encode()


class Holds:
    """Streams waiting for their group's release."""

    def __init__(self) -> None:
        self.groups: dict[str, list[Stream]] = {}

    def add(self, group: str, stream: Stream) -> None:
        self.groups.setdefault(group, []).append(stream)

    def release(self, group: str) -> int:
        streams = [s for s in self.groups.pop(group, []) if not s.closed]
        count = len(streams)
        for i, s in enumerate(streams):
            # Spread the starts over one interval, so 8,000 streams do not all write
            # in the same millisecond.
            s.start(i / count if count else 0.0)
        return count


class Stream:
    """One streamed answer on one connection."""

    __slots__ = ("closed", "conn", "handle", "i", "interval", "loop", "n", "next_due", "usage")

    def __init__(self, conn: Upstream, n: int, interval_s: float, usage: bool) -> None:
        self.conn = conn
        self.loop = conn.loop
        self.n = n
        self.interval = interval_s
        self.usage = usage
        self.i = 1  # event 0 went out with the headers
        self.handle: asyncio.TimerHandle | None = None
        self.closed = False
        self.next_due = 0.0

    def start(self, phase: float = 0.0) -> None:
        """Send the events after the first: on a schedule, or as fast as possible."""
        if self.interval > 0:
            self.next_due = self.loop.time() + phase * self.interval
            self.handle = self.loop.call_at(self.next_due, self._tick)
        else:
            self.pump()

    def _tick(self) -> None:
        # One event per timer, on an absolute schedule: a late loop catches up without
        # merging events into one write.
        self.handle = None
        if self.closed:
            return
        transport = self.conn.transport
        assert transport is not None
        i = self.i
        if i < self.n:
            transport.write(event(i, time.monotonic_ns()))
            self.i = i + 1
        if self.i >= self.n:
            self._end()
            return
        self.next_due += self.interval
        self.handle = self.loop.call_at(self.next_due, self._tick)

    def pump(self) -> None:
        """Write as fast as the client reads: until the transport asks for a pause."""
        transport = self.conn.transport
        assert transport is not None
        conn = self.conn
        i, n = self.i, self.n
        clock = time.monotonic_ns
        write = transport.write
        while i < n and not conn.paused and not self.closed:
            write(event(i, clock()))
            i += 1
        self.i = i
        if i >= n and not self.closed:
            self._end()

    def _end(self) -> None:
        self.closed = True
        self.conn.finished(ending(self.n, self.usage))

    def cancel(self) -> None:
        self.closed = True
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class Upstream(asyncio.Protocol):
    """One client connection: parses requests one at a time and answers them."""

    def __init__(self, holds: Holds) -> None:
        self.holds = holds
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.stream: Stream | None = None
        self.paused = False
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self.stream.cancel()
            self.stream = None
        self.transport = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        stream = self.stream
        if stream is not None and stream.interval <= 0 and not stream.closed:
            stream.pump()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.stream is None:
            self._next_request()

    def finished(self, tail: bytes) -> None:
        """The stream's last bytes: send them and serve the next request, if any."""
        self.stream = None
        if self.transport is None:
            return
        self.transport.write(tail)
        if self.close_after:
            self.transport.close()
        elif self.buf:
            self._next_request()

    def _next_request(self) -> None:
        transport = self.transport
        while transport is not None and self.stream is None and not transport.is_closing():
            buf = self.buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self._reply("431 Request Header Fields Too Large", b"{}", close=True)
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                self._reply("400 Bad Request", b"{}", close=True)
                return
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._reply("411 Length Required", b"{}", close=True)
                return
            length = int(headers.get("content-length", "0") or 0)
            if len(buf) < end + 4 + length:
                return
            body = bytes(buf[end + 4 : end + 4 + length])
            del buf[: end + 4 + length]
            conn_hdr = headers.get("connection", "").lower()
            self.close_after = conn_hdr == "close" or (
                version == "HTTP/1.0" and conn_hdr != "keep-alive"
            )
            self._handle(method, target.split("?", 1)[0], body)

    def _reply(self, status: str, body: bytes, close: bool = False, ctype: str = "") -> None:
        assert self.transport is not None
        close = close or self.close_after
        self.transport.write(_response(status, ctype or "application/json", body, close))
        if close:
            self.transport.close()

    def _play(self, scenario: Scenario) -> None:
        # One write a read (asyncio sends each at once, TCP_NODELAY), so the client
        # meets the splits a real network makes; the bodies are small, so flow control
        # has nothing to hold.
        transport = self.transport
        assert transport is not None
        head = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n%s\r\n" % (
            scenario.content_type.encode(),
            b"Connection: close\r\n" if self.close_after else b"",
        )
        transport.write(head)
        for piece in scenario.reads():
            transport.write(chunk(piece))
        transport.write(b"0\r\n\r\n")
        if self.close_after:
            transport.close()

    def _handle(self, method: str, path: str, body: bytes) -> None:
        if method == "GET" and path == "/v1/models":
            self._reply("200 OK", _MODELS)
            return
        try:
            req: Any = json.loads(body) if body else {}
        except ValueError:
            req = None
        if not isinstance(req, dict):
            self._reply("400 Bad Request", b'{"error":{"message":"body is not a JSON object"}}')
            return
        if method == "POST" and path == "/bench/release":
            count = self.holds.release(str(req.get("group", "")))
            self._reply("200 OK", b'{"released":%d}' % count)
            return
        if method != "POST" or not path.endswith(("/chat/completions", "/completions")):
            self._reply("404 Not Found", b'{"error":{"message":"not found"}}')
            return
        opts: Any = req.get("bench")
        opts = opts if isinstance(opts, dict) else {}
        try:
            n = max(1, int(opts.get("n", 5)))
            interval = float(opts.get("interval_ms", 0)) / 1000.0
        except (TypeError, ValueError):
            self._reply("400 Bad Request", b'{"error":{"message":"bad bench options"}}')
            return
        broken = opts.get("broken")
        if broken is not None:
            scenario = SCENARIOS.get(str(broken))
            if scenario is None:
                self._reply("400 Bad Request", b'{"error":{"message":"no such broken upstream"}}')
            else:
                self._play(scenario)
            return
        if req.get("stream") is not True:
            self._reply("200 OK", _completion(n))
            return
        so = req.get("stream_options")
        usage = isinstance(so, dict) and so.get("include_usage") is True
        head = _SSE_HEAD + (b"Connection: close\r\n" if self.close_after else b"") + b"\r\n"
        assert self.transport is not None
        stream = self.stream = Stream(self, n, interval, usage)
        # Headers and the first event in one write: the time to first byte is the same
        # as the time to the first event.
        self.transport.write(head + event(0, time.monotonic_ns()))
        if n == 1:
            stream._end()
            return
        group = opts.get("hold")
        if isinstance(group, str) and group:
            self.holds.add(group, stream)
        else:
            stream.start()


async def serve(host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """Start the fake upstream; ``server.sockets[0].getsockname()[1]`` is its port."""
    holds = Holds()
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: Upstream(holds), host, port, backlog=8192)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _main(host: str, port: int) -> None:
    server = await serve(host, port)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    _raise_nofile()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(_main(args.host, args.port))
    else:
        uvloop.run(_main(args.host, args.port))


if __name__ == "__main__":
    main()
