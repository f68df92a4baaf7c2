"""qwen-code OAuth: credentials file, refresh, device login, against a fake server on loopback."""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import io
import json
import os
import re
import socket
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer
from structlog.testing import capture_logs

from proxy.upstream.credentials import (
    DEFAULT_BASE_URL,
    Credentials,
    OAuthError,
    OAuthRevoked,
    base_url_from,
    load_credentials,
    write_credentials,
)
from proxy.upstream.oauth import DEFAULT_CLIENT_ID, DEVICE_GRANT, OAuthAccount, device_login

NOW = 1_700_000_000.0
ACCESS0 = "at-initial-6f1c2b9e0d4a"
REFRESH0 = "rt-initial-93b7aa51c2e0"
Answer = tuple[int, dict[str, Any]]


def s256(verifier: str) -> str:
    """The PKCE S256 challenge, computed independently of the code under test."""
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass
class FakeOAuth:
    """chat.qwen.ai's OAuth endpoints in miniature; records every request it gets."""

    url: str = ""
    refresh_script: list[Answer] = field(default_factory=list)
    poll_script: list[Answer] = field(default_factory=list)
    device_answer: dict[str, Any] = field(default_factory=dict)
    refreshes: list[dict[str, str]] = field(default_factory=list)
    device_requests: list[dict[str, str]] = field(default_factory=list)
    polls: list[dict[str, str]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    challenges: dict[str, str] = field(default_factory=dict)
    pkce_verified: list[bool] = field(default_factory=list)
    delay: float = 0.0
    issued: list[str] = field(default_factory=list)

    def issue(self, **extra: Any) -> dict[str, Any]:
        n = len(self.issued) + 1
        self.issued.append(f"at-issued-{n}-c0ffee")
        answer = {
            "access_token": self.issued[-1],
            "refresh_token": f"rt-issued-{n}-c0ffee",
            "token_type": "Bearer",
            "expires_in": 3600,
        }
        return answer | extra

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.headers.append(dict(request.headers))
        if form.get("grant_type") == "refresh_token":
            # Decided (and the refresh token rotated) before the slow answer goes out.
            self.refreshes.append(form)
            status, body = self.refresh_script.pop(0) if self.refresh_script else (200, {})
            body = body or self.issue()
            await asyncio.sleep(self.delay)
            return web.json_response(body, status=status)
        self.polls.append(form)
        ok = s256(form["code_verifier"]) == self.challenges.get(form["device_code"])
        self.pkce_verified.append(ok)
        if not ok:
            return web.json_response({"error": "invalid_grant"}, status=400)
        status, body = self.poll_script.pop(0) if self.poll_script else (400, _pending)
        return web.json_response(body or self.issue(resource_url="portal.qwen.ai"), status=status)

    async def device(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.device_requests.append(form)
        self.challenges["dev-code-1"] = form["code_challenge"]
        answer = {
            "device_code": "dev-code-1",
            "user_code": "WXYZ-1234",
            "verification_uri": "https://chat.qwen.ai/authorize",
            "verification_uri_complete": "https://chat.qwen.ai/authorize?user_code=WXYZ-1234",
            "expires_in": 300,
            "interval": 2,
        }
        return web.json_response(answer | self.device_answer)


_pending = {"error": "authorization_pending"}


@pytest.fixture
async def fake(aiohttp_server: AiohttpServer) -> FakeOAuth:
    fake = FakeOAuth()
    app = web.Application()
    app.router.add_post("/oauth2/token", fake.token)
    app.router.add_post("/oauth2/device/code", fake.device)
    server = await aiohttp_server(app)
    fake.url = str(server.make_url("/oauth2"))
    return fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def creds_file(path: Path, expires_in: float, **fields: Any) -> Path:
    data = {
        "access_token": ACCESS0,
        "refresh_token": REFRESH0,
        "token_type": "Bearer",
        "resource_url": "portal.qwen.ai",
        "expiry_date": int((NOW + expires_in) * 1000),
        "custom": {"kept": [1, 2]},
    } | fields
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def make_account(tmp_path: Path, fake: FakeOAuth) -> Callable[..., OAuthAccount]:
    def make(expires_in: float = 3600, **fields: Any) -> OAuthAccount:
        path = creds_file(tmp_path / "oauth_creds.json", expires_in, **fields)
        return OAuthAccount("qwen-a", str(path), token_url=fake.url + "/token")

    return make


def secret_free(exc: BaseException, *more: str) -> None:
    text = f"{exc} {exc!r} {exc.args!r}"
    for secret in (ACCESS0, REFRESH0, "c0ffee", *more):
        assert secret not in text


def on_disk(account: OAuthAccount) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(raw(account))
    return data


def raw(account: OAuthAccount) -> str:
    return Path(account.path).read_text()


def half_write(account: OAuthAccount, text: str) -> None:
    Path(account.path).write_text(text)


def relogin(account: OAuthAccount, **fields: Any) -> None:
    """What `qwen` does on a new login: rewrite the file in place (same inode)."""
    path = Path(account.path)
    before = path.stat().st_mtime_ns
    creds_file(path, 3600, **fields)
    os.utime(path, ns=(before + 10**9, before + 10**9))


# -- base URL and the credentials file ------------------------------------------------


@pytest.mark.parametrize(
    ("resource_url", "expected"),
    [
        (None, DEFAULT_BASE_URL),
        ("", DEFAULT_BASE_URL),
        ("   ", DEFAULT_BASE_URL),
        ("portal.qwen.ai", "https://portal.qwen.ai/v1"),
        ("portal.qwen.ai/", "https://portal.qwen.ai/v1"),
        ("https://portal.qwen.ai", "https://portal.qwen.ai/v1"),
        ("https://portal.qwen.ai/v1", "https://portal.qwen.ai/v1"),
        ("https://portal.qwen.ai/v1/", "https://portal.qwen.ai/v1"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/v1"),
        ("dashscope.aliyuncs.com/compatible-mode", DEFAULT_BASE_URL),
    ],
)
def test_base_url_from(resource_url: str | None, expected: str) -> None:
    assert base_url_from(resource_url) == expected


def test_load_credentials_expands_home_and_keeps_extra_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".qwen").mkdir()
    creds_file(tmp_path / ".qwen" / "oauth_creds.json", 100)
    creds = load_credentials("~/.qwen/oauth_creds.json")
    assert creds.access_token == ACCESS0
    assert creds.refresh_token == REFRESH0
    assert creds.expiry_date == int((NOW + 100) * 1000)
    assert creds.extra == {"custom": {"kept": [1, 2]}}
    assert ACCESS0 not in repr(creds) and REFRESH0 not in repr(creds)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ('{"access_token": "at-initial-6f1c2b9e0d4a", ', "not valid JSON"),
        ("[]", "expected a JSON object"),
        (json.dumps({"refresh_token": REFRESH0}), "access_token is missing"),
        (json.dumps({"access_token": ACCESS0, "refresh_token": 7}), "refresh_token is missing"),
        (
            json.dumps({"access_token": ACCESS0, "refresh_token": REFRESH0, "expiry_date": "x"}),
            "expiry_date",
        ),
    ],
)
def test_unusable_credentials_file_raises_oauth_error(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "oauth_creds.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(OAuthError, match=message) as info:
        load_credentials(str(path))
    assert str(path) in str(info.value)
    secret_free(info.value)


# -- atomic writes ----------------------------------------------------------------------


def test_write_is_0600_valid_json_and_leaves_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "creds.json"
    seen: list[tuple[int, list[str]]] = []
    real_fsync = os.fsync

    def spying_fsync(fd: int) -> None:
        # At fsync the temporary file holds the secret: it must already be 0600.
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            seen.append((stat.S_IMODE(st.st_mode), sorted(os.listdir(tmp_path))))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spying_fsync)
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        write_credentials(str(path), {"access_token": ACCESS0, "extra": {"x": 1}})
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"access_token": ACCESS0, "extra": {"x": 1}}
    assert os.listdir(tmp_path) == ["creds.json"]
    [(tmp_mode, listing)] = seen
    assert tmp_mode == 0o600
    assert len(listing) == 1 and listing[0].startswith(".creds.json.")


