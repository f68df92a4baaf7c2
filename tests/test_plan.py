"""What goes upstream: the client's bytes, with only the fields seamline must add."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.plan import ClientRequest, inspect_body, plan_request


def planned(body: bytes, model: str | None = None, force_stream: bool = True) -> Any:
    req = inspect_body(body, needs_model=True)
    return plan_request(req, True, model or req.model, force_stream)


def test_the_usage_option_is_spliced_in_and_the_clients_bytes_stay_as_they_were() -> None:
    body = (
        b'  {"model": "m",\n "messages": [{"role":"user","content":"h\\u00e9 1.0"}],'
        b' "stream": true}'
    )
    plan = planned(body)
    sent = plan.bodies.send
    assert sent == b'  {"stream_options":{"include_usage":true},' + body.lstrip()[1:]
    assert plan.bodies.plain == body  # what an account that refuses the option gets
    assert plan.strip_usage and not plan.client_usage


def test_an_aliased_request_without_the_option_keeps_the_alias() -> None:
    plan = planned(b'{"model":"gpt-4o","stream":true}', "qwen-max")
    assert plan.bodies.plain is not None
    assert json.loads(plan.bodies.plain) == {"model": "qwen-max", "stream": True}
    assert plan.bodies.body(False, True) == (plan.bodies.plain, False)
    assert plan.bodies.body(False, False) == (plan.bodies.send, True)


def test_a_client_that_asked_for_usage_is_sent_as_it_is() -> None:
    body = b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}'
    plan = planned(body)
    assert plan.bodies.send is body
    assert plan.bodies.plain is None  # the client's own option is never taken away
    assert plan.client_usage and not plan.strip_usage


def test_other_stream_options_are_kept_beside_include_usage() -> None:
    body = b'{"model":"m","stream":true,"stream_options":{"x":1}}'
    sent = json.loads(planned(body).bodies.send)
    assert sent["stream_options"] == {"x": 1, "include_usage": True}


def test_an_alias_replaces_the_model() -> None:
    sent = json.loads(planned(b'{"model":"gpt-4o","stream":true}', "qwen-max").bodies.send)
    assert sent["model"] == "qwen-max"
    assert sent["stream_options"] == {"include_usage": True}


def test_the_forced_stream_body_is_made_only_when_an_account_forces_streams() -> None:
    body = b'{"model":"m","messages":[]}'
    assert planned(body, force_stream=False).bodies.forced is None
    forced = planned(body).bodies.forced
    assert forced is not None
    assert json.loads(forced) == {
        "model": "m",
        "messages": [],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    forced_plain = planned(body).bodies.forced_plain
    assert forced_plain is not None
    assert json.loads(forced_plain) == {"model": "m", "messages": [], "stream": True}
    assert planned(body).bodies.send is body


def test_an_empty_object_gets_no_stray_comma() -> None:
    req = ClientRequest(b"{ }", "m", True, {})
    sent = plan_request(req, True, "m").bodies.send
    assert sent == b'{"stream_options":{"include_usage":true} }'
    assert json.loads(sent) == {"stream_options": {"include_usage": True}}


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["messages", "n", "x", "stream_options", "stream"]), _VALUES),
    st.sampled_from([None, 1, 2]),
    st.booleans(),
)
def test_the_sent_body_parses_to_the_clients_with_the_changes(
    extra: dict[str, Any], indent: int | None, ascii_only: bool
) -> None:
    obj = {"model": "m", **extra, "stream": True}
    body = json.dumps(obj, indent=indent, ensure_ascii=ascii_only).encode()
    plan = planned(body)
    sent = json.loads(plan.bodies.send)
    options = obj.get("stream_options")
    options = options if isinstance(options, dict) else {}
    assert sent == {**obj, "stream_options": {**options, "include_usage": True}}
