"""The reframer: bytes in, complete events out, however the bytes are split.

Every fixture runs whole, one byte at a time, split at every position and (when
short) at every pair of positions; the properties at the end do the same for
generated streams and for arbitrary bytes.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.sse import (
    BOM,
    DEFAULT_MAX_EVENT_BYTES,
    Comment,
    Event,
    EventTooLarge,
    Item,
    Reframer,
    SSEError,
    Stray,
    looks_like_sse,
    too_short_to_tell,
)

FFFD = "\ufffd".encode()


def run(chunks: Iterable[bytes], max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> list[Item]:
    """Feed every chunk, then close; all items in order."""
    r = Reframer(max_event_bytes)
    out: list[Item] = []
    for chunk in chunks:
        out += r.feed(chunk)
    out += r.close()
    return out


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut into reads at the given positions (empty reads included)."""
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# --- fixtures: (name, upstream bytes, expected items) ---------------------------------

CHUNK = (
    b'{"choices":[{"index":0,"delta":{"content":"w\xc3\xb6rld \xe2\x82\xac \xf0\x9f\x98\x80"}}]}'
)

FIXTURES: list[tuple[str, bytes, list[Item]]] = [
    ("lf", b"data: a\n\ndata: b\n\n", [Event(b"a"), Event(b"b")]),
    ("crlf", b"data: a\r\n\r\ndata: b\r\n\r\n", [Event(b"a"), Event(b"b")]),
    ("cr_only", b"data: a\r\rdata: b\r\r", [Event(b"a"), Event(b"b")]),
    (
        "mixed_line_ends",
        b"data: a\r\n\rdata: b\n\r\ndata: c\r\ndata: d\r\n\ndata: e\r\r\n",
        [Event(b"a"), Event(b"b"), Event(b"c\nd"), Event(b"e")],
    ),
    ("cr_then_crlf_is_two_line_ends", b"data: a\r\r\n", [Event(b"a")]),
    ("lf_then_cr_is_two_line_ends", b"data: a\n\rdata: b\n\r", [Event(b"a"), Event(b"b")]),
    ("bom", BOM + b"data: a\n\n", [Event(b"a")]),
    ("bom_crlf", BOM + b"data: a\r\n\r\n", [Event(b"a")]),
    ("second_bom_is_data", BOM + BOM + b"data: a\n\n", [Stray(BOM + b"data: a")]),
    ("bom_inside_data_is_kept", b"data: " + BOM + b"a\n\n", [Event(BOM + b"a")]),
    (
        "bom_at_start_of_a_later_line_is_kept",
        b"data: a\n\n" + BOM + b"data: b\n\n",
        [Event(b"a"), Stray(BOM + b"data: b")],
    ),
    ("ping_block", b"event: ping\n\ndata: a\n\n", [Event(None, b"ping"), Event(b"a")]),
    ("ping_with_data", b"event: ping\ndata: {}\n\n", [Event(b"{}", b"ping")]),
    ("event_name_with_data", b"event: delta\ndata: x\n\n", [Event(b"x", b"delta")]),
    ("last_event_name_wins", b"event: a\nevent: b\ndata: x\n\n", [Event(b"x", b"b")]),
    ("retry_block", b"retry: 3000\n\n", [Event(None, retry=3000)]),
    ("retry_with_data", b"retry: 5\ndata: a\n\n", [Event(b"a", retry=5)]),
    ("retry_not_digits_is_ignored", b"retry: 3s\n\nretry: -1\n\n", [Event(), Event()]),
    ("retry_absurdly_long_is_ignored", b"retry: " + b"9" * 5000 + b"\n\n", [Event()]),
    ("id_block", b"id: 7\n\n", [Event(None, id=b"7")]),
    ("id_with_data", b"id: 7\ndata: a\n\n", [Event(b"a", id=b"7")]),
    ("id_with_nul_is_ignored", b"id: 1\nid: 2\x003\ndata: a\n\n", [Event(b"a", id=b"1")]),
    ("empty_id", b"id\ndata: a\n\n", [Event(b"a", id=b"")]),
    ("id_is_per_event", b"id: 1\ndata: a\n\ndata: b\n\n", [Event(b"a", id=b"1"), Event(b"b")]),
    ("empty_data_keepalive", b"data:\n\ndata: \n\n", [Event(b""), Event(b"")]),
    ("comment", b": hello\n\n", [Comment(b" hello")]),
    ("empty_comment", b":\n\n", [Comment(b"")]),
    ("comment_without_space", b":ping\n", [Comment(b"ping")]),
    (
        "comment_inside_event_comes_out_first",
        b"data: a\n: c\ndata: b\n\n",
        [Comment(b" c"), Event(b"a\nb")],
    ),
    ("two_data_lines", b"data: a\ndata: b\n\n", [Event(b"a\nb")]),
    ("two_empty_data_lines", b"data:\ndata:\n\n", [Event(b"\n")]),
    ("three_data_lines_crlf", b"data: {\r\ndata: 1\r\ndata: }\r\n\r\n", [Event(b"{\n1\n}")]),
    ("missing_final_blank_line", b"data: a\n\ndata: b\n", [Event(b"a"), Event(b"b")]),
    ("missing_final_line_end", b"data: a\n\ndata: b", [Event(b"a"), Event(b"b")]),
    ("missing_final_crlf", b"data: a\r\n\r\ndata: b\r", [Event(b"a"), Event(b"b")]),
    ("field_without_colon", b"data\n\n", [Event(b"")]),
    ("two_fields_without_colon", b"data\ndata\n\n", [Event(b"\n")]),
    ("event_without_colon", b"event\ndata: x\n\n", [Event(b"x")]),
    ("data_no_space", b"data:no-space\n\n", [Event(b"no-space")]),
    ("data_two_spaces_strips_one", b"data:  two spaces\n\n", [Event(b" two spaces")]),
    ("colon_inside_value", b"data: a: b\n\ndata::x\n\n", [Event(b"a: b"), Event(b":x")]),
    ("tab_is_not_stripped", b"data:\tx\n\n", [Event(b"\tx")]),
    ("trailing_space_is_kept", b"data: x \n\n", [Event(b"x ")]),
    ("unknown_field", b"foo: bar\n\n", [Stray(b"foo: bar")]),
    ("field_names_are_case_sensitive", b"Data: x\n\n", [Stray(b"Data: x")]),
    ("field_name_with_space", b"data : x\n\n", [Stray(b"data : x")]),
    (
        "unknown_field_inside_event",
        b"data: a\nfoo\ndata: b\n\n",
        [Stray(b"foo"), Event(b"a\nb")],
    ),
    (
        "bare_json_error_line",
        b'{"error": {"message": "quota"}}\n\n',
        [Stray(b'{"error": {"message": "quota"}}')],
    ),
    ("done", b"data: [DONE]\n\n", [Event(b"[DONE]")]),
    ("blank_lines_only", b"\n\n\r\n\r\r\n", []),
    ("empty_stream", b"", []),
    ("invalid_utf8_in_data", b"data: a\xffb\n\n", [Event(b"a" + FFFD + b"b")]),
    ("invalid_utf8_in_event_name", b"event: \xc3\ndata: x\n\n", [Event(b"x", FFFD)]),
    ("invalid_utf8_in_id", b"id: \xfe\ndata: x\n\n", [Event(b"x", id=FFFD)]),
    ("invalid_utf8_in_comment", b": \xed\xa0\x80\n", [Comment(b" " + FFFD * 3)]),
    ("invalid_utf8_in_stray", b"\x80\n", [Stray(FFFD)]),
    ("multibyte_characters", b"data: " + CHUNK + b"\n\n", [Event(CHUNK)]),
    (
        "openai_chat_stream",
        b"data: " + CHUNK + b"\n\ndata: " + CHUNK + b"\n\ndata: [DONE]\n\n",
        [Event(CHUNK), Event(CHUNK), Event(b"[DONE]")],
    ),
    (
        "everything_at_once",
        BOM
        + b": open\r\n\r\nretry: 10\rid: 1\r\n\r\nevent: ping\n\n"
        + b'event: delta\r\ndata:{"a":\r\ndata: 1}\n\n'
        + b"data:\n\ndata: [DONE]\r\n\r\n",
        [
            Comment(b" open"),
            Event(None, retry=10, id=b"1"),
            Event(None, b"ping"),
            Event(b'{"a":\n1}', b"delta"),
            Event(b""),
            Event(b"[DONE]"),
        ],
    ),
]

SHORT = [f for f in FIXTURES if len(f[1]) <= 48]


def _params(fixtures: Sequence[tuple[str, bytes, list[Item]]]) -> list[object]:
    return [pytest.param(raw, expected, id=name) for name, raw, expected in fixtures]


@pytest.mark.parametrize(("raw", "expected"), _params(FIXTURES))
def test_fixture_fed_whole(raw: bytes, expected: list[Item]) -> None:
    assert run([raw]) == expected


@pytest.mark.parametrize(("raw", "expected"), _params(FIXTURES))
def test_fixture_fed_one_byte_at_a_time(raw: bytes, expected: list[Item]) -> None:
    assert run(bytewise(raw)) == expected


@pytest.mark.parametrize(("raw", "expected"), _params(FIXTURES))
def test_fixture_split_into_two_reads_at_every_position(raw: bytes, expected: list[Item]) -> None:
    for cut in range(len(raw) + 1):
        assert run(split_at(raw, [cut])) == expected, cut


@pytest.mark.parametrize(("raw", "expected"), _params(SHORT))
def test_fixture_split_into_three_reads_at_every_pair_of_positions(
    raw: bytes, expected: list[Item]
) -> None:
    for a, b in itertools.combinations_with_replacement(range(len(raw) + 1), 2):
        assert run(split_at(raw, [a, b])) == expected, (a, b)


@pytest.mark.parametrize(("raw", "expected"), _params(FIXTURES))
def test_fixture_with_empty_reads_between_bytes(raw: bytes, expected: list[Item]) -> None:
    chunks = [piece for byte in bytewise(raw) for piece in (b"", byte)]
    assert run([b"", *chunks, b""]) == expected


# --- line ends ------------------------------------------------------------------------


def test_crlf_split_across_reads_is_one_line_end() -> None:
    r = Reframer()
    assert r.feed(b"data: a\r") == []
    # Were the LF a second line end, "a" would be dispatched here on its own.
    assert r.feed(b"\ndata: b\n") == []
    assert r.feed(b"\n") == [Event(b"a\nb")]


def test_crlf_split_by_empty_reads_is_one_line_end() -> None:
    r = Reframer()
    assert r.feed(b"data: a\r") == []
    assert r.feed(b"") == []
    assert r.feed(b"") == []
    assert r.feed(b"\n") == []
    assert r.feed(b"data: b\r\n\r\n") == [Event(b"a\nb")]


def test_cr_at_end_of_read_then_cr_is_a_blank_line() -> None:
    r = Reframer()
    assert r.feed(b"data: a\r") == []
    assert r.feed(b"\r") == [Event(b"a")]


def test_cr_at_end_of_read_then_lf_lf_is_line_end_and_blank_line() -> None:
    r = Reframer()
    assert r.feed(b"data: a\r") == []
    assert r.feed(b"\n\n") == [Event(b"a")]


def test_lf_after_a_cr_is_swallowed_only_once() -> None:
    r = Reframer()
    assert r.feed(b"data: a\r") == []
    assert r.feed(b"\n") == []
    assert r.feed(b"\n") == [Event(b"a")]


def test_cr_ending_an_event_then_lf_starting_the_next_read() -> None:
    r = Reframer()
    assert r.feed(b"data: a\r\r") == [Event(b"a")]
    # The LF is the partner of the blank line's CR, not a further blank line.
    assert r.feed(b"\ndata: b\r\n") == []
    assert r.feed(b"\r\n") == [Event(b"b")]


# --- events come out as soon as they are complete -------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"data: a\n\n", b"data: a\r\r", b"data: a\r\n\r\n", b"data: a\n\r", b"data: a\r\n\r"],
)
def test_event_is_handed_out_by_the_read_that_completes_it(raw: bytes) -> None:
    assert Reframer().feed(raw) == [Event(b"a")]


def test_cr_cr_terminated_event_is_not_held_back_for_a_possible_lf() -> None:
    r = Reframer()
    assert r.feed(b"data: a\r") == []
    assert r.feed(b"\r") == [Event(b"a")]
    assert not r.pending


def test_event_is_held_until_its_blank_line() -> None:
    r = Reframer()
    assert r.feed(b"data: a\n") == []
    assert r.pending
    assert r.feed(b"data: b\n") == []
    assert r.feed(b"\n") == [Event(b"a\nb")]
    assert not r.pending


def test_comment_is_handed_out_at_its_line_end() -> None:
    r = Reframer()
    assert r.feed(b": hi") == []
    assert r.feed(b"\r") == [Comment(b" hi")]


def test_each_read_returns_only_what_it_completed() -> None:
    r = Reframer()
    assert r.feed(b"data: a\n\ndata: b\n\nda") == [Event(b"a"), Event(b"b")]
    assert r.feed(b"ta: c\n\n") == [Event(b"c")]
    assert r.close() == []


# --- BOM ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cuts", [[1], [2], [1, 2], [3], [0, 1, 1, 2, 2, 3]], ids=["1+2", "2+1", "1+1+1", "3", "empties"]
)
def test_bom_split_across_reads_is_dropped(cuts: list[int]) -> None:
    assert run(split_at(BOM + b"data: a\n\n", cuts)) == [Event(b"a")]


def test_bom_bytes_wait_for_the_next_read() -> None:
    r = Reframer()
    assert r.feed(BOM[:1]) == []
    assert r.feed(BOM[1:2]) == []
    assert r.feed(BOM[2:] + b"data: a\n\n") == [Event(b"a")]


def test_only_one_bom_is_dropped() -> None:
    assert run([BOM, BOM + b"data: a\n\n"]) == [Stray(BOM + b"data: a")]
    assert run([BOM + BOM[:1], BOM[1:] + b": c\n"]) == [Stray(BOM + b": c")]


def test_bom_after_the_first_read_is_kept() -> None:
    assert run([b"data: a\n", BOM + b"\n"]) == [Stray(BOM), Event(b"a")]


def test_stream_of_only_a_bom_yields_nothing() -> None:
    assert run([BOM]) == []
    assert run(bytewise(BOM)) == []


def test_partial_bom_then_other_bytes_is_data() -> None:
    assert run([BOM[:2], b"data: a\n\n"]) == [Stray(FFFD + b"data: a")]
    assert run([BOM[:1], b"\n"]) == [Stray(FFFD)]


def test_partial_bom_at_end_of_stream_is_kept_as_a_line() -> None:
    assert run([BOM[:2]]) == [Stray(FFFD)]


# --- UTF-8 ----------------------------------------------------------------------------


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_multibyte_character_split_across_reads_passes_untouched(char: str) -> None:
    raw = ("data: a" + char + "b\n\n").encode()
    start = len(b"data: a")
    for cut in range(start, start + len(char.encode()) + 1):
        assert run(split_at(raw, [cut])) == [Event(("a" + char + "b").encode())]


@pytest.mark.parametrize(
    ("bad", "good"),
    [
        (b"\xff", "\ufffd"),
        (b"\xc3(", "\ufffd("),
        (b"\xe2\x82", "\ufffd"),
        (b"\xed\xa0\x80", "\ufffd" * 3),  # an encoded surrogate is not UTF-8
        (b"\xc0\xaf", "\ufffd\ufffd"),  # overlong
    ],
)
def test_invalid_utf8_becomes_replacement_character(bad: bytes, good: str) -> None:
    assert run([b"data: <" + bad + b">\n\n"]) == [Event(("<" + good + ">").encode())]


def test_truncated_character_at_end_of_stream_becomes_replacement_character() -> None:
    assert run([b"data: a\xe2\x82"]) == [Event(b"a" + FFFD)]


# --- end of stream --------------------------------------------------------------------


def test_close_delivers_an_unterminated_last_event() -> None:
    r = Reframer()
    assert r.feed(b"data: a\ndata: b\n") == []
    assert r.close() == [Event(b"a\nb")]


def test_close_delivers_a_last_line_without_line_end() -> None:
    r = Reframer()
    assert r.feed(b"event: x\ndata: a") == []
    assert r.pending
    assert r.close() == [Event(b"a", b"x")]
    assert not r.pending


def test_close_after_a_cr_delivers_the_event_once() -> None:
    r = Reframer()
    assert r.feed(b"data: a\r") == []
    assert r.close() == [Event(b"a")]


def test_close_delivers_a_last_comment_without_line_end() -> None:
    assert run([b"data: a\n\n: bye"]) == [Event(b"a"), Comment(b" bye")]


def test_close_with_nothing_pending_returns_nothing() -> None:
    r = Reframer()
    assert not r.pending
    assert r.close() == []
    r = Reframer()
    assert r.feed(b"data: a\n\n") == [Event(b"a")]
    assert r.close() == []


def test_stray_line_alone_leaves_nothing_pending_after_its_line_end() -> None:
    r = Reframer()
    assert r.feed(b"junk\n") == [Stray(b"junk")]
    assert not r.pending
    assert r.close() == []


# --- the Event type -------------------------------------------------------------------


def test_data_lines_of_an_event() -> None:
    assert Event(b"a\n\nb").data_lines == [b"a", b"", b"b"]
    assert Event(b"").data_lines == [b""]
    assert Event(None).data_lines == []


# --- bounded memory -------------------------------------------------------------------


def test_event_of_many_lines_over_the_limit_raises() -> None:
    r = Reframer(max_event_bytes=100)
    with pytest.raises(EventTooLarge) as info:
        for _ in range(20):
            r.feed(b"data: 0123456789\n")
    assert info.value.limit == 100
    assert "100" in str(info.value)
    assert isinstance(info.value, SSEError)


@pytest.mark.parametrize("size", [1, 7, 100, 4096])
def test_line_that_never_ends_raises_before_the_stream_ends(size: int) -> None:
    limit = 1000
    r = Reframer(max_event_bytes=limit)
    fed = 0
    with pytest.raises(EventTooLarge):
        while True:
            r.feed(b"x" * size)
            fed += size
            assert fed <= limit
    # Raised by the first read that took the buffer past the limit.
    assert fed + size > limit


def test_line_that_never_ends_raises_when_fed_whole() -> None:
    with pytest.raises(EventTooLarge):
        Reframer(max_event_bytes=1000).feed(b"data: " + b"x" * 1000)


@pytest.mark.parametrize("end", [b"\n", b"\r", b"\r\n"])
def test_event_at_the_limit_passes_and_one_byte_more_raises(end: bytes) -> None:
    # The size of an event counts each line end as one byte; the blank line is free.
    line = b"data: " + b"x" * 50
    limit = len(line) + 1
    for chunks in ([line + end + end], bytewise(line + end + end)):
        assert run(chunks, limit) == [Event(b"x" * 50)]
        with pytest.raises(EventTooLarge):
            run(chunks, limit - 1)


def test_limit_applies_to_each_event_not_to_the_stream() -> None:
    event = b"data: " + b"x" * 60 + b"\n\n"
    assert run([event * 100], max_event_bytes=100) == [Event(b"x" * 60)] * 100


def test_limit_counts_the_lines_so_far_and_the_unfinished_one() -> None:
    r = Reframer(max_event_bytes=14)
    assert r.feed(b"data: 1\n") == []  # 8 bytes
    assert r.feed(b"data: ") == []  # 14
    with pytest.raises(EventTooLarge):
        r.feed(b"2")  # 15


# --- linear work ----------------------------------------------------------------------

MB = 1 << 20


def _feed_bytewise(r: Reframer, raw: bytes) -> list[Item]:
    out: list[Item] = []
    for i in range(len(raw)):
        out += r.feed(raw[i : i + 1])
    return out


def test_one_megabyte_event_fed_byte_by_byte_is_scanned_linearly() -> None:
    raw = b"data: " + b"x" * MB + b"\n\n"
    r = Reframer()
    assert _feed_bytewise(r, raw) == [Event(b"x" * MB)]
    assert r.bytes_scanned <= 3 * len(raw)


def test_event_of_many_short_crlf_lines_fed_byte_by_byte_is_scanned_linearly() -> None:
    raw = b"data: ab\r\n" * 20_000 + b"\r\n"
    r = Reframer()
    assert _feed_bytewise(r, raw) == [Event(b"\n".join([b"ab"] * 20_000))]
    assert r.bytes_scanned <= 3 * len(raw)


def test_cr_only_stream_fed_byte_by_byte_is_scanned_linearly() -> None:
    raw = b"data: ab\r\r" * 20_000
    r = Reframer()
    assert _feed_bytewise(r, raw) == [Event(b"ab")] * 20_000
    assert r.bytes_scanned <= 3 * len(raw)


def test_large_read_of_many_events_is_scanned_once() -> None:
    raw = b"data: 0123456789\r\n\r\n" * 10_000
    r = Reframer()
    assert len(r.feed(raw)) == 10_000
    assert r.bytes_scanned <= len(raw)


def test_never_ending_line_fed_in_small_reads_is_scanned_linearly() -> None:
    r = Reframer()
    for _ in range(MB // 256):
        assert r.feed(b"y" * 256) == []
    assert r.bytes_scanned <= 3 * MB


# --- properties -----------------------------------------------------------------------

LINE_ENDS = (b"\n", b"\r\n", b"\r")
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)


@dataclass(frozen=True)
class Line:
    """One generated line: a field (or comment/stray) and how it is written."""

    kind: str  # data | event | id | retry | comment | stray
    value: str
    form: str  # "space" -> "name: value", "tight" -> "name:value", "bare" -> "name"

    def encode(self) -> bytes:
        value = self.value.encode()
        if self.kind == "comment":
            return b":" + value
        if self.kind == "stray":
            return b"x-" + self.form.encode() + b": " + value
        name = self.kind.encode()
        if self.form == "bare" and not value:
            return name
        if self.form == "tight" and not value.startswith(b" "):
            return name + b":" + value
        return name + b": " + value


retry_values = st.one_of(st.integers(0, 10**9).map(str), TEXT)
lines = st.builds(
    Line,
    st.sampled_from(["data", "data", "data", "event", "id", "retry", "comment", "stray"]),
    TEXT,
    st.sampled_from(["space", "tight", "bare"]),
) | st.builds(Line, st.just("retry"), retry_values, st.just("space"))


def expected_items(blocks: list[list[Line]]) -> list[Item]:
    """What the reframer must produce for these blocks, straight from the SSE rules."""
    out: list[Item] = []
    for block in blocks:
        data: list[bytes] = []
        event, fields = b"", False
        id_: bytes | None = None
        retry: int | None = None
        for line in block:
            value = line.value.encode()
            if line.kind == "comment":
                out.append(Comment(value))
                continue
            if line.kind == "stray":
                out.append(Stray(line.encode()))
                continue
            fields = True
            if line.kind == "data":
                data.append(value)
            elif line.kind == "event":
                event = value
            elif line.kind == "id" and b"\0" not in value:
                id_ = value
            elif line.kind == "retry" and value.isdigit():
                retry = int(value)
        if fields:
            out.append(Event(b"\n".join(data) if data else None, event, id_, retry))
    return out


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[bytes], list[Item]]:
    """A serialized stream, the same stream as one read per block, and its items."""
    blocks = draw(st.lists(st.lists(lines, max_size=5), max_size=6))
    terminated = draw(st.booleans())  # False: the last block lacks its blank line
    bom = draw(st.booleans())
    pieces: list[bytes] = []
    prev_end = b""
    for i, block in enumerate(blocks):
        piece = BOM if bom and i == 0 else b""
        rows = [line.encode() for line in block]
        last = i == len(blocks) - 1
        if terminated or not last:
            rows.append(b"")
        for j, row in enumerate(rows):
            end = draw(st.sampled_from(LINE_ENDS))
            if prev_end == b"\r" and not row and end == b"\n":
                end = b"\r\n"  # else the LF would merely complete the previous CR
            if last and not terminated and j == len(rows) - 1:
                end = draw(st.sampled_from([*LINE_ENDS, b""]))
            piece += row + end
            prev_end = end
        pieces.append(piece)
    return b"".join(pieces), pieces, expected_items(blocks)


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=12))
    return split_at(data, cuts)


@settings(max_examples=300, deadline=None)
@given(st.data(), streams())
def test_any_stream_split_any_way_gives_the_items_of_the_stream_whole(
    data: st.DataObject, stream: tuple[bytes, list[bytes], list[Item]]
) -> None:
    raw, _, expected = stream
    assert run([raw]) == expected
    assert run(data.draw(splits(raw))) == expected


@settings(max_examples=100, deadline=None)
@given(streams())
def test_any_stream_fed_one_byte_at_a_time_gives_the_same_items(
    stream: tuple[bytes, list[bytes], list[Item]],
) -> None:
    raw, _, expected = stream
    assert run(bytewise(raw)) == expected


@settings(max_examples=200, deadline=None)
@given(streams())
def test_each_block_comes_out_of_the_read_that_completes_it(
    stream: tuple[bytes, list[bytes], list[Item]],
) -> None:
    _, pieces, _ = stream
    r = Reframer()
    for piece in pieces[:-1]:
        # Each piece but the last ends with its blank line: nothing may wait for more.
        assert r.feed(piece) == run([piece.removeprefix(BOM)])
    if pieces:
        out = r.feed(pieces[-1]) + r.close()
        assert out == run([pieces[-1].removeprefix(BOM)])


# Arbitrary bytes, biased towards the bytes that matter to the grammar.
TOKENS = [b"data", b"event", b"id", b"retry", b":", b" ", b"\r", b"\n", b"\r\n", b"x", b"7"]
TOKENS += [BOM, BOM[:1], BOM[1:], b"\xe2\x82", b"\xac", b"\xff", b"\0", b"{"]
noise = st.one_of(
    st.binary(max_size=64),
    st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join),
)


def reference(raw: bytes) -> list[Item]:
    """A whole-buffer parse of ``raw``: the plain reading of the SSE rules."""
    raw = raw.removeprefix(BOM)
    *lines, tail = re.split(rb"\r\n|\r|\n", raw)
    if tail:
        lines.append(tail)
    lines.append(b"")

    def utf8(b: bytes) -> bytes:
        return b.decode("utf-8", "replace").encode()

    out: list[Item] = []
    data: list[bytes] = []
    event, fields = b"", False
    id_: bytes | None = None
    retry: int | None = None
    for line in lines:
        if not line:
            if fields:
                joined = utf8(b"\n".join(data)) if data else None
                out.append(Event(joined, utf8(event), id_, retry))
            data, event, fields = [], b"", False
            id_, retry = None, None
            continue
        if line.startswith(b":"):
            out.append(Comment(utf8(line[1:])))
            continue
        name, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if name not in (b"data", b"event", b"id", b"retry"):
            out.append(Stray(utf8(line)))
            continue
        fields = True
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value
        elif name == b"id" and b"\0" not in value:
            id_ = utf8(value)
        elif name == b"retry" and value.isdigit() and len(value) <= 18:
            retry = int(value)
    return out


def _items_bytes(items: list[Item]) -> list[bytes]:
    out: list[bytes] = []
    for item in items:
        if isinstance(item, Event):
            out += [item.data or b"", item.event, item.id or b""]
        elif isinstance(item, Comment):
            out.append(item.text)
        else:
            out.append(item.line)
    return out


@settings(max_examples=400, deadline=None)
@given(st.data(), noise)
def test_arbitrary_bytes_split_any_way_match_a_whole_buffer_parse(
    data: st.DataObject, raw: bytes
) -> None:
    expected = reference(raw)
    assert run([raw]) == expected
    assert run(data.draw(splits(raw))) == expected
    for b in _items_bytes(expected):
        b.decode("utf-8")  # every item is valid UTF-8


@settings(max_examples=300, deadline=None)
@given(st.data(), noise, st.integers(1, 40))
def test_arbitrary_bytes_raise_nothing_but_event_too_large(
    data: st.DataObject, raw: bytes, limit: int
) -> None:
    try:
        whole: list[Item] | None = run([raw], limit)
    except EventTooLarge:
        whole = None
    try:
        split: list[Item] | None = run(data.draw(splits(raw)), limit)
    except EventTooLarge:
        split = None
    # Whether the limit is hit does not depend on how the bytes were split.
    assert split == whole
    if whole is not None:
        assert whole == reference(raw)


def test_events_completed_before_the_limit_is_hit_are_kept() -> None:
    r = Reframer(max_event_bytes=64)
    with pytest.raises(EventTooLarge) as info:
        r.feed(b"data: a\n\ndata: b\n\ndata: " + b"x" * 100)
    assert [e.data for e in info.value.completed if isinstance(e, Event)] == [b"a", b"b"]


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b'data: {"a":1}\n\n', True),
        (b"data:x", True),
        (b": keep-alive\n\n", True),
        (b"event: ping\n", True),
        (b"id: 1\n", True),
        (b"retry: 10\n", True),
        (BOM + b"data: {}", True),
        (b"\r\n\r\ndata: {}", True),
        (b'{"id": "chatcmpl-1"}', False),
        (b" data: {}", False),  # a leading space makes it a field named " data"
        (b"", False),
        (b"<html>", False),
        (b"dat", False),
    ],
)
def test_looks_like_sse_by_the_first_bytes(head: bytes, expected: bool) -> None:
    assert looks_like_sse(head) is expected


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"", True),
        (BOM[:2], True),
        (b"\r\n", True),
        (b"da", True),
        (BOM + b"\nev", True),
        (b"data", True),
        (b"data:", False),
        (b":", False),
        (b"{", False),
        (b"dx", False),
        (b"<html>", False),
    ],
)
def test_too_short_to_tell_until_a_field_name_is_whole(head: bytes, expected: bool) -> None:
    assert too_short_to_tell(head) is expected