def test_write_failing_midway_leaves_old_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    path.write_text('{"access_token": "old"}')
    # json.dump writes piece by piece: the temporary file is half-written when this fails.
    with pytest.raises(TypeError):
        write_credentials(str(path), {"access_token": "new", "zz": object()})
    assert path.read_text() == '{"access_token": "old"}'
    assert os.listdir(tmp_path) == ["creds.json"]


def test_write_failing_fsync_raises_oauth_error_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "creds.json"
    path.write_text('{"access_token": "old"}')

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OAuthError, match="Input/output error"):
        write_credentials(str(path), {"access_token": ACCESS0})
    assert path.read_text() == '{"access_token": "old"}'
    assert os.listdir(tmp_path) == ["creds.json"]


# -- refresh ----------------------------------------------------------------------------


async def test_no_refresh_while_far_from_expiry(
    make_account: Callable[..., OAuthAccount], fake: FakeOAuth, session: aiohttp.ClientSession
) -> None:
    account = make_account(expires_in=61)
    assert await account.token(session, NOW) == ACCESS0
    assert account.base_url == "https://portal.qwen.ai/v1"
    assert fake.refreshes == []


async def test_refresh_shortly_before_expiry_writes_the_file(
    make_account: Callable[..., OAuthAccount], fake: FakeOAuth, session: aiohttp.ClientSession
) -> None:
    account = make_account(expires_in=30)
    assert await account.token(session, NOW) == "at-issued-1-c0ffee"
    assert fake.refreshes == [
        {"grant_type": "refresh_token", "refresh_token": REFRESH0, "client_id": DEFAULT_CLIENT_ID}
    ]
    assert fake.headers[0]["Accept"] == "application/json"
    assert fake.headers[0]["Content-Type"] == "application/x-www-form-urlencoded"
    assert on_disk(account) == {
        "access_token": "at-issued-1-c0ffee",
        "refresh_token": "rt-issued-1-c0ffee",
        "token_type": "Bearer",
        "resource_url": "portal.qwen.ai",
        "expiry_date": int((NOW + 3600) * 1000),
        "custom": {"kept": [1, 2]},
    }
    assert stat.S_IMODE(os.stat(account.path).st_mode) == 0o600
    assert os.listdir(os.path.dirname(account.path)) == ["oauth_creds.json"]
    # Fresh now: no second refresh, and our own write is not mistaken for a new login.
    assert await account.token(session, NOW + 1) == "at-issued-1-c0ffee"
    assert len(fake.refreshes) == 1


