"""Hostile upstreams, and how an HTTP client fares against each.

Each case is an upstream that writes exact bytes (a :data:`support.upstream.Handler`),
the requests a client makes to it, and a judge that turns what the client got (and
what the upstream saw) into a one-line verdict that names no client. The same
corpus runs against seamline's client (``test_wire_hostile.py`` asserts its
verdicts) and aiohttp's: ``python -m support.hostile_upstreams`` (with ``tests`` on
``PYTHONPATH``) prints both side by side,
with what each let the upstream write, how long it took and the peak memory
(``LOOP=uvloop`` for uvloop; case ids as arguments for only those).

aiohttp's verdicts are recorded too (``Case.aiohttp``, as aiohttp 3.14 gives them
on both loops, run after run), and the tests check them: a change there is news
about aiohttp, not a failure of seamline.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.errors import UpstreamError
from proxy.upstream import wire
from support.builders import CHUNKED, LAST_CHUNK, OK, STALE, bomb, chunks, large
from support.upstream import Handler, Peer, RawUpstream, answer, first_then_ok

KiB = 1024
MiB = 1024 * KiB
FLOOD_CAP = 64 * MiB  # a flooding upstream stops here, so that every case ends
READ_CAP = 64 * MiB  # a reader stops here
# A client that stops a flood before this many bytes were written bounded it: the
# rest is what loopback socket buffers hold.
BOUNDED = 16 * MiB


@dataclass
class Got:
    """What a client got for one request."""

    status: int | None = None
    body: bytes = b""
    error: str | None = None  # "ClassName: message"
    largest: int = 0  # the largest piece one read handed over
    size: int = 0  # body bytes read (``body`` keeps only the first MiB)

    def note(self, piece: bytes) -> None:
        if self.size < MiB:
            self.body += piece
        self.size += len(piece)
        self.largest = max(self.largest, len(piece))


class Driver(Protocol):
    """One HTTP client, as the corpus drives it."""

    name: str

    async def exchange(self, method: str, url: str, body: bytes = b"") -> Got: ...

    async def close(self) -> None: ...


class SeamlineDriver:
    name = "seamline"

    def __init__(self, within: float = 10.0) -> None:
        self.client = wire.ConnectionPool()
        self.within = within  # seconds one exchange may take before it counts as hung

    async def exchange(self, method: str, url: str, body: bytes = b"") -> Got:
        got = Got()
        try:
            async with asyncio.timeout(self.within):
                resp = await self.client.request(
                    method, url, {}, body, connect=5, head=self.within, total=0
                )
                got.status = resp.status
                try:
                    while got.size < READ_CAP and (piece := await resp.read()):
                        got.note(piece)
                finally:
                    resp.close()
        except UpstreamError as exc:
            got.error = f"{type(exc).__name__}: {exc}"
        except TimeoutError:
            got.error = f"hung: no end within {self.within:g}s"
        return got

    async def close(self) -> None:
        self.client.close()


class AiohttpDriver:
    name = "aiohttp"

    def __init__(self, within: float = 10.0) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self.session = aiohttp.ClientSession()
        self.within = within

    async def exchange(self, method: str, url: str, body: bytes = b"") -> Got:
        got = Got()
        try:
            async with (
                asyncio.timeout(self.within),
                self.session.request(method, url, data=body or None) as resp,
            ):
                got.status = resp.status
                while got.size < READ_CAP and (piece := await resp.content.readany()):
                    got.note(piece)
        except self._aiohttp.ClientError as exc:
            got.error = f"{type(exc).__name__}: {exc}"
        except TimeoutError:
            got.error = f"hung: no end within {self.within:g}s"
        return got

    async def close(self) -> None:
        await self.session.close()


Play = Callable[[Driver, RawUpstream], Awaitable[list[Got]]]


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # the upstream's trick, in a few words
    handler: Handler
    play: Play
    judge: Callable[[list[Got], RawUpstream], str]
    seamline: str  # seamline's verdict, which test_wire_hostile.py asserts
    aiohttp: str  # aiohttp's, as recorded


@dataclass
class Outcome:
    verdict: str
    gots: list[Got]
    upstream: RawUpstream
    seconds: float
    tracebacks: list[str] = field(default_factory=list)  # what reached the loop's handler

    def detail(self) -> str:
        parts = [g.error or f"{g.status} {g.size} B" for g in self.gots]
        sent = sum(p.sent for p in self.upstream.peers)
        return f"{'; '.join(parts)} | upstream wrote {sent // KiB} KiB in {self.seconds:.2f}s"


async def run(case: Case, driver: Driver) -> Outcome:
    """Play ``case`` against ``driver``'s client; the upstream is stopped after."""
    loop = asyncio.get_running_loop()
    tracebacks: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: tracebacks.append(str(context.get("message"))))
    up = RawUpstream(case.handler, "127.0.0.1")
    await up.start()
    start = time.monotonic()
    try:
        gots = await case.play(driver, up)
        seconds = time.monotonic() - start
        await asyncio.sleep(0.05)  # a traceback logged as the connection closes
    finally:
        await up.stop()
        loop.set_exception_handler(previous)
    verdict = case.judge(gots, up)
    if tracebacks:
        verdict += ", and a traceback logged"
    return Outcome(verdict, gots, up, seconds, tracebacks)


