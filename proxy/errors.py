"""One exception tree; each error knows its HTTP status and OpenAI error body."""

from __future__ import annotations

import json
from typing import Any


def openai_error(
    message: str,
    error_type: str = "upstream_error",
    code: str | int | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """The OpenAI error object, ``{"error": {...}}``: the one builder of it (every
    answer, error event and wrapped upstream error of seamline's is made here)."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class SeamlineError(Exception):
    """Root of every error seamline answers a client with."""

    status = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return openai_error(self.message, self.error_type, self.code)

    def json_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()


class ClientRequestError(SeamlineError):
    """The request itself is wrong."""

    status = 400
    error_type = "invalid_request_error"


class InvalidJSON(ClientRequestError):
    code = "invalid_json"


class MissingModel(ClientRequestError):
    code = "missing_model"


class InvalidPath(ClientRequestError):
    code = "invalid_path"


class BadEncoding(ClientRequestError):
    code = "invalid_content_encoding"


class UnsupportedEncoding(SeamlineError):
    status = 415
    error_type = "invalid_request_error"
    code = "unsupported_content_encoding"


class RequestTimeout(SeamlineError):
    status = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class Unauthorized(SeamlineError):
    status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(SeamlineError):
    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(SeamlineError):
    status = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"


class BodyTooLarge(SeamlineError):
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class UpstreamError(SeamlineError):
    """Root of failures of the upstream call (httpx-style: network, timeout, protocol)."""

    status = 502
    error_type = "upstream_error"
    code = "bad_gateway"


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamConnectTimeout(UpstreamTimeout):
    """No connection within ``timeouts.connect``: the account, not the request, failed."""


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"


class StreamTooLarge(UpstreamError):
    code = "event_too_large"


class NoAccount(SeamlineError):
    """No account can take the request right now."""

    status = 503
    error_type = "service_unavailable"
    code = "no_account_available"


class RateLimited(NoAccount):
    status = 429
    error_type = "rate_limit_error"
    code = "rate_limited"