async def test_old_refresh_token_kept_when_none_returned(
    make_account: Callable[..., OAuthAccount], fake: FakeOAuth, session: aiohttp.ClientSession
) -> None:
    account = make_account(expires_in=-5)
    fake.refresh_script.append(
        (200, {"access_token": "at-new", "expires_in": 600, "resource_url": "other.qwen.ai"})
    )
    assert await account.token(session, NOW) == "at-new"
    data = on_disk(account)
    assert data["refresh_token"] == REFRESH0
    assert data["expiry_date"] == int((NOW + 600) * 1000)
    assert account.base_url == "https://other.qwen.ai/v1"
    assert account.credentials.refresh_token == REFRESH0


async def test_fifty_concurrent_callers_share_one_refresh(
    make_account: Callable[..., OAuthAccount], fake: FakeOAuth, session: aiohttp.ClientSession
) -> None:
    account = make_account(expires_in=-1)
    fake.delay = 0.05
    tokens = await asyncio.gather(*(account.token(session, NOW) for _ in range(50)))
    assert set(tokens) == {"at-issued-1-c0ffee"}
    assert len(fake.refreshes) == 1


async def test_refresh_after_401_with_stale_token_does_not_refresh_twice(
    make_account: Callable[..., OAuthAccount], fake: FakeOAuth, session: aiohttp.ClientSession
) -> None:
    account = make_account(expires_in=3600)
    fake.delay = 0.02
    tokens = await asyncio.gather(*(account.refresh_after_401(session, ACCESS0) for _ in range(5)))
    assert set(tokens) == {"at-issued-1-c0ffee"}
    assert len(fake.refreshes) == 1
    # A late request that still carried the old token gets the new one, no refresh.
    assert await account.refresh_after_401(session, ACCESS0) == "at-issued-1-c0ffee"
    assert len(fake.refreshes) == 1
    # The new token rejected too: that is a reason to refresh again.
    assert await account.refresh_after_401(session, "at-issued-1-c0ffee") == "at-issued-2-c0ffee"
    assert len(fake.refreshes) == 2


