"""qwen-code OAuth accounts: the credentials file, token refresh, and device-code login.

The ``qwen`` CLI keeps its login in ``~/.qwen/oauth_creds.json``. An :class:`OAuthAccount`
reads that file, refreshes the access token shortly before it expires (one refresh per
account at a time), writes the answer back atomically, and notices when the user logs in
again. Tokens never appear in an exception message or a log line.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TextIO

import aiohttp

from proxy.config.egress import ProxyURL
from proxy.logs import get_logger
from proxy.upstream.credentials import (
    KNOWN_FIELDS,
    Credentials,
    OAuthError,
    OAuthRevoked,
    base_url_from,
    credentials_from,
    load_credentials,
    number_of,
    text_of,
    write_credentials,
)

if TYPE_CHECKING:
    from proxy.upstream.oauth_share import TokenShare

DEFAULT_TOKEN_URL = "https://chat.qwen.ai/api/v1/oauth2/token"
DEFAULT_DEVICE_URL = "https://chat.qwen.ai/api/v1/oauth2/device/code"
DEFAULT_CLIENT_ID = "f0304373b74a44d2b584a3fb70ca9e56"  # qwen-code's public client id
DEFAULT_CREDENTIALS_PATH = "~/.qwen/oauth_creds.json"
DEFAULT_SCOPE = "openid profile email model.completion"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

_REVOKING_ERRORS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})
_HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)
_DEVICE_FINAL = {
    "expired_token": "the code expired before the login was completed",
    "access_denied": "the login was denied",
}

log = get_logger(__name__)


async def _post_form(
    session: aiohttp.ClientSession,
    url: str,
    form: dict[str, str],
    what: str,
    proxy: ProxyURL | None = None,
) -> tuple[int, dict[str, Any], str]:
    """POST a form (through ``proxy`` when given); return the status, the JSON object
    answered, and a line describing it."""
    headers = {"Accept": "application/json"}
    to_proxy: dict[str, str] | None = None
    if proxy is not None and proxy.authorization:
        # aiohttp sends proxy_headers on a CONNECT only; a forwarded http request
        # carries the credentials itself. (aiohttp's BasicAuth is deprecated.)
        if url.startswith("https:"):
            to_proxy = {"Proxy-Authorization": proxy.authorization}
        else:
            headers["Proxy-Authorization"] = proxy.authorization
    try:
        async with session.post(
            url,
            data=form,
            headers=headers,
            timeout=_HTTP_TIMEOUT,
            allow_redirects=False,
            proxy=str(proxy) if proxy is not None else None,
            proxy_headers=to_proxy,
        ) as resp:
            status, raw = resp.status, await resp.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise OAuthError(f"{what}: OAuth server unreachable ({type(exc).__name__})") from None
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    # The error code and the server's description are the only text of the answer quoted
    # in messages; a server echoing what we sent must not put a secret in them.
    error = " ".join(
        filter(None, (text_of(body.get("error")), text_of(body.get("error_description"))))
    )
    for key in ("refresh_token", "device_code", "code_verifier"):
        if form.get(key):
            error = error.replace(form[key], "[REDACTED]")
    return status, body, f"HTTP {status}" + (f" {error[:200]}" if error else "")


class TokenHTTP:
    """The one aiohttp session of every OAuth token call (/v1 calls go through the wire
    client): made at first use, inside the running loop; its owner closes it."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("User-Agent",),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class OAuthAccount:
    """A qwen-code login used as an upstream account: hands out fresh access tokens."""

    def __init__(
        self,
        name: str,
        credentials_path: str,
        token_url: str = DEFAULT_TOKEN_URL,
        client_id: str = DEFAULT_CLIENT_ID,
        refresh_skew: float = 60.0,
        proxy: ProxyURL | None = None,
    ) -> None:
        self.name = name
        self.path = os.path.abspath(os.path.expanduser(credentials_path))
        self.token_url = token_url
        self.proxy = proxy  # what token calls go through, as the account's /v1 calls do
        self.client_id = client_id
        self.refresh_skew = refresh_skew
        self.disabled_reason: str | None = None
        self._stamp = self._stat()
        self._creds = load_credentials(self.path)
        self._inflight: asyncio.Task[Credentials] | None = None
        # Set when replicas share state: refreshes are then coordinated through Redis.
        self.share: TokenShare | None = None

    @property
    def credentials(self) -> Credentials:
        self._maybe_reload()
        return self._creds

    @property
    def base_url(self) -> str:
        return base_url_from(self.credentials.resource_url)

    async def token(self, session: aiohttp.ClientSession, now: float) -> str:
        """A valid access token; refreshes first when it expires within ``refresh_skew``."""
        creds = self._usable()
        if creds.expires_at - now > self.refresh_skew:
            return creds.access_token

        def fresh(c: Credentials) -> bool:
            return c.expires_at - time.time() > self.refresh_skew

        return (await self._refresh_once(session, now, fresh)).access_token

    async def refresh_after_401(self, session: aiohttp.ClientSession, rejected_token: str) -> str:
        """A new token after the upstream rejected ``rejected_token``; refreshes at most once."""
        creds = self._usable()
        if creds.access_token != rejected_token:
            return creds.access_token  # another request already refreshed

        def replaced(c: Credentials) -> bool:
            return c.access_token != rejected_token and c.expires_at > time.time()

        return (await self._refresh_once(session, time.time(), replaced)).access_token

    def _usable(self) -> Credentials:
        creds = self.credentials
        if self.disabled_reason is not None:
            raise OAuthRevoked(self.disabled_reason)
        return creds

    async def _refresh_once(
        self, session: aiohttp.ClientSession, now: float, good: Callable[[Credentials], bool]
    ) -> Credentials:
        # Single flight: every caller awaits the same refresh, which runs as its own task,
        # shielded: a caller that goes away must not abort it after the server already
        # rotated the refresh token, or the new one would never reach the file.
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._coordinated(session, now, good))
            # When every waiter went away nobody reads the outcome: avoid "never retrieved".
            self._inflight.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(self._inflight)

    async def _coordinated(
        self, session: aiohttp.ClientSession, now: float, good: Callable[[Credentials], bool]
    ) -> Credentials:
        """Refresh, or with replicas: take another replica's token or refresh under a lock."""
        try:
            creds = self._creds
            if self.share is None:
                return await self._refresh(session, creds, now)
            new = await self.share.refresh(
                self.name, creds, good, lambda base: self._refresh(session, base, time.time())
            )
            if new is not self._creds:  # another replica's: keep it, and on disk too
                self._creds = new
                await self._save(new)
                log.info("oauth_token_adopted", account=self.name)
            return new
        finally:
            self._inflight = None

    async def _save(self, creds: Credentials) -> None:
        try:
            # fsync may take a while on a busy disk: keep it off the event loop.
            await asyncio.to_thread(write_credentials, self.path, creds.to_json())
            self._stamp = self._stat()
        except OAuthError as exc:
            # The new token works until a restart; keep serving, but say so loudly.
            log.error("oauth_credentials_not_saved", account=self.name, error=str(exc))

    async def _refresh(
        self, session: aiohttp.ClientSession, creds: Credentials, now: float
    ) -> Credentials:
        what = f"account {self.name!r}"
        form = {
            "grant_type": "refresh_token",
            "refresh_token": creds.refresh_token,
            "client_id": self.client_id,
        }
        status, body, detail = await _post_form(session, self.token_url, form, what, self.proxy)
        if status in (400, 401) or text_of(body.get("error")) in _REVOKING_ERRORS:
            reason = f"{what}: refresh token rejected ({detail}); log in again with `qwen`"
            self.disabled_reason = reason
            log.warning("oauth_refresh_revoked", account=self.name, reason=reason)
            raise OAuthRevoked(reason)
        access, expires_in = text_of(body.get("access_token")), number_of(body.get("expires_in"))
        if status != 200 or access is None or not expires_in:
            raise OAuthError(f"{what}: token refresh failed ({detail})")
        new = replace(
            creds,
            access_token=access,
            refresh_token=text_of(body.get("refresh_token")) or creds.refresh_token,
            token_type=text_of(body.get("token_type")) or creds.token_type,
            resource_url=text_of(body.get("resource_url")) or creds.resource_url,
            expiry_date=int((now + expires_in) * 1000),
        )
        self._creds = new
        await self._save(new)
        log.info("oauth_token_refreshed", account=self.name, expires_in=expires_in)
        return new

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    def _maybe_reload(self) -> None:
        """Pick up a new login written by ``qwen`` since the file was last read."""
        stamp = self._stat()
        if stamp is None or stamp == self._stamp or self._inflight is not None:
            return
        try:
            creds = load_credentials(self.path)
        except OAuthError as exc:
            # Perhaps caught mid-write by a non-atomic writer: keep what we have, retry later.
            log.warning("oauth_credentials_unreadable", account=self.name, error=str(exc))
            return
        self._creds, self._stamp = creds, stamp
        if self.disabled_reason is not None:
            log.info("oauth_account_reenabled", account=self.name)
            self.disabled_reason = None


