"""Property-based fuzzing of the HTTP API against a real ``voucher-ledger serve`` process.

Whatever the input: never a 5xx, every 4xx is JSON ``{"error": "<string>"}``, and every answer of
an API route is a JSON object (or, for a list, an array). The hypothesis tests are synchronous and
call the module's server with ``urllib`` (the server is a separate process).

Inputs that once broke the service are generated on purpose: non-decimal Unicode digits such as
'²' in integer query parameters, non-UTF-8 bytes in the Authorization header, and U+0000 in a
description (each also has a named test in test_api.py).
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.e2e.api_helpers import (
    PREVIEW_KEYS,
    VOUCHER_KEYS,
    ApiServer,
    Reply,
    running_server,
    sync_call,
)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,  # no .hypothesis directory in the repository
)

JSON_HEADERS = {"Content-Type": "application/json"}
FIELDS = ["code", "credit_omr", "description", "active", "max_redemptions"]


@pytest.fixture(scope="module")
async def server(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str
) -> AsyncIterator[ApiServer]:
    async with running_server(tmp_path_factory.mktemp("fuzz"), nats_url, pg_url, "fz") as srv:
        yield srv


@pytest.fixture(scope="module")
def known(server: ApiServer) -> str:
    """A live voucher the generated codes sometimes name, so the 200 paths are fuzzed too."""
    reply = post_json(server, "/billing/vouchers/issue", {"code": "FZ-KNOWN", "credit_omr": 3})
    assert reply.status == 200, reply
    return "FZ-KNOWN"


# ---------------------------------------------------------------------------------- strategies

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
# Codes: mostly near-valid, so the handlers get past validation often.
code_like = (
    st.from_regex(r"\A\s{0,2}[A-Za-z0-9][A-Za-z0-9_-]{1,66}\s{0,2}\Z")
    | st.text(max_size=70)
    | st.sampled_from(["", "   ", "A.B", "*", ">", "ABC>", "a b c", "ABC\n", "ß" * 3, "FZ-KNOWN"])
)
# Any text, U+0000 included (PostgreSQL cannot store it: the API must refuse it with a 400).
descriptions = st.text(max_size=50) | st.just("a\x00b")
field_values: dict[str, st.SearchStrategy[Any]] = {
    "code": code_like | json_values,
    "credit_omr": st.integers(min_value=-3, max_value=20_000) | scalars,
    "description": descriptions | st.none() | st.integers(),
    "active": st.booleans() | st.none() | scalars,
    "max_redemptions": st.integers(min_value=-3, max_value=2**31 + 3) | scalars,
}
# Issue bodies built from the real field names, each with a valid or an invalid value.
issue_like = st.fixed_dictionaries(
    {},
    optional={name: strategy for name, strategy in field_values.items()}
    | {"times_redeemed": json_values, "extra": json_values},
)
# Valid issue bodies (with ignored extras), so that the accepting path is fuzzed as well.
valid_issue = st.fixed_dictionaries(
    {
        "code": st.from_regex(r"\A\s?[Ff][Zz]-[A-Za-z0-9_-]{1,20}\s?\Z") | st.just("FZ-KNOWN"),
        "credit_omr": st.integers(min_value=1, max_value=10_000),
    },
    optional={
        "description": descriptions,
        "active": st.booleans(),
        "max_redemptions": st.integers(min_value=0, max_value=2**31 - 1),
        "extra": json_values,
    },
)


query_values = (
    st.integers(min_value=-5, max_value=2**64).map(str)
    | st.text(max_size=20)
    | st.sampled_from(
        ["", "0", "1", "1000", "1001", "+1", "-1", "1e3", " 1", "٣", "²", "00000000000000000001"]
    )
)
query_strings = st.dictionaries(
    st.sampled_from(["limit", "offset", "after_seq", "q"]) | st.text(max_size=8),
    query_values,
    max_size=4,
).map(urllib.parse.urlencode)
segments = st.text(min_size=1, max_size=80) | code_like.filter(bool)
# Header values an HTTP client can send: visible ASCII and tab, or UTF-8 text sent as bytes.
ascii_header = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)
utf8_header = (
    st.text(alphabet=st.characters(min_codepoint=0x20, blacklist_categories=("Cs", "Cc")))
    .map(lambda s: s.encode("utf-8").decode("latin-1"))
    .filter(lambda s: len(s) <= 400)
)


# ------------------------------------------------------------------------------------- checks


def check(reply: Reply, *, many: bool = False, preview: bool = False) -> Any:
    """The properties every API answer has; returns the parsed body. (A preview's 410 carries
    the preview body, not an error.)"""
    assert reply.status < 500, reply
    assert reply.content_type == "application/json", (reply, reply.headers)
    body = json.loads(reply.text)
    if preview and reply.status == 410:
        assert isinstance(body, dict), reply
        assert set(body) == PREVIEW_KEYS, reply
        assert body["accepting_redemptions"] is False, reply
    elif reply.status >= 400:
        assert isinstance(body, dict), reply
        assert isinstance(body.get("error"), str), reply
        assert body["error"], reply
        if reply.status == 429:
            assert isinstance(body.get("retry_after"), int), reply
    elif many:
        assert isinstance(body, list), reply
        assert all(isinstance(item, dict) for item in body), reply
    else:
        assert isinstance(body, dict), reply
    return body


def post_json(server: ApiServer, path: str, body: Any, auth: bool = True) -> Reply:
    headers = dict(JSON_HEADERS)
    if auth:
        headers.update(server.auth())
    return sync_call("POST", server.url(path), body=json.dumps(body).encode(), headers=headers)


def quoted(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


# ------------------------------------------------------------------------------------ bodies


@FUZZ
@given(body=json_values | issue_like | valid_issue)
def test_issue_never_fails_with_a_5xx_and_an_accepted_issue_is_readable(
    server: ApiServer, body: Any
) -> None:
    reply = post_json(server, "/billing/vouchers/issue", body)
    event(f"status {reply.status}")
    out = check(reply)
    assert reply.status in (200, 400, 409), reply
    if reply.status == 200:
        assert set(out) == VOUCHER_KEYS
        assert out["code"] == body["code"].strip().upper()
        assert out["credit_baisa"] == body["credit_omr"] * 1000
        for name in ("description", "active", "max_redemptions"):
            if name in body and body[name] is not None:
                assert out[name] == body[name], name
        preview = post_json(
            server, "/billing/vouchers/redeem-preview", {"code": out["code"]}, auth=False
        )
        assert preview.status == (200 if out["active"] else 410), preview


@FUZZ
@given(body=json_values | issue_like | valid_issue)
def test_legacy_promos_post_never_fails_with_a_5xx_for_any_json_body(
    server: ApiServer, body: Any
) -> None:
    reply = post_json(server, "/billing/admin/promos", body)
    out = check(reply)
    assert reply.status in (200, 400, 409), reply
    if reply.status == 200:
        assert set(out) == VOUCHER_KEYS


@FUZZ
@given(body=json_values | st.fixed_dictionaries({"code": code_like | json_values}))
def test_preview_never_fails_with_a_5xx_and_never_reveals_counters(
    server: ApiServer, known: str, body: Any
) -> None:
    reply = post_json(server, "/billing/vouchers/redeem-preview", body, auth=False)
    event(f"status {reply.status}")
    out = check(reply, preview=True)
    assert reply.status in (200, 400, 404, 410), reply
    if reply.status in (200, 410):
        # a 410 says why (issue #20: reason); a 200 has no reason
        assert set(out) == (PREVIEW_KEYS if reply.status == 410 else PREVIEW_KEYS - {"reason"})
    assert "times_redeemed" not in reply.text
    assert "max_redemptions" not in reply.text


@FUZZ
@given(raw=st.binary(max_size=300))
def test_issue_never_fails_with_a_5xx_for_arbitrary_bytes(server: ApiServer, raw: bytes) -> None:
    headers = {**JSON_HEADERS, **server.auth()}
    reply = sync_call("POST", server.url("/billing/vouchers/issue"), body=raw, headers=headers)
    check(reply)


# -------------------------------------------------------------------------------------- paths


@FUZZ
@given(segment=segments)
def test_revoke_never_fails_with_a_5xx_for_any_path_segment(
    server: ApiServer, segment: str
) -> None:
    for template in ("/billing/vouchers/revoke/", "/billing/admin/promos/"):
        reply = sync_call("DELETE", server.url(template + quoted(segment)), headers=server.auth())
        event(f"status {reply.status}")
        out = check(reply)
        assert reply.status in (200, 400, 404, 405), reply
        if reply.status == 200:
            assert out == {"ok": True}


@FUZZ
@given(segment=segments, query=query_strings)
def test_voucher_reads_never_fail_with_a_5xx_for_any_path_and_query(
    server: ApiServer, known: str, segment: str, query: str
) -> None:
    base = "/billing/vouchers/" + quoted(segment)
    for path in (base, base + "/history", base + "/redemptions"):
        reply = sync_call("GET", server.url(f"{path}?{query}"), headers=server.auth())
        event(f"status {reply.status}")
        out = check(reply, many=path == "/billing/vouchers/list")
        assert reply.status in (200, 400, 404), reply
        if reply.status == 200 and path.endswith("/history"):
            assert isinstance(out["events"], list)


@FUZZ
@given(query=query_strings)
def test_list_never_fails_with_a_5xx_for_any_query(server: ApiServer, query: str) -> None:
    for path in ("/billing/vouchers/list", "/billing/admin/promos"):
        reply = sync_call("GET", server.url(f"{path}?{query}"), headers=server.auth())
        check(reply, many=True)
        assert reply.status in (200, 400), reply


# -------------------------------------------------------------------------------------- auth


@FUZZ
@given(
    value=ascii_header
    | utf8_header
    | ascii_header.map(lambda s: "Bearer " + s)
    | st.lists(st.text(alphabet="abcXYZ019-_", min_size=1), min_size=2, max_size=4).map(
        lambda parts: "Bearer " + ".".join(parts)
    )
)
def test_any_authorization_header_is_200_401_or_403_never_5xx(
    server: ApiServer, value: str
) -> None:
    reply = sync_call(
        "GET", server.url("/billing/vouchers/list?limit=1"), headers={"Authorization": value}
    )
    check(reply, many=reply.status == 200)
    assert reply.status in (401, 403) or value == f"Bearer {server.token()}", reply


# ------------------------------------------------------------------------------ deep nesting


@pytest.mark.parametrize(
    "path", ["/billing/vouchers/issue", "/billing/admin/promos", "/billing/vouchers/redeem-preview"]
)
@pytest.mark.parametrize("shape", ["lists", "objects", "inside-code", "inside-extra-field"])
def test_deeply_nested_body_is_400_or_413_not_500(server: ApiServer, path: str, shape: str) -> None:
    depth = 10_000
    nested = {
        "lists": "[" * depth + "]" * depth,
        "objects": '{"a":' * depth + "1" + "}" * depth,
        "inside-code": '{"code":' + "[" * depth + "]" * depth + ',"credit_omr":1}',
        "inside-extra-field": '{"code":"DEEP-1","credit_omr":1,"x":'
        + "[" * depth
        + "]" * depth
        + "}",
    }[shape]
    headers = {**JSON_HEADERS, **server.auth()}
    reply = sync_call("POST", server.url(path), body=nested.encode(), headers=headers)
    check(reply)
    assert reply.status in (400, 413), reply


# ---------------------------------------------------------------------------------- aftermath


def test_server_still_serves_reads_and_writes_after_the_fuzzing(server: ApiServer) -> None:
    code = f"FZ-AFTER-{uuid.uuid4().hex[:8]}".upper()
    issued = post_json(server, "/billing/vouchers/issue", {"code": code, "credit_omr": 2})
    assert issued.status == 200, issued
    preview = post_json(server, "/billing/vouchers/redeem-preview", {"code": code}, auth=False)
    assert preview.status == 200, preview
    ready = sync_call("GET", server.url("/readyz"))
    assert ready.status == 200, ready
    assert ready.json["ready"] is True
    assert server.process.proc is not None
    assert server.process.proc.poll() is None, "the server is still running"
    assert "internal server error" not in server.process.output()
    assert "unhandled error" not in server.process.output()
