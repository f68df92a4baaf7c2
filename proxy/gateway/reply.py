"""The answers a handler gives: a whole one, or one it already streamed."""

from __future__ import annotations

from multidict import CIMultiDict


class Reply:
    """A whole answer: status, headers, body."""

    __slots__ = ("body", "headers", "status")

    prepared = False  # a streamed answer went out already; see ``Streamed``

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: CIMultiDict[str] | dict[str, str] | None = None,
        content_type: str | None = None,
    ) -> None:
        self.status = status
        self.body = body
        # A multidict passed in is the caller's to give away: not copied.
        self.headers: CIMultiDict[str] = (
            headers if isinstance(headers, CIMultiDict) else CIMultiDict(headers or ())
        )
        if content_type is not None:
            self.headers["Content-Type"] = content_type

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


class Streamed(Reply):
    """An answer the handler already sent, head and body, through the request."""

    __slots__ = ()

    prepared = True