def pkce_challenge(verifier: str) -> str:
    """S256 code challenge: base64url(sha256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


async def device_login(
    session: aiohttp.ClientSession,
    *,
    credentials_path: str,
    device_url: str = DEFAULT_DEVICE_URL,
    token_url: str = DEFAULT_TOKEN_URL,
    client_id: str = DEFAULT_CLIENT_ID,
    scope: str = DEFAULT_SCOPE,
    out: TextIO = sys.stdout,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
    proxy_for: Callable[[str], ProxyURL | None] = lambda url: None,
) -> Credentials:
    """Log in with the device-code flow (RFC 8628, with PKCE) and save the credentials.
    ``proxy_for``: the proxy a call to a URL goes through (None: direct)."""
    what = "device login"
    verifier = secrets.token_urlsafe(48)  # 64 characters, within PKCE's 43..128
    form = {
        "client_id": client_id,
        "scope": scope,
        "code_challenge": pkce_challenge(verifier),
        "code_challenge_method": "S256",
    }
    status, body, detail = await _post_form(session, device_url, form, what, proxy_for(device_url))
    device_code, user_code = text_of(body.get("device_code")), text_of(body.get("user_code"))
    uri = text_of(body.get("verification_uri"))
    if status != 200 or not (device_code and user_code and uri):
        raise OAuthError(f"{what}: device authorization failed ({detail})")
    interval = number_of(body.get("interval")) or 5.0
    deadline = clock() + (number_of(body.get("expires_in")) or 600.0)
    print(f"To log in, open {uri} and enter the code: {user_code}", file=out)
    if complete := text_of(body.get("verification_uri_complete")):
        print(f"Or open this link directly: {complete}", file=out)
    out.flush()

    poll = {
        "grant_type": DEVICE_GRANT,
        "client_id": client_id,
        "device_code": device_code,
        "code_verifier": verifier,
    }
    while True:
        await sleep(interval)
        if clock() >= deadline:
            raise OAuthError(f"{what}: {_DEVICE_FINAL['expired_token']}")
        status, body, detail = await _post_form(
            session, token_url, poll, what, proxy_for(token_url)
        )
        error = body.get("error")
        if status == 200 and not error:
            break
        if error == "authorization_pending" or (status >= 500 and not error):
            continue
        if error == "slow_down":
            interval += 5
            continue
        if isinstance(error, str) and error in _DEVICE_FINAL:
            raise OAuthError(f"{what}: {_DEVICE_FINAL[error]}")
        raise OAuthError(f"{what}: token request failed ({detail})")

    expires_in = number_of(body.get("expires_in"))
    if not expires_in:
        raise OAuthError(f"{what}: the token answer has no valid expires_in")
    answer = {k: body.get(k) for k in KNOWN_FIELDS}
    answer["expiry_date"] = int((clock() + expires_in) * 1000)
    creds = credentials_from(answer, f"{what}: token answer")
    write_credentials(credentials_path, creds.to_json())
    return creds
