"""OAuth credentials as the qwen CLI writes them: reading, checking, writing atomically.

Pure of the network: the refresh and the login live in ``oauth.py``, the sharing of
tokens between replicas in ``oauth_share.py``; both read and write through this.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.errors import UpstreamError

DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
KNOWN_FIELDS = ("access_token", "refresh_token", "token_type", "resource_url", "expiry_date")


class OAuthError(UpstreamError):
    """The account's OAuth credentials are unusable right now (file, network, server)."""

    code = "oauth_error"


class OAuthRevoked(OAuthError):
    """The token endpoint rejected the refresh token: the user must log in again."""

    code = "oauth_revoked"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Credentials:
    """One qwen-code login; ``expiry_date`` is in epoch milliseconds."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    token_type: str = "Bearer"
    resource_url: str | None = None
    expiry_date: int = 0
    # Fields of the file this module does not know; written back untouched.
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def expires_at(self) -> float:
        return self.expiry_date / 1000

    def to_json(self) -> dict[str, Any]:
        known = {k: getattr(self, k) for k in KNOWN_FIELDS}
        return {**self.extra, **{k: v for k, v in known.items() if v is not None}}


def text_of(value: Any) -> str | None:
    """``value`` when it is a non-empty string."""
    return value if isinstance(value, str) and value else None


def number_of(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


def credentials_from(data: Any, where: str) -> Credentials:
    if not isinstance(data, dict):
        raise OAuthError(f"{where}: expected a JSON object")
    access, refresh = text_of(data.get("access_token")), text_of(data.get("refresh_token"))
    if access is None or refresh is None:
        missing = "access_token" if access is None else "refresh_token"
        raise OAuthError(f"{where}: {missing} is missing or not a string")
    expiry = number_of(data.get("expiry_date", 0))
    if expiry is None:
        raise OAuthError(f"{where}: expiry_date is not a number (epoch milliseconds)")
    return Credentials(
        access_token=access,
        refresh_token=refresh,
        token_type=text_of(data.get("token_type")) or "Bearer",
        resource_url=text_of(data.get("resource_url")),
        expiry_date=int(expiry),
        extra={k: v for k, v in data.items() if k not in KNOWN_FIELDS},
    )


def load_credentials(path: str) -> Credentials:
    """Read a qwen-code credentials file (``~`` expanded)."""
    full = os.path.expanduser(path)
    try:
        with open(full, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise OAuthError(f"{full}: cannot read credentials: {exc.strerror or exc}") from None
    except ValueError as exc:
        # JSON and UTF-8 errors name a position, never the content: no token leaks.
        raise OAuthError(f"{full}: not valid JSON: {exc}") from None
    return credentials_from(data, full)


def base_url_from(resource_url: str | None) -> str:
    """The OpenAI-compatible base URL for a ``resource_url`` (usually a bare host)."""
    url = (resource_url or "").strip().rstrip("/")
    if not url:
        return DEFAULT_BASE_URL
    if "://" not in url:
        url = "https://" + url.lstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def write_credentials(path: str, data: Mapping[str, Any]) -> None:
    """Replace the file atomically: a crash leaves the old file or the new one, never half."""
    full = os.path.abspath(os.path.expanduser(path))
    directory = os.path.dirname(full)
    tmp = None
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # mkstemp opens with O_EXCL and mode 0o600: never readable by others, even briefly.
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(full)}.", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, full)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OAuthError(f"{full}: cannot write credentials: {exc.strerror or exc}") from None
        raise
    with contextlib.suppress(OSError):  # make the rename durable too; best effort
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