@pytest.mark.parametrize(
    ("status", "body", "shown"),
    [
        (400, {"error": "invalid_grant", "error_description": "Refresh token expired"}, "expired"),
        (401, {"error": "invalid_client"}, "invalid_client"),
        (400, {}, "HTTP 400"),
        (403, {"error": "unauthorized_client"}, "unauthorized_client"),
        (400, {"error": "invalid_grant", "error_description": f"no {REFRESH0}"}, "no [REDACTED]"),
    ],
)
async def test_rejected_refresh_disables_account_without_further_calls(
    make_account: Callable[..., OAuthAccount],
    fake: FakeOAuth,
    session: aiohttp.ClientSession,
    status: int,
    body: dict[str, Any],
    shown: str,
) -> None:
    account = make_account(expires_in=0)
    fake.refresh_script.append((status, body))
    fake.delay = 0.02
    results = await asyncio.gather(
        *(account.token(session, NOW) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, OAuthRevoked) for r in results)
    assert account.disabled_reason is not None
    assert shown in account.disabled_reason and "qwen-a" in account.disabled_reason
    for later in (account.token(session, NOW), account.refresh_after_401(session, ACCESS0)):
        with pytest.raises(OAuthRevoked, match=re.escape(shown)) as info:
            await later
        secret_free(info.value)
    assert len(fake.refreshes) == 1


async def test_server_error_is_transient(
    make_account: Callable[..., OAuthAccount], fake: FakeOAuth, session: aiohttp.ClientSession
) -> None:
    account = make_account(expires_in=10)
    fake.refresh_script.append(
        (500, {"error": "server_error", "error_description": f"cannot refresh {REFRESH0}"})
    )
    fake.delay = 0.02
    # Callers waiting on the failed refresh share its failure rather than retry in a herd.
    results = await asyncio.gather(
        *(account.token(session, NOW) for _ in range(10)), return_exceptions=True
    )
    for exc in results:
        assert isinstance(exc, OAuthError) and not isinstance(exc, OAuthRevoked)
        assert "HTTP 500" in str(exc)
        secret_free(exc)
    assert len(fake.refreshes) == 1
    assert account.disabled_reason is None
    assert await account.token(session, NOW) == "at-issued-1-c0ffee"
    assert len(fake.refreshes) == 2


async def test_a_caller_going_away_does_not_abort_the_refresh(
    make_account: Callable[..., OAuthAccount], fake: FakeOAuth, session: aiohttp.ClientSession
) -> None:
    # The server rotates the refresh token when it answers; aborting the refresh then
    # would lose the new one and lock the account out.
    account = make_account(expires_in=0)
    fake.delay = 0.1
    first = asyncio.create_task(account.token(session, NOW))
    await asyncio.sleep(0.03)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await account.token(session, NOW) == "at-issued-1-c0ffee"
    assert len(fake.refreshes) == 1
    assert on_disk(account)["refresh_token"] == "rt-issued-1-c0ffee"


async def test_unreachable_token_endpoint_is_transient(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = creds_file(tmp_path / "c.json", expires_in=0)
    account = OAuthAccount("qwen-b", str(path), token_url=f"http://127.0.0.1:{port}/token")
    with pytest.raises(OAuthError, match="unreachable") as info:
        await account.token(session, NOW)
    assert not isinstance(info.value, OAuthRevoked)
    assert account.disabled_reason is None
    secret_free(info.value)


async def test_new_login_on_disk_is_picked_up_and_reenables(
    make_account: Callable[..., OAuthAccount], fake: FakeOAuth, session: aiohttp.ClientSession
) -> None:
    account = make_account(expires_in=0)
    fake.refresh_script.append((400, {"error": "invalid_grant"}))
    with pytest.raises(OAuthRevoked):
        await account.token(session, NOW)
    relogin(account, access_token="at-relogin", resource_url="https://x.qwen.ai/v1")
    assert await account.token(session, NOW) == "at-relogin"
    assert account.disabled_reason is None
    assert account.base_url == "https://x.qwen.ai/v1"
    assert len(fake.refreshes) == 1


async def test_half_written_file_keeps_the_last_good_credentials(
    make_account: Callable[..., OAuthAccount], session: aiohttp.ClientSession
) -> None:
    account = make_account(expires_in=3600)
    half_write(account, '{"access_tok')
    assert await account.token(session, NOW) == ACCESS0


async def test_refresh_still_serves_when_the_file_cannot_be_written(
    make_account: Callable[..., OAuthAccount],
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    account = make_account(expires_in=0)
    before = raw(account)

    def full_disk(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    assert await account.token(session, NOW) == "at-issued-1-c0ffee"
    assert raw(account) == before
    assert await account.token(session, NOW) == "at-issued-1-c0ffee"


async def test_log_lines_never_carry_tokens(
    make_account: Callable[..., OAuthAccount], fake: FakeOAuth, session: aiohttp.ClientSession
) -> None:
    account = make_account(expires_in=0)
    with capture_logs() as logs:
        await account.refresh_after_401(session, ACCESS0)
        fake.refresh_script.append((400, {"error": "invalid_grant"}))
        with pytest.raises(OAuthRevoked):
            await account.refresh_after_401(session, "at-issued-1-c0ffee")
    assert [e["event"] for e in logs] == ["oauth_token_refreshed", "oauth_refresh_revoked"]
    text = repr(logs)
    for secret in (ACCESS0, REFRESH0, "c0ffee"):
        assert secret not in text


# -- device login -------------------------------------------------------------------------


@dataclass
class FakeTime:
    """An injected clock and sleep: sleeping advances the clock and is recorded."""

    now: float = NOW
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def login(
    fake: FakeOAuth, session: aiohttp.ClientSession, path: Path, t: FakeTime, out: io.StringIO
) -> Credentials:
    return await device_login(
        session,
        credentials_path=str(path),
        device_url=fake.url + "/device/code",
        token_url=fake.url + "/token",
        out=out,
        sleep=t.sleep,
        clock=t.clock,
    )


async def test_device_login_polls_until_success_and_saves(
    fake: FakeOAuth, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fake.poll_script += [
        (400, _pending),
        (400, {"error": "slow_down"}),
        (400, _pending),
        (200, {}),
    ]
    t, out, path = FakeTime(), io.StringIO(), tmp_path / "qwen" / "oauth_creds.json"
    creds = await login(fake, session, path, t, out)

    assert t.sleeps == [2, 2, 7, 7]  # slow_down added 5 seconds
    assert "WXYZ-1234" in out.getvalue()
    assert "https://chat.qwen.ai/authorize" in out.getvalue()
    assert "authorize?user_code=WXYZ-1234" in out.getvalue()
    assert creds.access_token == "at-issued-1-c0ffee"
    assert creds.refresh_token == "rt-issued-1-c0ffee"
    assert creds.expiry_date == int((NOW + 18 + 3600) * 1000)
    assert load_credentials(str(path)) == creds
    assert json.loads(path.read_text())["resource_url"] == "portal.qwen.ai"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["oauth_creds.json"]

    [asked] = fake.device_requests
    assert asked["client_id"] == DEFAULT_CLIENT_ID
    assert asked["scope"] == "openid profile email model.completion"
    assert asked["code_challenge_method"] == "S256"
    assert "=" not in asked["code_challenge"] and len(asked["code_challenge"]) == 43
    assert len(fake.polls) == 4
    for poll in fake.polls:
        assert poll["grant_type"] == DEVICE_GRANT
        assert poll["device_code"] == "dev-code-1"
        assert poll["client_id"] == DEFAULT_CLIENT_ID
        assert 43 <= len(poll["code_verifier"]) <= 128
        assert s256(poll["code_verifier"]) == asked["code_challenge"]
    assert fake.pkce_verified == [True] * 4


@pytest.mark.parametrize(
    ("error", "message"), [("expired_token", "expired"), ("access_denied", "denied")]
)
async def test_device_login_stops_on_final_errors(
    fake: FakeOAuth, session: aiohttp.ClientSession, tmp_path: Path, error: str, message: str
) -> None:
    fake.poll_script += [(400, _pending), (400, {"error": error})]
    path = tmp_path / "creds.json"
    with pytest.raises(OAuthError, match=message):
        await login(fake, session, path, FakeTime(), io.StringIO())
    assert len(fake.polls) == 2
    assert not path.exists()


async def test_device_login_gives_up_when_the_code_expires(
    fake: FakeOAuth, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fake.device_answer = {"expires_in": 12, "interval": None}  # default interval: 5 s
    t, path = FakeTime(), tmp_path / "creds.json"
    with pytest.raises(OAuthError, match="expired"):
        await login(fake, session, path, t, io.StringIO())
    assert t.sleeps == [5, 5, 5]
    assert len(fake.polls) == 2
    assert not path.exists()
