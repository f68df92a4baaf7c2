"""Sans-IO server-sent-events reframer: bytes in, complete events out.

Nothing here does I/O or knows about aiohttp. The relay hands every upstream read to
:meth:`Reframer.feed` and writes out whatever complete events come back; at end of
stream it calls :meth:`Reframer.close`. Parsing follows the WHATWG event-stream
rules, with two deliberate departures that a proxy needs: an unterminated last event
is delivered rather than discarded, and an event that grows past a size limit is an
error rather than unbounded memory.
"""

from __future__ import annotations

from dataclasses import dataclass

BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_EVENT_BYTES = 8 * 1024 * 1024

_LF = 0x0A
_COLON = 0x3A
# A longer retry is no sane delay, and int() rejects digit strings past 4300 digits.
_MAX_RETRY_DIGITS = 18


class SSEError(Exception):
    """Root of the errors the reframer raises about the stream it is fed."""


class EventTooLarge(SSEError):
    """An event grew past the configured limit before it completed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upstream event exceeds the {limit}-byte limit")
        self.limit = limit
        # Items the same read completed before the limit was hit: still to deliver.
        self.completed: list[Item] = []


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event block.

    ``data`` is the data lines joined by LF, or None when the block had no data
    field at all (an ``event:``-, ``id:``- or ``retry:``-only block).
    """

    data: bytes | None = None
    event: bytes = b""
    id: bytes | None = None
    retry: int | None = None

    @property
    def data_lines(self) -> list[bytes]:
        return [] if self.data is None else self.data.split(b"\n")


@dataclass(frozen=True, slots=True)
class Comment:
    """A comment line (``: text``); ``text`` is everything after the colon."""

    text: bytes


@dataclass(frozen=True, slots=True)
class Stray:
    """A line whose field name the SSE grammar does not know.

    The grammar says to ignore such lines; the reframer hands them out anyway so
    that a caller can notice, say, a bare JSON error body inside an event stream.
    """

    line: bytes


Item = Event | Comment | Stray


_SSE_STARTS = (b"data:", b"event:", b"id:", b"retry:", b":")


def looks_like_sse(head: bytes) -> bool:
    """Whether the first bytes of a body are an event stream, whatever its label says:
    a field name or a comment first, after an optional BOM and blank lines."""
    head = head.removeprefix(BOM).lstrip(b"\r\n")
    return head.startswith(_SSE_STARTS)


def too_short_to_tell(head: bytes) -> bool:
    """Whether more bytes could still make ``head`` look like an event stream (it was
    split inside the BOM, the blank lines or the first field name)."""
    if BOM.startswith(head):
        return True
    rest = head.removeprefix(BOM).lstrip(b"\r\n")
    return not rest or any(s.startswith(rest) and s != rest for s in _SSE_STARTS)


def _valid_utf8(raw: bytes) -> bytes:
    """Return ``raw`` unchanged when it is UTF-8, else with each bad sequence as U+FFFD."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace").encode("utf-8")
    return raw


class Reframer:
    """Incremental SSE parser.

    Line ends may be CRLF, LF or a lone CR, split across reads in any way. A CR is
    taken as a line end at once (so an event ending in CR CR is never held back) and
    an LF arriving first in the next read is then swallowed as its partner.
    """

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._buf = bytearray()
        self._scanned_to = 0  # _buf[:_scanned_to] is known to hold no line end
        self._skip_lf = False
        self._at_start = True  # a BOM may still be arriving
        self._data: list[bytes] = []
        self._event = b""
        self._id: bytes | None = None
        self._retry: int | None = None
        self._fields = False  # any field seen since the last dispatch
        self._event_bytes = 0
        # Total bytes searched for line ends: lets tests prove the work is linear.
        self.bytes_scanned = 0
        # Between events: nothing buffered, no line end or BOM half-seen, no fields.
        self.idle = False

    def feed(self, data: bytes) -> list[Item]:
        """Take one read's bytes; return the events and comments it completed.

        Raises EventTooLarge when the pending event passes the limit; the events the
        read completed before that are on the exception's ``completed``.
        """
        out: list[Item] = []
        try:
            self._feed(data, out)
        except EventTooLarge as exc:
            exc.completed = out
            raise
        finally:
            self._settle()
        return out

    def _settle(self) -> None:
        # A plain attribute, not a property: the relay asks it for every read.
        self.idle = not (self._buf or self._fields or self._skip_lf or self._at_start)

    def _feed(self, data: bytes, out: list[Item]) -> None:
        buf = self._buf
        buf += data
        if self._at_start:
            if len(buf) < len(BOM) and BOM.startswith(buf):
                return
            if buf.startswith(BOM):
                del buf[: len(BOM)]
            self._at_start = False
        if self._skip_lf and buf:
            self._skip_lf = False
            if buf[0] == _LF:
                del buf[:1]
                self._scanned_to = 0
        n = len(buf)
        pos = self._scanned_to
        self.bytes_scanned += n - pos
        start = 0
        lf = buf.find(b"\n", pos)
        cr = buf.find(b"\r", pos)
        while lf != -1 or cr != -1:
            if cr == -1 or (lf != -1 and lf < cr):
                end = nxt = lf
                nxt += 1
            else:
                end = cr
                nxt = cr + 1
                if nxt == n:
                    self._skip_lf = True
                elif buf[nxt] == _LF:
                    nxt += 1
            self._line(bytes(buf[start:end]), out)
            start = nxt
            if lf != -1 and lf < nxt:
                lf = buf.find(b"\n", nxt)
            if cr != -1 and cr < nxt:
                cr = buf.find(b"\r", nxt)
        if start:
            del buf[:start]
        self._scanned_to = len(buf)
        if self._event_bytes + len(buf) > self.max_event_bytes:
            raise EventTooLarge(self.max_event_bytes)

    def close(self) -> list[Item]:
        """End of stream: complete and return whatever is still pending."""
        out: list[Item] = []
        self._at_start = False
        if self._buf:
            self._line(bytes(self._buf), out)
            self._buf.clear()
            self._scanned_to = 0
        self._dispatch(out)
        self._settle()
        return out

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished event are buffered."""
        return bool(self._buf) or self._fields

    def _line(self, line: bytes, out: list[Item]) -> None:
        if not line:
            self._dispatch(out)
            return
        self._event_bytes += len(line) + 1
        if self._event_bytes > self.max_event_bytes:
            raise EventTooLarge(self.max_event_bytes)
        if line[0] == _COLON:
            out.append(Comment(_valid_utf8(line[1:])))
            return
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
        elif name == b"id":
            if b"\0" not in value:
                self._id = _valid_utf8(value)
        elif name == b"retry":
            if value.isdigit() and len(value) <= _MAX_RETRY_DIGITS:
                self._retry = int(value)
        else:
            out.append(Stray(_valid_utf8(line)))
            return
        self._fields = True

    def _dispatch(self, out: list[Item]) -> None:
        if self._fields:
            data = _valid_utf8(b"\n".join(self._data)) if self._data else None
            out.append(Event(data, _valid_utf8(self._event), self._id, self._retry))
            self._data = []
            self._event = b""
            self._id = None
            self._retry = None
            self._fields = False
        self._event_bytes = 0
