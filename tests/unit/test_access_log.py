"""What an operator and a browser meet first, without servers: the access log line and the request
id on every answer, LOG_FORMAT=json, and ``/`` sending a browser to the console."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from voucher_ledger.cli.logformat import JsonFormatter, formatter
from voucher_ledger.config.settings import Settings
from voucher_ledger.http.access import REQUEST_ID
from voucher_ledger.http.app import create_app

ACCESS = "voucher_ledger.access"
SECRET_TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJlLXNlY3JldA"


@pytest.fixture
async def client() -> AsyncIterator[TestClient[object, object]]:
    """The real routes and middleware, no components: the pages and the router's 404 need none."""
    app = create_app(Settings(JWT_SECRET="a" * 40), components=False)  # type: ignore[call-arg]
    async with TestClient(TestServer(app)) as c:
        yield c


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS]


async def test_one_access_line_per_request_with_route_status_duration_and_request_id(
    client: TestClient[object, object], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    resp = await client.get("/console/", headers={REQUEST_ID: "req-42.abc:1"})
    assert resp.status == 200
    assert resp.headers[REQUEST_ID] == "req-42.abc:1"  # a sane id is echoed
    [line] = access_lines(caplog)
    assert re.fullmatch(
        r"GET /console/ 200 \d+\.\d ms request_id=req-42\.abc:1", line.getMessage()
    ), line.getMessage()
    fields = line.access_fields  # type: ignore[attr-defined]
    assert set(fields) == {"method", "route", "status", "duration_ms", "request_id"}
    assert (fields["method"], fields["route"], fields["status"]) == ("GET", "/console/", 200)


@pytest.mark.parametrize("sent", [None, "", "has space", "x" * 129, "-leading", "a\tb", "ünï"])
async def test_a_missing_or_insane_request_id_is_replaced_by_a_new_uuid4_hex(
    client: TestClient[object, object], caplog: pytest.LogCaptureFixture, sent: str | None
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    headers = {} if sent is None else {REQUEST_ID: sent.encode().decode("latin-1")}
    resp = await client.get("/redeem", headers=headers)
    rid = resp.headers[REQUEST_ID]
    assert re.fullmatch(r"[0-9a-f]{32}", rid), rid
    assert access_lines(caplog)[0].getMessage().endswith(f"request_id={rid}")
    other = await client.get("/redeem", headers=headers)
    assert other.headers[REQUEST_ID] != rid  # one per request


async def test_the_line_names_the_route_template_never_the_path_query_or_token(
    client: TestClient[object, object], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_code = "SECRET-CODE-123"
    resp = await client.get(
        f"/static/nobuild/{secret_code}?token={SECRET_TOKEN}",
        headers={"Authorization": f"Bearer {SECRET_TOKEN}"},
        data=b'{"code": "BODY-SECRET"}',
    )
    assert resp.status == 404
    assert REQUEST_ID in resp.headers  # an error answer carries it too
    [line] = access_lines(caplog)
    assert line.getMessage().startswith("GET /static/{build}/{name} 404 ")
    # (the test server keeps aiohttp's own access log, which quotes the request line; serve
    # turns it off)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name != "aiohttp.access")
    for secret in (SECRET_TOKEN, secret_code, "BODY-SECRET", "token="):
        assert secret not in logged
    unmatched = await client.post(f"/nowhere/{secret_code}")
    assert unmatched.status == 404
    assert access_lines(caplog)[-1].getMessage().startswith("POST unmatched 404 ")
    assert secret_code not in access_lines(caplog)[-1].getMessage()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_browser_at_the_root_is_sent_to_the_console(
    client: TestClient[object, object], caplog: pytest.LogCaptureFixture, method: str
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    resp = await client.request(method, "/", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "console/"
    assert REQUEST_ID in resp.headers
    assert access_lines(caplog)[-1].getMessage().startswith(f"{method} / 302 ")
    landed = await client.get("/")
    assert landed.status == 200
    assert landed.url.path == "/console/"
    page = await landed.text()
    assert 'id="signin-redeem"' in page
    assert 'href="../redeem"' in page  # the sign-in view links to the public redeem page


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord(ACCESS, logging.INFO, __file__, 1, "GET %s 200", ("/x",), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_format_is_one_object_per_line_with_the_access_fields() -> None:
    fields = {
        "method": "GET",
        "route": "/x",
        "status": 200,
        "duration_ms": 1.5,
        "request_id": "abc",
    }
    line = JsonFormatter("processors").format(_record(access_fields=fields))
    assert "\n" not in line
    doc = json.loads(line)
    assert {k: doc[k] for k in ("level", "logger", "message", "process")} == {
        "level": "INFO",
        "logger": ACCESS,
        "message": "GET /x 200",
        "process": "processors",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", doc["time"])
    assert {k: doc[k] for k in fields} == fields
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        failing = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = JsonFormatter().format(failing)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_log_format_setting_chooses_the_formatter() -> None:
    assert Settings().log_format == "text"
    assert Settings(LOG_FORMAT="json").log_format == "json"  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"LOG_FORMAT|log_format"):
        Settings(LOG_FORMAT="xml")  # type: ignore[call-arg]
    assert isinstance(formatter("json"), JsonFormatter)
    text = formatter("text", "processors").format(_record())
    assert "[processors] voucher_ledger.access: GET /x 200" in text
