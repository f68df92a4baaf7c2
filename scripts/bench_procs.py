"""The bench's processes: the fake upstream, seamline and nginx, and their accounting.

CPU comes from each process's own accounting (utime + stime in /proc/<pid>/stat,
all threads), memory from its resident set (VmRSS in /proc/<pid>/status).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of these processes (all their threads), from the kernel's accounting."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            fields = _proc_stat(pid)
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat
    return total / CLK_TCK


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident set size (VmRSS) of these processes together."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(_proc_stat(int(entry.name))[1]) == pid:
                    out.append(int(entry.name))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def own_cpu() -> float:
    """This process and every child it has reaped (proxies and upstream, once stopped)."""
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_cpu() + c.ru_utime + c.ru_stime


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores), from /proc/stat."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    # user nice system idle iowait irq softirq steal
    return sum(int(f[i]) for i in (1, 2, 3, 6, 7, 8)) / CLK_TCK


# ----------------------------------------------------------------------- processes


async def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            _, w = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()
        return
    raise RuntimeError(f"{what} did not listen on {port} within 20 s")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else ""


def spawn(cmd: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
    """Start one process of the bench, its stderr appended to ``log``."""
    with log.open("ab") as err:
        return subprocess.Popen(cmd, stderr=err, **kw)


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class Target:
    """One way to reach the upstream: directly, or through a proxy process."""

    name: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    start: Callable[[], Any] | None = None  # coroutine function that (re)starts it

    @property
    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        return [self.proc.pid, *children_of(self.proc.pid)]

    def cpu(self) -> float:
        return cpu_seconds(self.pids)

    def rss(self) -> int:
        return rss_bytes(self.pids)

    async def restart(self) -> None:
        if self.start is not None:
            stop(self.proc)
            await self.start()

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None


async def start_upstream(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    log = tmp / "upstream.log"
    proc = spawn(
        [sys.executable, str(HERE / "fake_upstream.py"), "--host", HOST, "--port", "0"],
        log,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    if not line.startswith(b"listening "):
        stop(proc)
        raise RuntimeError(f"fake upstream did not start: {_tail(log)}")
    return proc, int(line.split()[1])


def seamline_command() -> list[str]:
    exe = Path(sys.executable).parent / "seamline"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "proxy"]


def seamline_config(upstream_port: int) -> str:
    return (
        "[server]\n"
        f'host = "{HOST}"\n'
        "heartbeat_s = 0\n"
        "max_concurrent = 50000\n"
        "drain_grace_s = 0\n"  # restarts between scenarios need no load balancer's grace
        "[state]\n"
        'path = ":memory:"\n'
        "[[accounts]]\n"
        'name = "fake"\n'
        f'base_url = "http://{HOST}:{upstream_port}/v1"\n'
        'api_key = "sk-bench-upstream"\n'
    )


async def start_seamline(target: Target, tmp: Path, upstream_port: int) -> None:
    conf = tmp / "seamline.toml"
    conf.write_text(seamline_config(upstream_port))
    port = free_port()
    log = tmp / "seamline.log"
    env = {**os.environ, "DEBUG_STREAMING": ""}
    proc = spawn(
        [*seamline_command(), "serve", "--config", str(conf), "--port", str(port)],
        log,
        stdout=subprocess.DEVNULL,
        env=env,
    )
    target.proc, target.port = proc, port
    await _wait_port(port, proc, "seamline", log)


def nginx_config(tmp: Path, port: int, upstream_port: int) -> str:
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 20000; }}
http {{
    access_log off;
{temp}
    upstream fake {{
        server {HOST}:{upstream_port};
        keepalive 1024;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://fake;
            proxy_buffering off;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


async def start_nginx(target: Target, tmp: Path, upstream_port: int) -> None:
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_config(tmp, port, upstream_port))
    log = tmp / "nginx-error.log"
    proc = spawn(
        [exe, "-p", str(tmp), "-e", str(log), "-c", str(conf)], log, stdout=subprocess.DEVNULL
    )
    target.proc, target.port = proc, port
    await _wait_port(port, proc, "nginx", log)


def nginx_path() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )
