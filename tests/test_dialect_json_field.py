"""A JSON string field decoded while its JSON arrives in pieces cut anywhere."""

from __future__ import annotations

import itertools
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.dialects.json_field import JsonField, final


def decode(pieces: list[str]) -> tuple[str, JsonField]:
    field = JsonField("input")
    return "".join(field.feed(p) for p in pieces), field


def test_the_text_comes_as_it_is_decoded() -> None:
    field = JsonField("input")
    assert field.feed('{"in') == ""
    assert field.feed('put": "a') == "a"
    assert field.feed("\\") == ""  # half an escape waits
    assert field.feed("n\\u00") == "\n"
    assert field.feed("e9") == "é"
    assert field.feed("\\ud83d") == ""  # a high surrogate waits for its low half
    assert field.feed('\\ude00"}') == "😀"
    assert field.closed and field.text == "a\né😀"


def test_a_lone_high_surrogate_is_decoded_as_json_decodes_it() -> None:
    text, _ = decode(['{"input":"\\ud83dx"}'])
    assert text == json.loads('"\\ud83dx"')


def test_another_first_key_is_not_streamed() -> None:
    text, field = decode(['{"other": 1, "input": "x"}'])
    assert text == "" and not field.streaming
    assert final('{"other": 1, "input": "x"}', "input") == "x"


def test_final_falls_back_to_the_raw_text() -> None:
    assert final("*** Begin Patch", "input") == "*** Begin Patch"
    assert final('"just a string"', "input") == "just a string"
    assert final('{"input": 3}', "input") == '{"input": 3}'
    assert final('{"input": "a\nb"}', "input") == "a\nb"  # a raw newline, as models send


@settings(max_examples=300, deadline=None)
@given(st.text(), st.booleans(), st.lists(st.integers(0, 10_000), max_size=8), st.booleans())
def test_any_split_of_any_encoding_decodes_to_the_text(
    text: str, ascii_only: bool, cuts: list[int], spaced: bool
) -> None:
    args = json.dumps({"input": text}, ensure_ascii=ascii_only)
    if spaced:
        args = '  {\n "input" :\t' + args[len('{"input": ') :]
    bounds = sorted({0, len(args), *(c % (len(args) + 1) for c in cuts)})
    pieces = [args[a:b] for a, b in itertools.pairwise(bounds)]
    decoded, field = decode(pieces)
    assert decoded == text == final(args, "input")
    assert field.closed