# -- how the client plays ---------------------------------------------------------------


def one(method: str = "GET", body: bytes = b"") -> Play:
    async def play(driver: Driver, up: RawUpstream) -> list[Got]:
        return [await driver.exchange(method, up.url(), body)]

    return play


def twice(second: str = "GET", pause: float = 0.3) -> Play:
    """A GET, a pause while its connection idles in the pool, then ``second``."""

    async def play(driver: Driver, up: RawUpstream) -> list[Got]:
        first = await driver.exchange("GET", up.url())
        await asyncio.sleep(pause)
        body = b'{"n": 2}' if second == "POST" else b""
        return [first, await driver.exchange(second, up.url(), body)]

    return play


def at_once_after_bytes_wait() -> Play:
    """A GET; then, while the loop is kept from noticing, the upstream's bytes reach
    the idle connection's socket, and the next request goes out at once."""

    async def play(driver: Driver, up: RawUpstream) -> list[Got]:
        first = await driver.exchange("GET", up.url())
        await asyncio.sleep(0.1)  # the pooled connection idles
        sock = up.peers[0].writer.get_extra_info("socket")
        os.write(sock.fileno(), STALE)  # not through the loop: nothing wakes up
        time.sleep(0.05)  # noqa: ASYNC251 - the point: the loop must not run now
        return [first, await driver.exchange("GET", up.url())]

    return play


# -- the upstreams ----------------------------------------------------------------------


def after(response: bytes, then: bytes, wait: float = 0.1) -> Handler:
    """Answer the first request, and ``wait`` seconds later, unasked, send ``then``."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(response)
        await asyncio.sleep(wait)
        await peer.send(then)
        await peer.until_closed()

    return first_then_ok(handler)


def flood(prefix: bytes, unit: bytes) -> Handler:
    """Send ``prefix``, then ``unit`` again and again until the client leaves (or
    FLOOD_CAP is reached)."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(prefix)
        piece = unit * max(1, 16 * KiB // len(unit))
        try:
            while peer.sent < FLOOD_CAP:
                await peer.send(piece)
        except ConnectionError:
            return
        await peer.until_closed()

    return handler


def answering_once(response: bytes) -> Handler:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(response)
        await peer.until_closed()

    return first_then_ok(handler)


def read_second_then_close() -> Handler:
    """Answer one request; read the next one whole, then close without a word."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        await peer.request()
        peer.close()

    return first_then_ok(handler)


def banner() -> Handler:
    """Not HTTP: a server that speaks first (SSH, SMTP) and never reads."""

    async def handler(peer: Peer) -> None:
        await peer.send(b"SSH-2.0-OpenSSH_9.6\r\n")
        await peer.until_closed()

    return handler


def gzip_bomb() -> Handler:
    async def handler(peer: Peer) -> None:
        data = bomb()
        await peer.request()
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
        try:
            await peer.send(head % len(data) + data)
        except ConnectionError:
            return
        await peer.until_closed()

    return first_then_ok(handler)


SMALL_CHUNKS = 200_000


def many_small_chunks() -> Handler:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED)
        unit = chunks(b"x") * 1000
        for _ in range(SMALL_CHUNKS // 1000):
            await peer.send(unit)
        await peer.send(LAST_CHUNK)
        await answer(peer, OK)

    return handler


# -- the judges -------------------------------------------------------------------------


def refused(gots: list[Got], up: RawUpstream) -> str:
    """For a case whose upstream floods: did the client stop it, and how soon."""
    got = gots[0]
    sent = sum(p.sent for p in up.peers)
    if got.error is None:
        return f"accepted ({got.size} body bytes)"
    if got.error.startswith("hung"):
        return "hung until the exchange's timeout"
    if sent >= FLOOD_CAP:
        return "kept reading until the upstream stopped"
    if sent <= BOUNDED:
        return "refused early"
    return f"refused after {sent // MiB} MiB"


def next_answer(gots: list[Got], up: RawUpstream) -> str:
    """For a case whose upstream sends unasked bytes: what the next request got."""
    first, second = gots
    if first.body != b"x" * len(first.body) and first.body != b"ok":
        return f"first answer wrong: {first.body[:20]!r}"
    if second.body == b"stale":
        return "the next request got the bytes sent unasked"
    if second.body == b"ok" and len(up.peers) == 2:
        return "connection closed; the next request went on a new one"
    return f"other: {second.error or second.body[:20]!r}"


def interim(gots: list[Got], up: RawUpstream) -> str:
    got = gots[0]
    if got.error is not None:
        return "refused"
    if b"HELLO" in got.body:
        return "the 1xx's body glued to the answer's"
    if got.body == b"ok":
        return "the 1xx's body dropped"
    return f"other: {got.body[:20]!r}"


def upgrade(gots: list[Got], up: RawUpstream) -> str:
    got = gots[0]
    if got.error is not None:
        return "refused"
    return f"answered {got.status} with {got.size} body bytes"


def sent_again(method: str) -> Callable[[list[Got], RawUpstream], str]:
    def judge(gots: list[Got], up: RawUpstream) -> str:
        copies = sum(r.startswith(method.encode() + b" ") for r in up.requests)
        if method == "GET":
            copies -= 1  # the first request
        got = gots[1]
        if copies > 1:
            return f"sent again on a new connection (the upstream got it {copies} times)"
        if got.error is not None:
            return "refused, sent once"
        return f"other: {got.status}"

    return judge


def whole(size: int, unit: bytes = b"x") -> Callable[[list[Got], RawUpstream], str]:
    def judge(gots: list[Got], up: RawUpstream) -> str:
        got = gots[0]
        if got.error is not None:
            return f"failed after {got.size} bytes"
        return "read whole" if got.size == size else f"read {got.size} of {size} bytes"

    return judge


def framing(gots: list[Got], up: RawUpstream) -> str:
    got = gots[0]
    if got.error is not None:
        return "refused"
    return f"accepted: {got.body[:20]!r}"


def inflated(gots: list[Got], up: RawUpstream) -> str:
    got = gots[0]
    if got.error is not None and got.size == 0:
        return "refused"
    if got.largest <= MiB:
        return "inflated in pieces of at most 1 MiB"
    return f"inflated {got.largest // MiB} MiB in one piece"


def spoke_first(gots: list[Got], up: RawUpstream) -> str:
    got = gots[0]
    if got.error is None:
        return f"answered {got.status}"
    if got.error.startswith("hung"):
        return "hung until the exchange's timeout"
    return "refused at once"


CASES: list[Case] = [
    Case(
        "idle-bytes-after-a-large-answer",
        "a 400 KiB answer, then unasked bytes while the connection idles",
        # One socket read (256 KiB) and more than the pulled body's high-water mark:
        # the read that ends the answer is one that pauses the socket.
        after(large(400 * KiB), STALE),
        twice(),
        next_answer,
        "connection closed; the next request went on a new one",
        "the next request got the bytes sent unasked",
    ),
    Case(
        "idle-bytes-after-a-small-answer",
        "a small answer, then unasked bytes while the connection idles",
        after(OK, STALE),
        twice(),
        next_answer,
        "connection closed; the next request went on a new one",
        "the next request got the bytes sent unasked",
    ),
    Case(
        "bytes-waiting-at-reuse",
        "unasked bytes reach the idle socket just before the next request",
        after(OK, b"", wait=0),
        at_once_after_bytes_wait(),
        next_answer,
        "connection closed; the next request went on a new one",
        "the next request got the bytes sent unasked",
    ),
    Case(
        "bytes-past-the-answer",
        "an answer and more bytes after it, in one write",
        answering_once(OK + STALE),
        twice(),
        next_answer,
        "connection closed; the next request went on a new one",
        "connection closed; the next request went on a new one",
    ),
    Case(
        "endless-trailer-line",
        "a chunked body, then one trailer field that never ends",
        flood(CHUNKED + chunks(b"hello") + b"0\r\nX-Trailer: ", b"a"),
        one(),
        refused,
        "refused early",
        "refused early",
    ),
    Case(
        "endless-trailer-fields",
        "a chunked body, then trailer fields without end",
        flood(CHUNKED + chunks(b"hello") + b"0\r\n", b"X-Pad: aaaaaaaa\r\n"),
        one(),
        refused,
        "refused early",
        "refused early",
    ),
    Case(
        "endless-chunk-extension",
        "a chunk size line whose extension never ends",
        flood(CHUNKED + chunks(b"hello") + b"5;ext=", b"a"),
        one(),
        refused,
        "refused early",
        "hung until the exchange's timeout",
    ),
    Case(
        "endless-head",
        "a response head that never ends",
        flood(b"HTTP/1.1 200 OK\r\nX-Big: ", b"a"),
        one(),
        refused,
        "refused early",
        "refused early",
    ),
    Case(
        "many-small-chunks",
        f"(legitimate) {SMALL_CHUNKS:,} chunks of one byte",
        many_small_chunks(),
        one(),
        whole(SMALL_CHUNKS),
        "read whole",
        "read whole",
    ),
    Case(
        "interim-with-a-length-body",
        "a 1xx answer with Content-Length: 5 and 5 bytes, then the answer",
        answering_once(b"HTTP/1.1 150 Odd\r\nContent-Length: 5\r\n\r\nHELLO" + OK),
        one(),
        interim,
        "refused",
        "the 1xx's body dropped",
    ),
    Case(
        "interim-with-a-chunked-body",
        "a chunked 1xx answer with a body, then the answer",
        answering_once(
            b"HTTP/1.1 150 Odd\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunks(b"HELLO")
            + LAST_CHUNK
            + OK
        ),
        one(),
        interim,
        "refused",
        "the 1xx's body dropped",
    ),
    Case(
        "unsolicited-101",
        "101 Switching Protocols to a plain GET, then websocket bytes",
        answering_once(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\n\x81\x05hello"
        ),
        one(),
        upgrade,
        "refused",
        "answered 101 with 0 body bytes",
    ),
    Case(
        "post-read-then-closed",
        "a reused connection: the upstream reads a POST whole, then closes",
        read_second_then_close(),
        twice("POST", pause=0.05),
        sent_again("POST"),
        "refused, sent once",
        "refused, sent once",
    ),
    Case(
        "get-read-then-closed",
        "a reused connection: the upstream reads a GET whole, then closes",
        read_second_then_close(),
        twice("GET", pause=0.05),
        sent_again("GET"),
        "sent again on a new connection (the upstream got it 2 times)",
        "sent again on a new connection (the upstream got it 2 times)",
    ),
    Case(
        "length-and-chunked",
        "Content-Length and Transfer-Encoding: chunked together",
        answering_once(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunks(b"hello")
            + LAST_CHUNK
        ),
        one(),
        framing,
        "refused",
        "refused",
    ),
    Case(
        "two-lengths",
        "two different Content-Length headers",
        answering_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nhello"),
        one(),
        framing,
        "refused",
        "refused",
    ),
    Case(
        "gzip-bomb",
        "64 KiB of gzip that inflates to 64 MiB",
        gzip_bomb(),
        one(),
        inflated,
        "inflated in pieces of at most 1 MiB",
        "inflated in pieces of at most 1 MiB",
    ),
    Case(
        "speaks-first",
        "not HTTP: a server that sends a banner on connect and never reads",
        banner(),
        one(),
        spoke_first,
        "refused at once",
        "refused at once",
    ),
]


# -- side by side ------------------------------------------------------------------------


def _peak_rss_reset() -> int:
    """Resident set now, in KiB, after resetting the peak (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status("VmRSS")


def _status(field_name: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


async def compare(only: list[str]) -> list[dict[str, Any]]:
    bomb()  # made once, before anything is timed
    rows: list[dict[str, Any]] = []
    for case in CASES:
        if only and case.id not in only:
            continue
        row: dict[str, Any] = {"case": case.id, "what": case.what}
        for make in (SeamlineDriver, AiohttpDriver):
            driver: Driver = make()
            before = _peak_rss_reset()
            try:
                outcome = await run(case, driver)
            finally:
                await driver.close()
            grown = max(0, _status("VmHWM") - before) // 1024
            row[driver.name] = outcome.verdict
            row[driver.name + " detail"] = f"{outcome.detail()} | peak RSS +{grown} MiB"
        rows.append(row)
    return rows


def main() -> None:
    """Print the corpus's verdicts for seamline's client and aiohttp's."""
    import aiohttp

    only = sys.argv[1:]
    loop_name = os.environ.get("LOOP", "asyncio")
    if loop_name == "uvloop":
        import uvloop

        rows = uvloop.run(compare(only))
    else:
        rows = asyncio.run(compare(only))
    print(f"# aiohttp {aiohttp.__version__}, loop {loop_name}\n")
    print("| case | the upstream | seamline | aiohttp |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['case']} | {row['what']} | {row['seamline']} | {row['aiohttp']} |")
    print()
    for row in rows:
        print(f"- {row['case']}")
        for name in ("seamline", "aiohttp"):
            print(f"  - {name}: {row[name + ' detail']}")


if __name__ == "__main__":
    main()
