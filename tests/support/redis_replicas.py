"""Real parts for the replica tests: a redis-server on a free port, seamline subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
# CI installs redis-server, and sets this so a missing binary fails instead of skipping.
REQUIRE = "SEAMLINE_REQUIRE_REDIS"


@dataclass
class RedisServer:
    """A throwaway redis-server without persistence, which tests may kill and restart."""

    binary: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start listening")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get(REQUIRE):
            pytest.fail(f"{reason}, and {REQUIRE} is set")
        pytest.skip(reason)
    return binary


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(redis_binary())
    server.start()
    yield server
    server.kill()


@dataclass
class Replica:
    """One `python -m proxy serve` process; its log lines are collected as they come."""

    proc: asyncio.subprocess.Process
    base_url: str = ""
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")

    def logged(self, event: str) -> int:
        return sum(f'"event": "{event}"' in line for line in self.lines)


async def start_replica(config: Path) -> Replica:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(config),
        "--port",
        "0",
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    replica = Replica(proc)
    assert proc.stderr is not None
    async with asyncio.timeout(20):
        while not replica.base_url:
            line = (await proc.stderr.readline()).decode()
            if not line:
                raise RuntimeError("seamline exited:\n" + "".join(replica.lines))
            replica.lines.append(line)
            if line.startswith("seamline listening on "):
                replica.base_url = line.split()[-1]

    async def read_rest() -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            replica.lines.append(line.decode())

    replica.reader = asyncio.get_running_loop().create_task(read_rest())
    return replica


@pytest.fixture
async def replicas() -> AsyncIterator[list[Replica]]:
    """Started replicas; each is terminated (and its log read to the end) afterwards."""
    started: list[Replica] = []
    yield started
    for r in started:
        if r.proc.returncode is None:
            r.proc.terminate()
    for r in started:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await r.proc.wait()
        if r.proc.returncode is None:
            r.proc.kill()
            await r.proc.wait()
        if r.reader is not None:
            await r.reader


async def two_replicas(tmp_path: Path, replicas: list[Replica], text: str) -> list[Replica]:
    """Two replicas serving the config ``text``, added to ``replicas``."""
    path = tmp_path / "seamline.toml"
    path.write_text(text)
    path.chmod(0o600)
    started = await asyncio.gather(start_replica(path), start_replica(path))
    replicas.extend(started)
    return list(started)
