"""The command line, run as real processes: check-config, serve, and python -m proxy."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"
SEAMLINE = str(Path(sys.executable).parent / "seamline")
PYTHON_M = [sys.executable, "-m", "proxy"]
# Only PATH: no API key variable, no proxy settings, nothing secret from the test runner.
ENV = {"PATH": os.environ.get("PATH", os.defpath)}
ACCOUNT = '[[accounts]]\nname = "a"\nbase_url = "http://127.0.0.1:9/v1"\n'
# A [server] table whose SIGTERM stops at once: no readiness grace (tests/test_ops.py
# tests the grace).
NO_GRACE = "[server]\ndrain_grace_s = 0\n"


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        env=ENV if env is None else env,
        cwd=cwd,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write(tmp_path: Path, text: str, name: str = "seamline.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


# -- bad configs: one line naming file and key, exit 2, for both entry points ---------------

# (id, file text, what follows "PATH: " on the error line)
BAD_TEXTS = [
    ("unknown-top-level-key", "extra = 1\n" + ACCOUNT, "extra: unknown key"),
    ("unknown-server-key", "[server]\nprot = 1\n" + ACCOUNT, "server.prot: unknown key"),
    ("unknown-timeouts-key", "[timeouts]\nidel = 1\n" + ACCOUNT, "timeouts.idel: unknown key"),
    ("unknown-account-key", ACCOUNT + 'apikey = "k"\n', "accounts[0].apikey: unknown key"),
    ("wrong-type", '[server]\nport = "8080"\n' + ACCOUNT, "server.port: expected an integer"),
    ("bool-for-int", "[server]\nport = true\n" + ACCOUNT, "server.port: expected an integer"),
    ("port-out-of-range", "[server]\nport = 70000\n" + ACCOUNT, "server.port: must be between"),
    ("header-not-string", ACCOUNT + "headers = { X-A = 1 }\n", "accounts[0].headers.X-A: "),
    (
        "missing-base-url",
        '[[accounts]]\nname = "a"\n',
        "accounts[0].base_url: required key is missing",
    ),
    (
        "missing-name",
        '[[accounts]]\nbase_url = "http://h/v1"\n',
        "accounts[0].name: required key is missing",
    ),
    (
        "env-var-not-set",
        ACCOUNT + 'api_key_env = "SEAMLINE_TEST_UNSET_KEY"\n',
        "accounts[0].api_key_env: environment variable 'SEAMLINE_TEST_UNSET_KEY' is not set",
    ),
    ("invalid-toml", "[server\nport = 1\n", "invalid TOML: "),
    ("no-accounts", "[server]\nport = 8080\n", "accounts: at least one [[accounts]] entry"),
    ("duplicate-names", ACCOUNT + ACCOUNT, "accounts[1].name: duplicate account name 'a'"),
    (
        "bad-base-url",
        '[[accounts]]\nname = "a"\nbase_url = "localhost:8000/v1"\n',
        "accounts[0].base_url: expected an http:// or https:// URL",
    ),
    (
        "base-url-bad-ipv6",
        '[[accounts]]\nname = "a"\nbase_url = "http://[::1/v1"\n',
        "accounts[0].base_url: expected an http:// or https:// URL",
    ),
    (
        "negative-timeout",
        "[timeouts]\nidle = -1\n" + ACCOUNT,
        "timeouts.idle: must not be negative",
    ),
    (
        "newline-in-key",
        '[server]\n"po\\nrt" = 1\n' + ACCOUNT,
        'server."po\\nrt": unknown key',
    ),
]


def _text_case(text: str) -> Callable[[Path], Path]:
    return lambda tmp_path: write(tmp_path, text)


def _through_a_file(tmp_path: Path) -> Path:
    write(tmp_path, "", "plain-file")
    return tmp_path / "plain-file" / "seamline.toml"


def _not_utf8(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n" + ACCOUNT.encode())
    return path


def _no_read_permission(tmp_path: Path) -> Path:
    path = write(tmp_path, ACCOUNT)
    path.chmod(0)
    return path


BAD_FILES: list[Any] = [
    pytest.param(_text_case(text), expected, id=case_id) for case_id, text, expected in BAD_TEXTS
] + [
    pytest.param(
        lambda p: p / "missing.toml", "cannot read file: No such file or directory", id="missing"
    ),
    pytest.param(lambda p: p, "cannot read file: Is a directory", id="directory"),
    pytest.param(_through_a_file, "cannot read file: Not a directory", id="path-through-a-file"),
    pytest.param(_not_utf8, "invalid TOML: file is not UTF-8", id="not-utf8"),
    pytest.param(
        _no_read_permission,
        "cannot read file: Permission denied",
        id="no-read-permission",
        marks=pytest.mark.skipif(
            os.name != "posix" or os.geteuid() == 0, reason="root reads any file"
        ),
    ),
    pytest.param(
        lambda p: Path("/proc/self/mem"),
        "cannot read file: Input/output error",
        id="read-fails",
        marks=pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="Linux only"),
    ),
]

ENTRY_POINTS = [
    pytest.param(lambda path: [*PYTHON_M, "check-config", path], id="python-m-proxy-check-config"),
    pytest.param(lambda path: [SEAMLINE, "serve", "--config", path], id="seamline-serve"),
]


@pytest.mark.parametrize("command", ENTRY_POINTS)
@pytest.mark.parametrize(("make", "expected"), BAD_FILES)
def test_bad_config_prints_one_line_naming_file_and_key_and_exits_2(
    tmp_path: Path,
    command: Callable[[str], list[str]],
    make: Callable[[Path], Path],
    expected: str,
) -> None:
    path = str(make(tmp_path))
    result = run(command(path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    assert result.stderr.startswith(f"seamline: {path}: {expected}"), result.stderr
    assert result.stdout == ""


# -- check-config and python -m proxy --------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [[*PYTHON_M, "check-config"], [SEAMLINE, "check-config"]],
    ids=["python-m-proxy", "seamline"],
)
def test_example_config_passes_check_config_without_environment(
    tmp_path: Path, command: list[str]
) -> None:
    result = run([*command, str(EXAMPLE)], cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{EXAMPLE}: ok (1 account(s))\n"


def test_check_config_reads_api_key_env_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, ACCOUNT + 'api_key_env = "SEAMLINE_TEST_KEY"\n')
    result = run(
        [*PYTHON_M, "check-config", str(path)], tmp_path, {**ENV, "SEAMLINE_TEST_KEY": "sk-1"}
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert "sk-1" not in result.stdout


@pytest.mark.parametrize("args", [["--version"], [], ["serve", "--port", "70000"], ["nonsense"]])
def test_python_m_proxy_behaves_like_seamline(tmp_path: Path, args: list[str]) -> None:
    via_module = run([*PYTHON_M, *args], cwd=tmp_path)
    via_script = run([SEAMLINE, *args], cwd=tmp_path)
    assert via_module.returncode == via_script.returncode
    assert via_module.stdout == via_script.stdout
    assert via_module.stderr == via_script.stderr
    assert "Traceback" not in via_module.stderr


def test_help_is_plain_text_naming_every_command(tmp_path: Path) -> None:
    result = run([SEAMLINE, "--help"], cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines at the terminal width
    assert "``" not in text and ":class:" not in text
    for command in ("serve", "check-config", "accounts status", "accounts login"):
        assert f"'seamline {command}" in text


def test_version_names_the_program(tmp_path: Path) -> None:
    result = run([SEAMLINE, "--version"], cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("seamline ")


def test_check_config_in_process_returns_0_and_reports_the_account_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, ACCOUNT + ACCOUNT.replace('"a"', '"b"'))
    assert main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok (2 account(s))\n"


def test_check_config_in_process_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[server]\nport = -1\n" + ACCOUNT)
    with pytest.raises(SystemExit) as info:
        main(["check-config", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"seamline: {path}: server.port: must be between 0 and 65535\n"


@pytest.mark.parametrize("port", ["-1", "65536", "70000", "http"])
def test_serve_rejects_a_port_outside_the_tcp_range(tmp_path: Path, port: str) -> None:
    # A subprocess with a short timeout: if the port were accepted, serve would run on.
    args = [SEAMLINE, "serve", "--config", str(EXAMPLE), "--port", port]
    result = run(args, cwd=tmp_path, timeout=10)
    assert result.returncode == 2
    assert "argument --port" in result.stderr
    assert "Traceback" not in result.stderr


# -- serve: a real process on a free port ----------------------------------------------


class Server:
    """A running ``serve`` process whose stderr is read line by line in a thread."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            cwd=cwd,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.seen.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, prefix: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line starting {prefix!r} in {timeout}s: {self.seen}")
            if line is None:
                pytest.fail(f"exited with {self.proc.wait()} before {prefix!r}: {self.seen}")
            if line.startswith(prefix):
                return line.rstrip("\n")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 5.0) -> int:
        self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 10.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    @property
    def stderr(self) -> str:
        return "".join(self.seen)

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.seen:
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    events.append(obj)
        return events

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[[list[str]], Server]]:
    servers: list[Server] = []

    def start(args: list[str]) -> Server:
        server = Server(args, tmp_path)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def get(url: str) -> tuple[int, dict[str, Any]]:
    """GET without any proxy from the environment; the status and the JSON body."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_serve_announces_itself_answers_and_stops_cleanly_on_sigterm(
    tmp_path: Path, start_server: Callable[[list[str]], Server]
) -> None:
    port = free_port()
    config = write(
        tmp_path,
        NO_GRACE
        + f"port = {port}\n"
        + ACCOUNT
        + ACCOUNT.replace('"a"', '"b"')
        + 'proxy = "http://me:pr0xy-s3cret@127.0.0.1:3128"\n',
    )
    server = start_server([*PYTHON_M, "serve", "--config", str(config)])

    listening = server.wait_for_line("seamline listening on ")
    assert listening == f"seamline listening on http://127.0.0.1:{port}/v1"
    # Each account, with the proxy it goes through (never its credentials).
    assert server.wait_for_line("accounts: ") == "accounts: a, b (through http://127.0.0.1:3128)"

    status, body = get(f"http://127.0.0.1:{port}/nonexistent")
    assert status == 404
    assert isinstance(body["error"], dict)
    assert body["error"]["message"]

    assert server.stop(signal.SIGTERM) == 0
    assert "Traceback" not in server.stderr
    warnings = [e for e in server.log_events() if e.get("event") == "no_client_auth"]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert "server.api_keys is empty" in warnings[0]["detail"]


@pytest.mark.parametrize("hard_limit", [1024, 4096])
def test_a_first_start_with_the_example_config_warns_only_of_no_client_auth(
    tmp_path: Path, start_server: Callable[[list[str]], Server], hard_limit: int
) -> None:
    # Common hard open-file limits: a default nobody set must not warn about them.
    config = tmp_path / "config.toml"
    text = EXAMPLE.read_text("utf-8").replace("port = 8080", "port = 0")
    text = text.replace("drain_grace_s = 5 ", "drain_grace_s = 0 ")
    config.write_text(text)
    limited = ["bash", "-c", f'ulimit -Sn 256 && ulimit -Hn {hard_limit} && exec "$@"', "bash"]
    server = start_server([*limited, *PYTHON_M, "serve", "--config", str(config)])
    server.wait_for_line("seamline listening on ")
    assert server.stop() == 0
    warned = [e["event"] for e in server.log_events() if e.get("level") in ("warning", "error")]
    assert warned == ["no_client_auth"]
    assert "Traceback" not in server.stderr


def test_host_and_port_options_override_the_config(
    tmp_path: Path, start_server: Callable[[list[str]], Server]
) -> None:
    # The config's own address cannot be bound: a TEST-NET host and a port in use.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        config = write(
            tmp_path,
            NO_GRACE + f'host = "192.0.2.1"\nport = {busy_port}\n'
            'api_keys = ["client-key-1234"]\n' + ACCOUNT,
        )
        port = free_port()
        args = ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        server = start_server([SEAMLINE, *args])
        assert server.wait_for_line("seamline listening on ").endswith(f"127.0.0.1:{port}/v1")
        server.wait_for_line("accounts: ")
        assert get(f"http://127.0.0.1:{port}/nonexistent")[0] == 404
        assert server.stop(signal.SIGINT) == 0
    assert "Traceback" not in server.stderr
    assert "no_client_auth" not in server.stderr
    assert "client-key-1234" not in server.stderr


def test_serve_with_port_0_announces_the_port_it_got(
    tmp_path: Path, start_server: Callable[[list[str]], Server]
) -> None:
    config = write(tmp_path, NO_GRACE + "port = 0\n" + ACCOUNT)
    server = start_server([*PYTHON_M, "serve", "--config", str(config)])
    line = server.wait_for_line("seamline listening on ")
    port = int(line.removeprefix("seamline listening on http://127.0.0.1:").removesuffix("/v1"))
    assert port > 0
    assert get(f"http://127.0.0.1:{port}/nonexistent")[0] == 404
    assert server.stop() == 0


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_listen_address_is_announced_as_a_valid_url(
    tmp_path: Path, start_server: Callable[[list[str]], Server]
) -> None:
    config = write(tmp_path, NO_GRACE + "port = 0\n" + ACCOUNT)
    server = start_server([SEAMLINE, "serve", "--config", str(config), "--host", "::1"])
    line = server.wait_for_line("seamline listening on ")
    assert line.startswith("seamline listening on http://[::1]:")
    url = line.removeprefix("seamline listening on ").removesuffix("/v1")
    assert get(url + "/nonexistent")[0] == 404
    assert server.stop() == 0


def test_serve_on_a_port_in_use_exits_1_without_traceback(
    tmp_path: Path, start_server: Callable[[list[str]], Server]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = write(tmp_path, f"[server]\nport = {busy.getsockname()[1]}\n" + ACCOUNT)
        server = start_server([SEAMLINE, "serve", "--config", str(config)])
        assert server.wait() == 1
    assert "seamline: cannot listen: " in server.stderr
    assert "seamline listening on" not in server.stderr
    assert "Traceback" not in server.stderr


@pytest.mark.parametrize(("max_concurrent", "warned"), [(1000, True), (100, False), (None, False)])
def test_serve_raises_its_open_file_limit_and_warns_when_it_is_too_low(
    tmp_path: Path,
    start_server: Callable[[list[str]], Server],
    max_concurrent: int | None,
    warned: bool,
) -> None:
    # Soft 256, hard 512: seamline raises the soft limit to 512, which holds 100 streams
    # (two sockets each) but not 1000. Left out, the limit is derived from it: no warning.
    setting = "" if max_concurrent is None else f"max_concurrent = {max_concurrent}\n"
    config = write(tmp_path, NO_GRACE + "port = 0\n" + setting + ACCOUNT)
    limited = ["bash", "-c", 'ulimit -Sn 256 && ulimit -Hn 512 && exec "$@"', "bash"]
    server = start_server([*limited, *PYTHON_M, "serve", "--config", str(config)])
    server.wait_for_line("seamline listening on ")
    assert server.stop() == 0
    low = [e for e in server.log_events() if e.get("event") == "open_file_limit_low"]
    if warned:
        assert [(e["limit"], e["needed"]) for e in low] == [(512, 2 * 1000 + 64)]
    else:
        assert low == []
