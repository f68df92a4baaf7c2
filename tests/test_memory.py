"""What the HTTP side holds in memory, measured on a real ``seamline serve`` process (its
resident set, from /proc): idle connections, a request trailer that never ends, a chunk
extension that never ends, and request bodies that trickle in. Each test asserts a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from proxy.cli.main import raise_open_file_limit

SEAMLINE = str(Path(sys.executable).parent / "seamline")
ENV = {"PATH": os.environ.get("PATH", os.defpath)}
NOWHERE = "http://127.0.0.1:9/v1"  # an account never called
KIB = 1024


class Process:
    """A running ``seamline serve``: where it listens, and how much it holds."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid = pid
        self.port = port

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KIB
        raise AssertionError("no VmRSS")

    async def settled_rss(self) -> int:
        """The resident set once the process has done what it was given."""
        await asyncio.sleep(0.3)
        return self.rss()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def get(self, path: str) -> tuple[int, Any]:
        """One GET on a connection of its own: status and JSON body."""
        reader, writer = await self.connect()
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n".encode())
            async with asyncio.timeout(5):
                data = await reader.read()
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ")[1]), json.loads(body)


@contextlib.asynccontextmanager
async def seamline(tmp_path: Path, server: str = "") -> AsyncIterator[Process]:
    config = tmp_path / "seamline.toml"
    config.write_text(
        f"[server]\nport = 0\ndrain_grace_s = 0\n{server}\n"
        f'[state]\npath = ":memory:"\n[[accounts]]\nname = "a"\nbase_url = "{NOWHERE}"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        SEAMLINE,
        "serve",
        "--config",
        str(config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(20):
            while not (line := await proc.stderr.readline()).startswith(b"seamline listening"):
                assert line, "exited before it listened"
        port = int(line.rsplit(b":", 1)[1].split(b"/")[0])
        # The rest of its log is read, and dropped: a full pipe would block it.
        rest = asyncio.create_task(proc.stderr.read())
        yield Process(proc.pid, port)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        with contextlib.suppress(Exception):
            await rest


def chunked_post(*extra: bytes) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\n" + b"".join(extra)
    )


async def _keep_sending(
    writer: asyncio.StreamWriter, piece: bytes, most: int, every: float = 0.005
) -> int:
    """Send ``piece`` every ``every`` seconds until the server closes (or ``most`` bytes
    went); the bytes sent."""
    sent = 0
    with contextlib.suppress(ConnectionError):
        while sent < most and not writer.is_closing():
            writer.write(piece)
            await writer.drain()
            sent += len(piece)
            await asyncio.sleep(every)
    return sent


async def _answer_status(reader: asyncio.StreamReader, within: float = 5) -> int | None:
    """The answer's status; None when the connection was reset first (a server that
    closes while its client still sends resets it, and the answer may be lost)."""
    try:
        async with asyncio.timeout(within):
            head = await reader.readuntil(b"\r\n\r\n")
    except ConnectionResetError:
        return None
    return int(head.split(b" ")[1])


async def test_a_thousand_idle_connections_hold_under_12_kib_each(tmp_path: Path) -> None:
    raise_open_file_limit()
    async with seamline(tmp_path, "keepalive_s = 60") as server:
        assert (await server.get("/healthz"))[0] == 200  # warm: everything imported
        before = await server.settled_rss()
        idle = []
        for i in range(1000):
            reader, writer = await server.connect()
            if i % 2:  # half kept alive after a request, half never sent a byte
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: s\r\n\r\n")
                assert await _answer_status(reader) == 200
                await reader.readuntil(b'"ok"}')
            idle.append(writer)
        grown = await server.settled_rss() - before
        # Still quick for everyone else.
        began = time.monotonic()
        assert (await server.get("/readyz"))[0] == 200
        assert time.monotonic() - began < 0.5
        for writer in idle:
            writer.close()
    assert grown / 1000 < 12 * KIB, f"{grown / 1000 / KIB:.1f} KiB per idle connection"


@pytest.mark.parametrize(
    ("start", "piece", "status"),
    [
        # A trailer field that never ends: refused at the parser's field limit.
        pytest.param(b'5\r\n{"a":\r\n0\r\nX-Trailer: ', b"t" * 8192, 431, id="trailer"),
        # A chunk extension that never ends: the parser keeps none of it, and the body
        # is too slow for its floor rate.
        pytest.param(b"5;ext=", b"e" * 8192, 408, id="chunk-extension"),
    ],
)
async def test_a_request_head_or_body_part_that_never_ends_leaves_memory_flat(
    tmp_path: Path, start: bytes, piece: bytes, status: int
) -> None:
    floor = "body_min_rate = 100000\nbody_rate_grace_s = 0.5"
    async with seamline(tmp_path, floor) as server:
        assert (await server.get("/healthz"))[0] == 200
        before = await server.settled_rss()
        peers = [await server.connect() for _ in range(20)]
        for _, writer in peers:
            writer.write(chunked_post(start))
        # Each keeps sending (up to 2 MiB: 40 MiB in all) until the server closes.
        sending = [asyncio.create_task(_keep_sending(w, piece, 2 << 20)) for _, w in peers]
        began = time.monotonic()
        # Meanwhile, everyone else is answered at once.
        assert (await server.get("/healthz"))[0] == 200
        assert time.monotonic() - began < 0.5
        statuses = await asyncio.gather(*(_answer_status(r) for r, _ in peers))
        peak = server.rss() - before
        sent = await asyncio.gather(*sending)
        for _, writer in peers:
            writer.close()
    # Every connection was ended: refused, or reset because its client kept sending.
    assert set(statuses) <= {status, None}, statuses
    if status == 431:
        assert max(sent) < 256 * KIB  # refused near its limit, not after megabytes
    assert peak < 4 << 20, f"grew {peak / KIB:.0f} KiB while {sum(sent) / KIB:.0f} KiB came"


async def test_slow_bodies_are_cut_at_the_floor_and_hold_bounded_memory_and_slots(
    tmp_path: Path,
) -> None:
    floor = "body_min_rate = 1000\nbody_rate_grace_s = 0.5\nbody_timeout_s = 30"
    async with seamline(tmp_path, floor) as server:
        assert (await server.get("/healthz"))[0] == 200
        before = await server.settled_rss()
        peers = [await server.connect() for _ in range(200)]
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: s\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        )
        for _, writer in peers:
            writer.write(head)
        # 10 bytes every 50 ms: 200 B/s, a fifth of the floor.
        sending = [
            asyncio.create_task(_keep_sending(w, b" " * 10, 100_000, 0.05)) for _, w in peers
        ]
        await asyncio.sleep(0.3)
        _, ready = await server.get("/readyz")
        held = server.rss() - before
        assert ready["in_flight"] == 200  # each holds its max_concurrent slot...
        statuses = await asyncio.gather(*(_answer_status(r) for r, _ in peers))
        _, ready = await server.get("/readyz")
        assert ready["in_flight"] == 0  # ...until the floor cuts it
        cut = await server.settled_rss()
        await asyncio.sleep(1.0)  # their clients go on sending meanwhile
        later = server.rss()
        await asyncio.gather(*sending)
        for _, writer in peers:
            writer.close()
    assert statuses == [408] * 200
    assert held / 200 < 20 * KIB, f"{held / 200 / KIB:.1f} KiB per slow body"
    assert later - cut < 256 * KIB, "memory kept growing after the bodies were cut"
