"""Real HTTP proxies for the proxy tests: tinyproxy on a free port, and a scripted one.

tinyproxy (Debian's ``tinyproxy``) runs in the foreground with a config written for
the test; without it the tests that need it skip, unless SEAMLINE_REQUIRE_PROXY is
set (as CI does), which makes a missing binary a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from support.ports import free_port

REQUIRE = "SEAMLINE_REQUIRE_PROXY"


def tinyproxy_binary() -> str:
    binary = shutil.which("tinyproxy")
    if binary is None:
        reason = "tinyproxy is not installed (apt-get install tinyproxy)"
        if os.environ.get(REQUIRE):
            pytest.fail(f"{reason}, and {REQUIRE} is set")
        pytest.skip(reason)
    return binary


@dataclass
class Tinyproxy:
    """One tinyproxy process: ``Allow 127.0.0.1``, CONNECT only to ``connect_ports``,
    Basic credentials when ``auth`` is given; its log is kept for the test to read."""

    binary: str
    root: Path
    connect_ports: tuple[int, ...]
    auth: tuple[str, str] | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def url(self, user: str = "", password: str = "") -> str:
        creds = f"{user}:{password}@" if user or password else ""
        return f"http://{creds}127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "tinyproxy.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            "MaxClients 64",
            "LogLevel Connect",
            f'LogFile "{self.log_path}"',
            "Allow 127.0.0.1",
        ]
        # No ConnectPort line would allow every port: there is always one.
        lines += [f"ConnectPort {p}" for p in self.connect_ports or (443,)]
        if self.auth is not None:
            lines.append(f"BasicAuth {self.auth[0]} {self.auth[1]}")
        conf = self.root / "tinyproxy.conf"
        conf.write_text("\n".join(lines) + "\n")
        # -d: in the foreground, no daemon; the test owns the process.
        self.proc = subprocess.Popen(
            [self.binary, "-d", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"tinyproxy did not start listening:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class StartTinyproxy(Protocol):
    def __call__(
        self, connect_ports: tuple[int, ...] = ..., auth: tuple[str, str] | None = ...
    ) -> Tinyproxy: ...


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[StartTinyproxy]:
    """Start tinyproxy processes for a test; each is killed after it."""
    binary = tinyproxy_binary()
    started: list[Tinyproxy] = []

    def start(
        connect_ports: tuple[int, ...] = (), auth: tuple[str, str] | None = None
    ) -> Tinyproxy:
        root = tmp_path / f"tinyproxy-{len(started)}"
        root.mkdir()
        proxy = Tinyproxy(binary, root, connect_ports, auth)
        started.append(proxy)
        proxy.start()
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


class ScriptedProxy:
    """A proxy on loopback that keeps the head of every request it gets. To CONNECT it
    answers ``answer`` (then, for a 2xx, ``after`` and the tunnel: bytes piped both
    ways to the target); to anything else, ``forward`` (a whole HTTP answer)."""

    def __init__(
        self,
        answer: bytes = b"HTTP/1.1 200 Connection established\r\n\r\n",
        after: bytes = b"",
        forward: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ) -> None:
        self.answer = answer
        self.after = after
        self.forward = forward
        self.heads: list[bytes] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def url(self, user: str = "", password: str = "") -> str:
        creds = f"{user}:{password}@" if user or password else ""
        return f"http://{creds}127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.heads.append(head)
                if not head.startswith(b"CONNECT "):
                    writer.write(self.forward)
                    await writer.drain()
                    continue
                writer.write(self.answer + self.after)
                await writer.drain()
                if not self.answer.split(b" ", 2)[1].startswith(b"2"):
                    return
                host, _, port = head.split(b" ", 2)[1].decode().rpartition(":")
                try:
                    up_reader, up_writer = await asyncio.open_connection(
                        host.strip("[]"), int(port)
                    )
                except OSError:
                    return  # as a real proxy would, after its answer: the tunnel closes
                await asyncio.gather(
                    _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
                )
                return
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


class StartScripted(Protocol):
    def __call__(
        self, answer: bytes = ..., after: bytes = ..., forward: bytes = ...
    ) -> Awaitable[ScriptedProxy]: ...


@pytest.fixture
async def scripted_proxy() -> AsyncIterator[StartScripted]:
    """Start ScriptedProxy instances; each is stopped after the test."""
    made: list[ScriptedProxy] = []

    async def start(
        answer: bytes = b"HTTP/1.1 200 Connection established\r\n\r\n",
        after: bytes = b"",
        forward: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ) -> ScriptedProxy:
        proxy = ScriptedProxy(answer, after, forward)
        await proxy.start()
        made.append(proxy)
        return proxy

    yield start
    for proxy in made:
        await proxy.stop()
