"""``seamline accounts status`` and ``seamline accounts login`` against real files and servers."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy import config as cfg
from proxy.cli.accounts import login
from proxy.state.redis_link import RedisLink
from proxy.state.redis_store import RedisStore
from proxy.state.store import SQLiteStore
from support.redis_replicas import RedisServer


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "seamline.toml"
    path.write_text(
        f"""
[state]
path = "{tmp_path / "state.db"}"

[[accounts]]
name = "alpha"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-alpha-very-secret"

[[accounts]]
name = "beta"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-beta-very-secret"
{extra}
"""
    )
    return path


async def test_status_prints_persisted_state_without_secrets(tmp_path: Path) -> None:
    path = _config(tmp_path)
    store = SQLiteStore(str(tmp_path / "state.db"))
    now = time.time()
    await store.save(
        {
            "alpha": {"quota_until": now + 3600, "day_start": 0, "last_error": "quota exhausted"},
            "beta": {"requests": 7},
        }
    )
    await store.close()
    code, text, err = await _status(path)
    assert code == 0, err
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["ACCOUNT", "STATE"]
    alpha = next(ln for ln in lines if ln.startswith("alpha"))
    beta = next(ln for ln in lines if ln.startswith("beta"))
    assert "quota_exhausted" in alpha
    assert "quota exhausted" in alpha
    assert "available" in beta
    assert "secret" not in text


def _oauth_server(polls_before_success: int) -> tuple[web.Application, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    async def device(request: web.Request) -> web.Response:
        seen.append(dict(await request.post()))
        return web.json_response(
            {
                "device_code": "dev-1",
                "user_code": "ABCD-EFGH",
                "verification_uri": "https://example.test/device",
                "expires_in": 60,
                "interval": 0,
            }
        )

    async def token(request: web.Request) -> web.Response:
        seen.append(dict(await request.post()))
        if len(seen) <= polls_before_success + 1:
            return web.json_response({"error": "authorization_pending"}, status=400)
        return web.json_response(
            {
                "access_token": "at-new",
                "refresh_token": "rt-new",
                "token_type": "Bearer",
                "expires_in": 3600,
                "resource_url": "portal.qwen.ai",
            }
        )

    app = web.Application()
    app.router.add_post("/device/code", device)
    app.router.add_post("/token", token)
    return app, seen


async def test_login_runs_device_flow_and_writes_credentials(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    app, seen = _oauth_server(polls_before_success=2)
    server = await aiohttp_server(app)
    creds = tmp_path / "creds.json"
    path = _config(
        tmp_path,
        f"""
[[accounts]]
name = "qwen"
kind = "qwen-oauth"
credentials = "{creds}"
token_url = "{server.make_url("/token")}"
device_url = "{server.make_url("/device/code")}"
""",
    )
    out = io.StringIO()
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    assert await login(cfg.load(path, {}), "qwen", out, sleep=no_wait) == 0
    assert len(waits) == 3
    assert "ABCD-EFGH" in out.getvalue()
    data = json.loads(creds.read_text())
    assert data["access_token"] == "at-new"
    assert data["refresh_token"] == "rt-new"
    assert os.stat(creds).st_mode & 0o777 == 0o600
    assert seen[0]["code_challenge_method"] == "S256"
    assert len(seen) == 4  # device code, two pending polls, success


async def test_login_refuses_an_api_key_account(tmp_path: Path) -> None:
    path = _config(tmp_path)
    assert await login(cfg.load(path, {}), "alpha", io.StringIO()) == 2
    assert await login(cfg.load(path, {}), "nobody", io.StringIO()) == 2


async def test_status_on_a_corrupt_state_file_is_one_line_exit_2(tmp_path: Path) -> None:
    path = _config(tmp_path)
    (tmp_path / "state.db").write_bytes(b"this is not a database" * 100)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "accounts",
        "status",
        "--config",
        str(path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "state.db") in lines[0]
    assert "Traceback" not in err.decode()


async def test_a_corrupt_state_file_is_moved_aside_and_seamline_starts(tmp_path: Path) -> None:
    from proxy.pool.accounts import Limits, Pool
    from proxy.state.store import Persister

    db = tmp_path / "state.db"
    db.write_bytes(b"this is not a database" * 100)
    pool = Pool([Limits("alpha")])
    persister = Persister(pool, SQLiteStore(str(db)))
    await persister.restore()
    pool.quota_exhausted(pool.states["alpha"], time.time(), None)
    await persister.stop()
    assert any(n.startswith("state.db.corrupt-") for n in os.listdir(tmp_path))
    store = SQLiteStore(str(db))
    saved = await store.load()
    await store.close()
    assert saved["alpha"]["quota_until"] > time.time()


async def _status(path: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "accounts",
        "status",
        "--config",
        str(path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status_reads_the_shared_state_from_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    path = _config(tmp_path)
    text = path.read_text().replace(
        f'path = "{tmp_path / "state.db"}"', f'backend = "redis"\nurl = "{redis_server.url}"'
    )
    path.write_text(text)
    link = RedisLink(redis_server.url, 1.0)
    await link.start()
    now = time.time()
    await RedisStore(link, "seamline").save(
        {"alpha": {"quota_until": now + 3600, "day_start": 0, "last_error": "quota exhausted"}}
    )
    await link.close()
    code, out, err = await _status(path)
    assert code == 0, err
    alpha = next(ln for ln in out.splitlines() if ln.startswith("alpha"))
    beta = next(ln for ln in out.splitlines() if ln.startswith("beta"))
    assert "quota_exhausted" in alpha
    assert "available" in beta
    redis_server.kill()
    code, out, err = await _status(path)
    assert code == 2
    assert err.startswith("seamline: redis://127.0.0.1:") and "unreachable" in err
    assert "Traceback" not in err
