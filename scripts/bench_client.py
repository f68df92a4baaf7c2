"""The bench's load client: one raw asyncio protocol per streamed request.

Cheap per event (the bench runs on the same cores as what it measures): no HTTP
library, a small chunked-encoding decoder, events split on blank lines, and every
event's sequence number checked so that a lost or reordered event is caught.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, cast

HOST = "127.0.0.1"
_CONTENT = b'"content":"'


def request_bytes(port: int, bench: dict[str, Any]) -> bytes:
    body = json.dumps(
        {
            "model": "bench",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
            "bench": bench,
        },
        separators=(",", ":"),
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        "Authorization: Bearer bench-client\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Client(asyncio.Protocol):
    """One streamed request on its own connection: de-chunks, splits events, checks
    every event's sequence number, and records latencies when asked.

    ``count_only`` checks only the last sequence number of each read (for a stream
    too fast for per-event parsing to keep up).
    """

    def __init__(
        self,
        request: bytes,
        expect: int,
        record: list[int] | None = None,
        count_only: bool = False,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.expect = expect
        self.record = record
        self.count_only = count_only
        self.done: asyncio.Future[None] = loop.create_future()
        self.opened: asyncio.Future[None] = loop.create_future()  # the first event is in
        self.transport: asyncio.Transport | None = None
        self.head: bytearray | None = bytearray()
        self.status = 0
        self.cbuf = bytearray()
        self.need = 0
        self.crlf = False
        self.sse = bytearray()
        self.events = 0
        self.chunks = 0  # body chunks: one per proxy write (per upstream write, directly)
        self.next_seq = 0
        self.finished = False
        self.done_seen = False
        self.complete = False
        self.error: str | None = None
        self.t_sent = 0
        self.t_first = 0
        self.t_first_event = 0
        self.t_last_event = 0

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.t_sent = time.monotonic_ns()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if not self.t_first:
            self.t_first = now
        head = self.head
        if head is not None:
            head += data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(head[:end]).split(b"\r\n")
            try:
                self.status = int(lines[0].split()[1])
            except (IndexError, ValueError):
                self.status = -1
            chunked = any(
                ln.lower().startswith(b"transfer-encoding:") and b"chunked" in ln.lower()
                for ln in lines[1:]
            )
            rest = bytes(head[end + 4 :])
            self.head = None
            if self.status != 200 or not chunked:
                self._fail(f"HTTP {self.status}: {rest[:200]!r}")
                return
            if not rest:
                return
            data = rest
        self._chunked(data, now)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.complete:
            self._fail(f"connection lost after {self.events} events ({exc or 'closed'})")

    # parsing

    def _chunked(self, data: bytes, now: int) -> None:
        buf = self.cbuf
        buf += data
        n = len(buf)
        pos = 0
        out: list[bytes] = []
        while pos < n:
            if self.need:
                take = min(self.need, n - pos)
                out.append(bytes(buf[pos : pos + take]))
                pos += take
                self.need -= take
                if self.need:
                    break
                self.crlf = True
            if self.crlf:
                if n - pos < 2:
                    break
                pos += 2
                self.crlf = False
                continue
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            try:
                size = int(bytes(buf[pos:nl]).split(b";", 1)[0], 16)
            except ValueError:
                self._fail(f"bad chunk size {bytes(buf[pos:nl])[:40]!r}")
                return
            pos = nl + 2
            if size == 0:
                self.complete = True
                break
            self.need = size
            self.chunks += 1
        del buf[:pos]
        if out:
            self._sse(b"".join(out), now)
        if self.complete:
            self._end()

    def _sse(self, payload: bytes, now: int) -> None:
        sse = self.sse
        sse += payload
        end = sse.rfind(b"\n\n")
        if end < 0:
            return
        block = bytes(sse[:end])
        del sse[: end + 2]
        if self.count_only:
            self._count(block, now)
            return
        record = self.record
        for ev in block.split(b"\n\n"):
            i = ev.find(_CONTENT)
            if i < 0:
                self._other(ev)
                continue
            i += len(_CONTENT)
            j = ev.find(b'"', i)
            seq_b, _, ts_b = ev[i:j].partition(b" ")
            seq = int(seq_b)
            if seq != self.next_seq:
                self._fail(f"event {seq} arrived where {self.next_seq} was due")
            self.next_seq = seq + 1
            self.events += 1
            if record is not None and seq:  # event 0 waited for the request itself
                record.append(now - int(ts_b))
        if self.events:
            self.t_last_event = now
            if not self.t_first_event:
                self.t_first_event = now
                if not self.opened.done():
                    self.opened.set_result(None)

    def _count(self, block: bytes, now: int) -> None:
        k = block.count(_CONTENT)
        if k:
            i = block.rfind(_CONTENT) + len(_CONTENT)
            seq = int(block[i : block.index(b" ", i)])
            if seq != self.next_seq + k - 1:
                self._fail(f"last event {seq} where {self.next_seq + k - 1} was due")
            self.next_seq = seq + 1
            self.events += k
            self.t_last_event = now
            if not self.t_first_event:
                self.t_first_event = now
                if not self.opened.done():
                    self.opened.set_result(None)
        if b"data: [DONE]" in block:
            self.done_seen = True
        if b'"finish_reason":"stop"' in block:
            self.finished = True
        i = block.find(b'{"error"')
        if i >= 0:
            self._fail(f"error event: {block[i : i + 200]!r}")

    def _other(self, ev: bytes) -> None:
        if ev.startswith(b"data: [DONE]"):
            self.done_seen = True
        elif b'"finish_reason":"stop"' in ev:
            self.finished = True
        elif b'"error"' in ev:
            self._fail(f"error event: {ev[:200]!r}")

    # outcome

    def _end(self) -> None:
        if self.events != self.expect:
            self._fail(f"{self.events} of {self.expect} events")
        elif not (self.finished and self.done_seen):
            self._fail("stream ended without finish_reason and [DONE]")
        self._resolve()
        if self.transport is not None:
            self.transport.close()

    def _fail(self, why: str) -> None:
        if self.error is None:
            self.error = why
        self._resolve()
        if self.transport is not None and not self.complete:
            self.transport.abort()

    def _resolve(self) -> None:
        if not self.opened.done():
            self.opened.set_result(None)
        if not self.done.done():
            self.done.set_result(None)

    @property
    def lost(self) -> int:
        return max(0, self.expect - self.events)


async def connect(port: int, client: Client) -> Client:
    loop = asyncio.get_running_loop()
    try:
        await loop.create_connection(lambda: client, HOST, port)
    except OSError as exc:
        client._fail(f"connect: {exc}")
    return client


async def one_stream(port: int, bench: dict[str, Any], **kw: Any) -> Client:
    c = Client(request_bytes(port, bench), int(bench["n"]), **kw)
    await connect(port, c)
    try:
        await asyncio.wait_for(asyncio.shield(c.done), 120)
    except TimeoutError:
        c._fail("timed out")
    return c


async def open_held(port: int, count: int, bench: dict[str, Any], window: int) -> list[Client]:
    """Open ``count`` streams, at most ``window`` not yet streaming at once; each is
    open end to end once its first event is in."""
    req = request_bytes(port, bench)
    sem = asyncio.Semaphore(window)
    record: list[int] = []

    async def one() -> Client:
        async with sem:
            c = Client(req, int(bench["n"]), record=record)
            await connect(port, c)
            try:
                await asyncio.wait_for(asyncio.shield(c.opened), 60)
            except TimeoutError:
                c._fail("no first event within 60 s")
            return c

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def release(upstream_port: int, group: str) -> int:
    reader, writer = await asyncio.open_connection(HOST, upstream_port)
    body = json.dumps({"group": group}).encode()
    writer.write(
        b"POST /bench/release HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    data = await reader.read()
    writer.close()
    return int(json.loads(data.split(b"\r\n\r\n", 1)[1])["released"])
