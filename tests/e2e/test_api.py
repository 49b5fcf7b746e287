"""The HTTP API end to end: a real ``voucher-ledger serve`` process on the shared NATS and a fresh
PostgreSQL database, called over HTTP. One server for the module (a second, small one for the
rate limit)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tests.conftest import connect, wait_until
from tests.e2e.api_helpers import (
    PREVIEW_KEYS,
    VOUCHER_KEYS,
    ApiServer,
    Reply,
    assert_json_error,
    call,
    running_server,
    sync_call,
)
from voucher_ledger.billing.catalog import FileCatalog, sample_catalog_path
from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.wire import Accepted
from voucher_ledger.http.auth import mint_token
from voucher_ledger.http.billing import CHECKOUT_PATHS
from voucher_ledger.http.pages import PAGE_ROUTES
from voucher_ledger.jetstream import streams
from voucher_ledger.ledger.commands import RedeemVoucher
from voucher_ledger.ledger.events import Actor

ISSUE = "/billing/vouchers/issue"
LIST = "/billing/vouchers/list"
REVOKE = "/billing/vouchers/revoke/{code}"
PREVIEW = "/billing/vouchers/redeem-preview"
LEGACY = "/billing/admin/promos"
LEGACY_REVOKE = "/billing/admin/promos/{code}"
DETAIL = "/billing/vouchers/{code}"
HISTORY = "/billing/vouchers/{code}/history"
REDEMPTIONS = "/billing/vouchers/{code}/redemptions"


# Every (method, path template) this module exercises; /openapi.json must document exactly these.
EXERCISED = {
    ("post", ISSUE),
    ("get", LIST),
    ("delete", REVOKE),
    ("post", PREVIEW),
    ("get", LEGACY),
    ("post", LEGACY),
    ("delete", LEGACY_REVOKE),
    ("get", DETAIL),
    ("get", HISTORY),
    ("get", REDEMPTIONS),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    # checkout, webhook, balance and orders: exercised in tests/e2e/test_checkout.py
    *(("post", path) for path in CHECKOUT_PATHS),
    ("post", "/billing/webhook"),
    ("get", "/billing/balance"),
    ("get", "/billing/admin/orders"),
    ("get", "/billing/catalog"),
    # the seed's admin pages: exercised in tests/e2e/test_admin_settings.py
    ("get", "/billing/admin/settings"),
    ("put", "/billing/admin/settings"),
    # revenue, subscriptions, invoices, portal: exercised in tests/e2e/test_subscriptions.py
    ("get", "/billing/admin/revenue"),
    ("get", "/billing/subscription"),
    ("get", "/billing/subscription/{tenant_id}"),
    ("get", "/billing/invoices"),
    ("get", "/billing/invoices/{tenant_id}"),
    ("post", "/billing/portal/{tenant_id}"),
    # campaigns (issue #21): exercised in tests/e2e/test_campaigns.py
    ("post", "/billing/campaigns"),
    ("get", "/billing/campaigns"),
    ("get", "/billing/campaigns/{campaign_id}"),
    ("delete", "/billing/campaigns/{campaign_id}"),
    ("post", "/billing/campaigns/{campaign_id}/codes"),
    ("get", "/billing/campaigns/{campaign_id}/codes.csv"),
    # campaign reports (issue #21): exercised in tests/e2e/test_reports.py
    ("get", "/billing/reports/campaigns"),
    # global vouchers at the hub (issue #22): exercised in tests/e2e/test_global_vouchers.py
    ("post", "/billing/global-vouchers"),
    ("get", "/billing/global-vouchers"),
    ("get", "/billing/global-vouchers/{code}"),
    ("post", "/billing/global-vouchers/{code}/revoke"),
    ("post", "/billing/global-vouchers/{code}/recall"),
    # the hub's report per Sovereign (issue #22): tests/integration/test_sovereign_trail.py
    ("get", "/billing/reports/sovereigns"),
}


def new_code(stem: str = "T") -> str:
    return f"{stem}-{uuid.uuid4().hex[:10]}".upper()


def p(template: str, code: str) -> str:
    return template.replace("{code}", code)


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
async def server(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str
) -> AsyncIterator[ApiServer]:
    async with running_server(tmp_path_factory.mktemp("api"), nats_url, pg_url) as srv:
        yield srv


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


class Api:
    """Calls against the module server, with the superadmin token unless told otherwise."""

    def __init__(self, server: ApiServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> Reply:
        sent = dict(self.server.auth()) if auth else {}
        sent.update(headers or {})
        return await call(
            self.session,
            method,
            self.server.url(path),
            json_body=json_body,
            data=data,
            headers=sent,
        )

    async def issue(self, body: Any, path: str = ISSUE, **kw: Any) -> Reply:
        return await self.request("POST", path, json_body=body, **kw)

    async def issued(self, code: str, credit_omr: int = 10, **fields: Any) -> dict[str, Any]:
        reply = await self.issue({"code": code, "credit_omr": credit_omr, **fields})
        assert reply.status == 200, reply
        body: dict[str, Any] = reply.json
        return body

    async def listing(self, query: str = "", path: str = LIST) -> list[dict[str, Any]]:
        reply = await self.request("GET", path + query)
        assert reply.status == 200, reply
        body: list[dict[str, Any]] = reply.json
        return body

    async def preview(self, body: Any, **kw: Any) -> Reply:
        return await self.request("POST", PREVIEW, json_body=body, auth=False, **kw)

    async def detail(self, code: str) -> Reply:
        return await self.request("GET", p(DETAIL, code))

    async def history(self, code: str, query: str = "") -> dict[str, Any]:
        reply = await self.request("GET", p(HISTORY, code) + query)
        assert reply.status == 200, reply
        body: dict[str, Any] = reply.json
        return body


@pytest.fixture
def api(server: ApiServer, http: aiohttp.ClientSession) -> Api:
    return Api(server, http)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# ------------------------------------------------------------------------------- issue & list


async def test_issue_returns_the_persisted_voucher_with_create_defaults(api: Api) -> None:
    code = new_code("NEW")
    reply = await api.issue({"code": f"  {code.lower()}  ", "credit_omr": 12})
    assert reply.status == 200, reply
    assert reply.content_type == "application/json"
    body = reply.json
    assert set(body) == VOUCHER_KEYS
    assert body["code"] == code
    assert body["credit_omr"] == 12
    assert body["credit_baisa"] == 12_000
    assert body["description"] == ""
    assert body["active"] is True
    assert body["max_redemptions"] == 0
    assert body["times_redeemed"] == 0
    assert parse_time(body["created_at"]) == parse_time(body["updated_at"])

    detail = (await api.detail(code)).json
    assert {k: detail[k] for k in VOUCHER_KEYS} == body


async def test_issue_ignores_the_read_only_fields_and_an_update_keeps_omitted_fields(
    api: Api,
) -> None:
    code = new_code("UPD")
    first = await api.issued(code, 5, description="launch", active=False, max_redemptions=7)
    assert (first["description"], first["active"], first["max_redemptions"]) == (
        "launch",
        False,
        7,
    )
    second = await api.issued(
        code, 20, times_redeemed=99, created_at="1999-01-01T00:00:00Z", credit_baisa=1
    )
    assert second["credit_omr"] == 20
    assert second["credit_baisa"] == 20_000
    assert second["description"] == "launch"
    assert second["active"] is False
    assert second["max_redemptions"] == 7
    assert second["times_redeemed"] == 0
    assert second["created_at"] == first["created_at"]
    assert parse_time(second["updated_at"]) > parse_time(first["updated_at"])
    history = await api.history(code)
    assert [e["event"]["change"] for e in history["events"]] == ["created", "updated"]


async def test_issue_list_detail_revoke_history_round_trip(api: Api, server: ApiServer) -> None:
    code = new_code("TRIP")
    auth = server.auth(sub="alice-admin")
    issued = await api.issue(
        {"code": code, "credit_omr": 3, "description": "trip", "max_redemptions": 2},
        headers=auth,
    )
    assert issued.status == 200, issued

    listed = await api.listing()
    assert listed[0] == issued.json, "the newest voucher comes first"

    detail = await api.detail(code.lower())
    assert detail.status == 200, detail
    state = detail.json
    assert set(state) == VOUCHER_KEYS | {
        "revoked",
        "revoked_at",
        "accepting_redemptions",
        "last_seq",
    }
    assert {k: state[k] for k in VOUCHER_KEYS} == issued.json
    assert state["revoked"] is False
    assert state["revoked_at"] is None
    assert state["accepting_redemptions"] is True
    assert isinstance(state["last_seq"], int)
    assert state["last_seq"] > 0

    revoked = await api.request("DELETE", p(REVOKE, code), headers=auth)
    assert revoked.status == 200, revoked
    assert revoked.json == {"ok": True}

    after = (await api.detail(code)).json
    assert after["revoked"] is True
    assert after["revoked_at"] is not None
    assert after["accepting_redemptions"] is False
    assert after["last_seq"] > state["last_seq"]
    assert code not in [v["code"] for v in await api.listing()]

    history = await api.history(code)
    assert history["code"] == code
    assert history["next_after_seq"] is None
    events = history["events"]
    assert [e["type"] for e in events] == ["voucher.issued", "voucher.revoked"]
    assert events[0]["seq"] == state["last_seq"]
    assert events[1]["seq"] == after["last_seq"]
    assert events[0]["seq"] < events[1]["seq"]
    for entry in events:
        assert entry["actor"] == {"sub": "alice-admin", "role": "superadmin"}
        # voucher.issued is at v2 since issue #20 (its window and eligibility rules)
        assert entry["version"] == (3 if entry["type"] == "voucher.issued" else 1)  # v3: #21
        assert isinstance(entry["command_id"], str)
        assert entry["command_id"]
        assert entry["event"]["code"] == code
        parse_time(entry["occurred_at"])
    assert events[0]["event"]["change"] == "created"
    assert events[0]["event"]["credit_baisa"] == 3_000
    assert events[0]["event"]["max_redemptions"] == 2


async def test_history_pages_with_after_seq_and_limit(api: Api) -> None:
    code = new_code("PAGE")
    await api.issued(code, 1)
    await api.issued(code, 2)
    await api.issued(code, 3)
    first = await api.history(code, "?limit=2")
    assert len(first["events"]) == 2
    assert first["next_after_seq"] == first["events"][-1]["seq"]
    rest = await api.history(code, f"?limit=2&after_seq={first['next_after_seq']}")
    assert [e["event"]["credit_baisa"] for e in first["events"] + rest["events"]] == [
        1000,
        2000,
        3000,
    ]
    assert rest["next_after_seq"] is None
    for query in ("?limit=0", "?limit=1001", "?after_seq=-1", "?limit=x"):
        assert_json_error(await api.request("GET", p(HISTORY, code) + query), 400)


async def test_list_is_newest_first_and_supports_limit_offset_and_q(api: Api) -> None:
    stem = f"LQ{uuid.uuid4().hex[:6]}".upper()
    codes = [f"{stem}-{n}" for n in ("ONE", "TWO", "THREE")]
    for code in codes:
        await api.issued(code)
    newest_first = list(reversed(codes))
    assert [v["code"] for v in await api.listing(f"?q={stem}")] == newest_first
    assert [v["code"] for v in await api.listing(f"?q={stem.lower()}")] == newest_first
    assert [v["code"] for v in await api.listing(f"?q={stem}&limit=2")] == newest_first[:2]
    assert [v["code"] for v in await api.listing(f"?q={stem}&offset=1")] == newest_first[1:]
    assert [v["code"] for v in await api.listing(f"?q={stem}-TW")] == [f"{stem}-TWO"]
    assert await api.listing(f"?q={stem}&offset=3") == []
    assert len(await api.listing("?limit=1")) == 1
    for query in ("?limit=0", "?limit=1001", "?limit=abc", "?offset=-1", "?q=a.b", "?q=%25"):
        assert_json_error(await api.request("GET", LIST + query), 400)


async def test_list_q_treats_underscore_as_a_literal_character(api: Api) -> None:
    stem = f"US{uuid.uuid4().hex[:6]}".upper()
    await api.issued(f"{stem}-DASH")
    assert await api.listing(f"?q={stem}_DASH") == [], "no code contains '_DASH'"


async def test_list_status_revoked_shows_the_revoked_vouchers_only(api: Api) -> None:
    stem = f"LS{uuid.uuid4().hex[:6]}".upper()
    live, gone = f"{stem}-LIVE", f"{stem}-GONE"
    await api.issued(live)
    await api.issued(gone, description="was here")
    assert (await api.request("DELETE", p(REVOKE, gone))).status == 200
    assert [v["code"] for v in await api.listing(f"?q={stem}")] == [live]
    assert [v["code"] for v in await api.listing(f"?q={stem}&status=live")] == [live]
    revoked = await api.listing(f"?q={stem}&status=revoked")
    assert [v["code"] for v in revoked] == [gone]
    assert set(revoked[0]) == VOUCHER_KEYS
    assert revoked[0]["description"] == "was here"
    # restoring moves it back
    await api.issued(gone)
    assert await api.listing(f"?q={stem}&status=revoked") == []
    for query in ("?status=all", "?status=", "?status=REVOKED"):
        assert_json_error(await api.request("GET", LIST + query), 400)


# ------------------------------------------------------------------- strict bodies (issue 18)


@pytest.mark.parametrize("path", [ISSUE, LEGACY])
async def test_an_unknown_field_in_an_issue_body_is_a_400_naming_it_and_nothing_changes(
    api: Api, path: str
) -> None:
    """A typo costs money: "max_redemption": 3 was an uncapped voucher."""
    code = new_code("TYPO")
    reply = await api.issue({"code": code, "credit_omr": 5, "max_redemption": 3}, path=path)
    message = assert_json_error(reply, 400)
    assert "max_redemption" in message
    assert "did you mean max_redemptions?" in message
    assert set(reply.json["fields"]) == {"max_redemption"}
    assert (await api.detail(code)).status == 404


async def test_every_field_error_of_an_issue_body_comes_in_one_answer(api: Api) -> None:
    body = {"code": "a.b", "credit_omr": "abc", "max_redemptions": -1, "colour": "red"}
    reply = await api.issue(body)
    message = assert_json_error(reply, 400)
    fields = reply.json["fields"]
    assert set(fields) == {"code", "credit_omr", "max_redemptions", "colour"}
    assert fields["credit_omr"] == "must be a whole number"
    assert fields["max_redemptions"] == "must be 0 or more"
    assert fields["colour"] == "is not a field of this request"
    for name, words in fields.items():
        assert f"{name} {words}" in message  # the one-line message names each field
    over = await api.issue({"code": new_code("BIG"), "credit_omr": 10**6, "description": 7})
    assert set(assert_json_error(over, 400) and over.json["fields"]) == {
        "credit_omr",
        "description",
    }
    assert over.json["fields"]["credit_omr"] == "must be 10000 or less"


async def test_the_admin_uis_toggle_posts_the_listed_row_back_and_is_accepted(api: Api) -> None:
    code = new_code("ROW")
    await api.issued(code, 7, description="row", max_redemptions=4)
    [row] = await api.listing(f"?q={code}", path=LEGACY)
    assert set(row) == VOUCHER_KEYS
    toggled = await api.issue({**row, "active": False, "times_redeemed": 99}, path=LEGACY)
    assert toggled.status == 200, toggled
    after = toggled.json
    assert after["active"] is False
    assert (after["credit_omr"], after["max_redemptions"], after["times_redeemed"]) == (7, 4, 0)
    assert after["created_at"] == row["created_at"]
    assert (await api.detail(code)).json["active"] is False


# ---------------------------------------------------------------------------- list headers


@pytest.mark.parametrize("path", [LIST, LEGACY])
async def test_the_list_says_how_many_match_and_links_the_next_page(api: Api, path: str) -> None:
    stem = new_code("PG")
    for n in range(5):
        await api.issued(f"{stem}-{n}", n + 1, active=n != 0)
    first = await api.request("GET", f"{path}?q={stem}&limit=2")
    assert first.status == 200, first
    assert [v["code"] for v in first.json] == [f"{stem}-4", f"{stem}-3"]  # the body: an array
    assert first.headers["X-Total-Count"] == "5"
    assert (first.headers["X-Total-Active"], first.headers["X-Total-Redemptions"]) == ("4", "0")
    assert first.headers["X-Total-Credit-Baisa"] == "0"
    link = first.headers["Link"]
    segment = path.rsplit("/", 1)[-1]
    assert link == f'<{segment}?q={stem}&limit=2&offset=2>; rel="next"'
    seen = [v["code"] for v in first.json]
    url = api.server.url(path)
    reply = first
    while "Link" in reply.headers:  # follow rel="next", resolved against the request URL
        target = re.fullmatch(r'<([^>]+)>; rel="next"', reply.headers["Link"])
        assert target is not None, reply.headers["Link"]
        url = urllib.parse.urljoin(url, target.group(1))
        reply = await call(api.session, "GET", url, headers=api.server.auth())
        assert reply.status == 200, reply
        assert reply.headers["X-Total-Count"] == "5"
        seen += [v["code"] for v in reply.json]
    assert seen == [f"{stem}-{n}" for n in (4, 3, 2, 1, 0)]
    assert len(reply.json) == 1  # the last page has no next link
    whole = await api.request("GET", f"{path}?q={stem}")
    assert whole.headers["X-Total-Count"] == "5"
    assert "Link" not in whole.headers
    none = await api.request("GET", f"{path}?q={stem}-NOPE")
    assert (none.json, none.headers["X-Total-Count"]) == ([], "0")
    assert "Link" not in none.headers


async def test_the_list_totals_count_redemptions_and_the_credit_they_granted(
    api: Api, server: ApiServer
) -> None:
    code = new_code("TOT")
    await api.issued(code, 3)
    for customer in ("c-1", "c-2"):
        await redeem(server, code, customer)

    async def redeemed_twice() -> bool:
        listed = await api.request("GET", f"{LIST}?q={code}")
        return listed.headers["X-Total-Redemptions"] == "2"

    await wait_until(redeemed_twice, what="the redemptions in the read model")
    listed = await api.request("GET", f"{LIST}?q={code}")
    assert listed.headers["X-Total-Credit-Baisa"] == "6000"


async def test_openapi_documents_the_list_headers_and_the_public_catalog(api: Api) -> None:
    spec = (await api.request("GET", "/openapi.json", auth=False)).json
    for path in (LIST, LEGACY, "/billing/admin/orders"):
        headers = spec["paths"][path]["get"]["responses"]["200"]["headers"]
        assert {"X-Total-Count", "Link"} <= set(headers), path
    catalog = spec["paths"]["/billing/catalog"]["get"]
    assert catalog["security"] == []
    ref = catalog["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/CatalogOut"
    assert set(spec["components"]["schemas"]["CatalogItemOut"]["properties"]) == {
        "id",
        "name",
        "price_omr",
        "price_baisa",
    }
    issue = spec["components"]["schemas"]["IssueVoucherBody"]
    assert issue["additionalProperties"] is False
    assert issue["properties"]["times_redeemed"]["readOnly"] is True


async def test_the_catalog_is_public_with_prices_in_omr_and_baisa(api: Api) -> None:
    reply = await api.request("GET", "/billing/catalog", auth=False)
    assert reply.status == 200, reply
    body = reply.json
    sample = await FileCatalog(sample_catalog_path()).get()
    assert [p["id"] for p in body["plans"]] == list(sample.plans)
    assert [a["id"] for a in body["addons"]] == list(sample.addons)
    starter = next(p for p in body["plans"] if p["id"] == "starter")
    assert starter == {"id": "starter", "name": "Starter", "price_omr": 9, "price_baisa": 9000}


# ----------------------------------------------------------------- logs, request id, the root


async def test_each_request_is_one_access_line_with_its_request_id_and_no_token(
    api: Api, server: ApiServer
) -> None:
    rid = f"e2e-{uuid.uuid4().hex}"
    token = server.token(sub="log-reader")
    secret_code = new_code("LOGSECRET")
    reply = await call(
        api.session,
        "GET",
        server.url(f"/billing/vouchers/{secret_code}?at=2020-01-01T00:00:00Z"),
        headers={"Authorization": f"Bearer {token}", "X-Request-ID": rid},
    )
    assert reply.status == 404
    assert reply.headers["X-Request-ID"] == rid

    def logged() -> list[str]:
        return [line for line in server.process.output().splitlines() if rid in line]

    await wait_until(lambda: bool(logged()), what="the access line")
    [line] = logged()
    assert re.search(
        rf"INFO voucher_ledger\.access: GET /billing/vouchers/{{code}} 404 \d+\.\d ms "
        rf"request_id={rid}$",
        line,
    ), line
    output = server.process.output()
    assert token not in output
    assert secret_code not in output
    generated = await api.request("GET", "/healthz", auth=False)
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-Request-ID"])
    assert "Traceback" not in output


async def test_a_browser_at_the_root_lands_on_the_console(api: Api) -> None:
    for method in ("GET", "HEAD"):
        async with api.session.request(method, api.server.url("/"), allow_redirects=False) as resp:
            assert resp.status == 302
            assert resp.headers["Location"] == "console/"
    async with api.session.get(api.server.url("/")) as resp:
        assert resp.status == 200
        assert resp.url.path == "/console/"
        assert resp.content_type == "text/html"


# ------------------------------------------------------------------------------------ legacy


async def test_legacy_promos_endpoints_behave_like_the_voucher_endpoints(api: Api) -> None:
    code = new_code("LEG")
    created = await api.issue({"code": code.lower(), "credit_omr": 4}, path=LEGACY)
    assert created.status == 200, created
    assert set(created.json) == VOUCHER_KEYS
    assert created.json["code"] == code
    assert created.json["credit_baisa"] == 4_000

    assert await api.listing(path=LEGACY) == await api.listing()
    assert (await api.listing(path=LEGACY))[0]["code"] == code
    assert await api.listing(f"?q={code}", path=LEGACY) == [created.json]

    bad = await api.issue({"code": "A.B", "credit_omr": 4}, path=LEGACY)
    assert_json_error(bad, 400)

    gone = await api.request("DELETE", p(LEGACY_REVOKE, code.lower()))
    assert gone.status == 200, gone
    assert gone.json == {"ok": True}
    assert_json_error(await api.request("DELETE", p(LEGACY_REVOKE, code)), 404)
    assert_json_error(await api.preview({"code": code}), 404)
    assert code not in [v["code"] for v in await api.listing(path=LEGACY)]


# ------------------------------------------------------------------------------------ revoke


@pytest.mark.parametrize("template", [REVOKE, LEGACY_REVOKE])
async def test_revoke_of_an_unknown_or_already_revoked_code_is_404(api: Api, template: str) -> None:
    assert_json_error(await api.request("DELETE", p(template, new_code("NOPE"))), 404)
    code = new_code("TWICE")
    await api.issued(code)
    first = await api.request("DELETE", p(template, code))
    assert first.status == 200, first
    assert_json_error(await api.request("DELETE", p(template, code)), 404)


@pytest.mark.parametrize("template", [REVOKE, LEGACY_REVOKE])
@pytest.mark.parametrize("bad", ["A.B", "ab", "%20%20%20", "-AB", "x" * 65, "%C3%9F%C3%9F%C3%9F"])
async def test_revoke_with_an_invalid_code_is_400(api: Api, template: str, bad: str) -> None:
    before = await api.listing()
    assert_json_error(await api.request("DELETE", p(template, bad)), 400)
    assert await api.listing() == before


async def test_revoke_then_reissue_restores_the_code(api: Api) -> None:
    code = new_code("BACK")
    await api.issued(code, 8, description="first", active=False, max_redemptions=3)
    assert (await api.request("DELETE", p(REVOKE, code))).status == 200
    assert_json_error(await api.preview({"code": code}), 404)

    restored = await api.issued(code, 9)
    assert restored["code"] == code
    assert restored["credit_omr"] == 9
    assert restored["active"] is True, "a restored code defaults to active"
    assert restored["description"] == "first"
    assert restored["max_redemptions"] == 3

    detail = (await api.detail(code)).json
    assert detail["revoked"] is False
    assert detail["revoked_at"] is None
    assert code in [v["code"] for v in await api.listing()]
    preview = await api.preview({"code": code})
    assert preview.status == 200, preview

    history = await api.history(code)
    assert [e["type"] for e in history["events"]] == [
        "voucher.issued",
        "voucher.revoked",
        "voucher.issued",
    ]
    assert [e["event"].get("change") for e in history["events"]] == ["created", None, "restored"]


# ------------------------------------------------------------------------------ invalid input

INVALID_ISSUE_BODIES: dict[str, Any] = {
    "blank-code": {"code": "   ", "credit_omr": 10},
    "empty-code": {"code": "", "credit_omr": 10},
    "dot": {"code": "A.B", "credit_omr": 10},
    "star": {"code": "*", "credit_omr": 10},
    "gt": {"code": ">", "credit_omr": 10},
    "wildcard-subject": {"code": "AB>", "credit_omr": 10},
    "space-inside": {"code": "AB CD", "credit_omr": 10},
    "two-chars": {"code": "AB", "credit_omr": 10},
    "65-chars": {"code": "A" * 65, "credit_omr": 10},
    "leading-dash": {"code": "-ABC", "credit_omr": 10},
    "non-ascii": {"code": "straße", "credit_omr": 10},
    "code-int": {"code": 12345, "credit_omr": 10},
    "code-null": {"code": None, "credit_omr": 10},
    "missing-code": {"credit_omr": 10},
    "credit-0": {"code": "VALID-CODE", "credit_omr": 0},
    "credit-neg": {"code": "VALID-CODE", "credit_omr": -1},
    "credit-float": {"code": "VALID-CODE", "credit_omr": 1.5},
    "credit-whole-float": {"code": "VALID-CODE", "credit_omr": 10.0},
    "credit-string": {"code": "VALID-CODE", "credit_omr": "10"},
    "credit-bool": {"code": "VALID-CODE", "credit_omr": True},
    "credit-over-max": {"code": "VALID-CODE", "credit_omr": 10_001},
    "credit-huge": {"code": "VALID-CODE", "credit_omr": 10**40},
    "missing-credit": {"code": "VALID-CODE"},
    "max-neg": {"code": "VALID-CODE", "credit_omr": 10, "max_redemptions": -1},
    "max-too-big": {"code": "VALID-CODE", "credit_omr": 10, "max_redemptions": 2**31},
    "max-string": {"code": "VALID-CODE", "credit_omr": 10, "max_redemptions": "5"},
    "active-yes": {"code": "VALID-CODE", "credit_omr": 10, "active": "yes"},
    "active-1": {"code": "VALID-CODE", "credit_omr": 10, "active": 1},
    "description-int": {"code": "VALID-CODE", "credit_omr": 10, "description": 5},
    "description-2001": {"code": "VALID-CODE", "credit_omr": 10, "description": "d" * 2001},
}
INVALID_RAW_BODIES: dict[str, bytes] = {
    "array": b"[]",
    "array-of-object": b'[{"code": "VALID-CODE", "credit_omr": 10}]',
    "json-string": b'"x"',
    "bare-x": b"x",
    "number": b"42",
    "null": b"null",
    "malformed": b'{"code": "VALID-CODE", "credit_omr": 10',
    "trailing-garbage": b'{"code": "VALID-CODE", "credit_omr": 10} x',
    "empty": b"",
    "whitespace": b"   \n",
    "not-utf8": b'{"code": "\xff\xfe", "credit_omr": 10}',
}


@pytest.mark.parametrize("path", [ISSUE, LEGACY])
@pytest.mark.parametrize("case", sorted(INVALID_ISSUE_BODIES))
async def test_invalid_issue_body_is_400_and_nothing_changes(
    api: Api, path: str, case: str
) -> None:
    before = await api.listing()
    reply = await api.issue(INVALID_ISSUE_BODIES[case], path=path)
    assert_json_error(reply, 400)
    assert await api.listing() == before, "nothing changed"
    assert (await api.detail("VALID-CODE")).status == 404


@pytest.mark.parametrize("path", [ISSUE, LEGACY])
@pytest.mark.parametrize("case", sorted(INVALID_RAW_BODIES))
async def test_malformed_issue_body_is_400_and_nothing_changes(
    api: Api, path: str, case: str
) -> None:
    before = await api.listing()
    reply = await api.request(
        "POST", path, data=INVALID_RAW_BODIES[case], headers={"Content-Type": "application/json"}
    )
    assert_json_error(reply, 400)
    assert await api.listing() == before, "nothing changed"
    assert (await api.detail("VALID-CODE")).status == 404


async def test_invalid_idempotency_key_is_400_and_nothing_changes(api: Api) -> None:
    code = new_code("IDK")
    for key in ("has space", "-leading", "k" * 129, "a/b", "", "a*b"):
        reply = await api.issue({"code": code, "credit_omr": 1}, headers={"Idempotency-Key": key})
        assert_json_error(reply, 400)
    assert (await api.detail(code)).status == 404


# -------------------------------------------------------------------------------------- auth


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def credentials(server: ApiServer) -> dict[str, tuple[str | None, int]]:
    """name -> (Authorization header or None, expected status)."""
    now = int(datetime.now().timestamp())
    claims = {"sub": "mallory", "role": "superadmin", "iat": now, "exp": now + 600}
    alg_none = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    hs512 = jwt.encode(claims, server.secret.encode(), algorithm="HS512")
    no_exp = jwt.encode({"sub": "mallory", "role": "superadmin"}, server.secret.encode())
    return {
        "no-header": (None, 401),
        "basic": ("Basic x", 401),
        "bearer-empty": ("Bearer ", 401),
        "lowercase-bearer": (f"bearer {server.token()}", 401),
        "garbage": ("Bearer garbage", 401),
        "expired": (f"Bearer {server.token(ttl=-3600)}", 401),
        "wrong-secret": (
            f"Bearer {mint_token(b'another-secret-' + b'y' * 40, 'mallory', 'superadmin')}",
            401,
        ),
        "alg-none": (f"Bearer {alg_none}", 401),
        "hs512": (f"Bearer {hs512}", 401),
        "no-exp": (f"Bearer {no_exp}", 401),
        "member": (f"Bearer {server.token(role='member', sub='bob')}", 403),
        "no-role": (f"Bearer {server.token(role='', sub='bob')}", 403),
    }


CRED_NAMES = [
    "no-header",
    "basic",
    "bearer-empty",
    "lowercase-bearer",
    "garbage",
    "expired",
    "wrong-secret",
    "alg-none",
    "hs512",
    "no-exp",
    "member",
    "no-role",
]


@pytest.fixture(scope="module")
async def protected(server: ApiServer, http: aiohttp.ClientSession) -> str:
    """A live voucher that unauthorised callers try to revoke and read."""
    code = new_code("GUARD")
    reply = await call(
        http,
        "POST",
        server.url(ISSUE),
        json_body={"code": code, "credit_omr": 1},
        headers=server.auth(),
    )
    assert reply.status == 200, reply
    return code


ISSUER_CALLS = [
    ("POST", ISSUE),
    ("POST", LEGACY),
    ("GET", LIST),
    ("GET", LEGACY),
    ("DELETE", REVOKE),
    ("DELETE", LEGACY_REVOKE),
    ("GET", DETAIL),
    ("GET", HISTORY),
    ("GET", REDEMPTIONS),
]


@pytest.mark.parametrize("cred", CRED_NAMES)
@pytest.mark.parametrize(("method", "template"), ISSUER_CALLS)
async def test_issuer_endpoint_refuses_bad_credentials(
    api: Api, server: ApiServer, protected: str, method: str, template: str, cred: str
) -> None:
    header, status = credentials(server)[cred]
    intruder = new_code("INTRUDER")
    headers = {"Authorization": header} if header is not None else {}
    body = {"code": intruder, "credit_omr": 1} if method == "POST" else None
    reply = await api.request(
        method, p(template, protected), json_body=body, headers=headers, auth=False
    )
    message = assert_json_error(reply, status)
    if status == 401:
        assert reply.headers.get("WWW-Authenticate") == "Bearer"
        assert "token" in message or "authorization" in message
        if header:
            assert header.split()[-1] not in message, "the token never appears in an error"
    else:
        assert message == "superadmin or sovereign-admin role required"
    # nothing changed: the intruder's voucher was not created and the protected one is live
    assert (await api.detail(intruder)).status == 404
    state = (await api.detail(protected)).json
    assert state["revoked"] is False
    assert state["credit_omr"] == 1


async def test_expired_token_says_token_expired(api: Api, server: ApiServer) -> None:
    headers = {"Authorization": f"Bearer {server.token(ttl=-3600)}"}
    reply = await api.request("GET", LIST, headers=headers, auth=False)
    assert assert_json_error(reply, 401) == "token expired"


async def test_sovereign_admin_is_an_issuer_and_is_recorded_as_the_actor(
    api: Api, server: ApiServer
) -> None:
    headers = server.auth(role="sovereign-admin", sub="sov-1")
    code = new_code("SOV")
    reply = await api.issue({"code": code, "credit_omr": 2}, headers=headers, auth=False)
    assert reply.status == 200, reply
    listed = await api.request("GET", LIST + f"?q={code}", headers=headers, auth=False)
    assert listed.status == 200
    assert [v["code"] for v in listed.json] == [code]
    history = await api.history(code)
    assert history["events"][0]["actor"] == {"sub": "sov-1", "role": "sovereign-admin"}


# ----------------------------------------------------------------------------------- preview


async def test_preview_is_public_and_never_reveals_counters(api: Api) -> None:
    code = new_code("PUB")
    await api.issued(code, 15, description="fifteen", max_redemptions=5)
    reply = await api.preview({"code": f" {code.lower()} ", "extra": 1})
    assert reply.status == 200, reply
    assert reply.content_type == "application/json"
    assert reply.json == {
        "code": code,
        "credit_omr": 15,
        "description": "fifteen",
        "active": True,
        "accepting_redemptions": True,
        "starts_at": None,
        "expires_at": None,
        "kind": "credit",  # issue #21: what it gives
        "summary": "15 OMR credit",
    }
    assert "times_redeemed" not in reply.text
    assert "max_redemptions" not in reply.text
    # a token changes nothing on a public endpoint
    with_token = await api.request("POST", PREVIEW, json_body={"code": code})
    assert with_token.json == reply.json


async def test_preview_of_unknown_and_revoked_codes_is_the_same_404(api: Api) -> None:
    code = new_code("GONE")
    await api.issued(code)
    assert (await api.request("DELETE", p(REVOKE, code))).status == 200
    unknown = await api.preview({"code": new_code("NEVER")})
    revoked = await api.preview({"code": code})
    assert unknown.status == revoked.status == 404
    assert unknown.json == revoked.json == {"error": "voucher not valid"}
    assert unknown.text == revoked.text


async def test_preview_of_an_inactive_voucher_is_410_with_the_preview_body(api: Api) -> None:
    code = new_code("OFF")
    await api.issued(code, 6, description="paused", active=False, max_redemptions=9)
    reply = await api.preview({"code": code})
    assert reply.status == 410, reply
    assert reply.json == {
        "code": code,
        "credit_omr": 6,
        "description": "paused",
        "active": False,
        "accepting_redemptions": False,
        "starts_at": None,
        "expires_at": None,
        "kind": "credit",  # issue #21: what it gives
        "summary": "6 OMR credit",
        "reason": "inactive",
    }
    assert "times_redeemed" not in reply.text
    assert "max_redemptions" not in reply.text


async def redeem(server: ApiServer, code: str, customer: str) -> Accepted:
    nc = await connect(server.nats_url)
    bus: CommandBus | None = None
    try:
        spec = streams.load_spec(server.prefix)
        bus = CommandBus(nc, spec.layout, spec.command_stream)
        await bus.start()
        reply = await bus.send(
            RedeemVoucher(code=code, customer_id=customer), actor=Actor(sub="t", role="service")
        )
        assert isinstance(reply, Accepted), reply
        return reply
    finally:
        if bus is not None:
            await bus.close()
        await nc.close()


async def test_preview_of_a_voucher_at_its_cap_is_410_and_redemptions_are_listed(
    api: Api, server: ApiServer
) -> None:
    code = new_code("CAP")
    await api.issued(code, 7, max_redemptions=1)
    assert (await api.preview({"code": code})).status == 200
    accepted = await redeem(server, code, "cust-1")

    async def at_cap() -> bool:
        return (await api.preview({"code": code})).status == 410

    await wait_until(at_cap, what="preview to show the voucher at its cap")
    reply = await api.preview({"code": code})
    assert reply.json == {
        "code": code,
        "credit_omr": 7,
        "description": "",
        "active": True,
        "accepting_redemptions": False,
        "starts_at": None,
        "expires_at": None,
        "kind": "credit",  # issue #21: what it gives
        "summary": "7 OMR credit",
        "reason": "capped",
    }
    assert "times_redeemed" not in reply.text
    assert "max_redemptions" not in reply.text

    detail = (await api.detail(code)).json
    assert detail["times_redeemed"] == 1
    assert detail["accepting_redemptions"] is False
    assert detail["active"] is True

    redemptions = await api.request("GET", p(REDEMPTIONS, code))
    assert redemptions.status == 200, redemptions
    body = redemptions.json
    assert body["code"] == code
    assert body["next_after_seq"] is None
    assert len(body["redemptions"]) == 1
    item = body["redemptions"][0]
    assert item["customer_id"] == "cust-1"
    assert item["credit_omr"] == 7
    assert item["credit_baisa"] == 7_000
    assert item["seq"] == accepted.seq
    assert item["reversed_at"] is None
    history = await api.history(code)
    assert [e["type"] for e in history["events"]] == ["voucher.issued", "voucher.redeemed"]
    assert history["events"][1]["actor"] == {"sub": "t", "role": "service"}


async def test_redemptions_of_a_fresh_voucher_are_empty_and_unknown_code_is_404(api: Api) -> None:
    code = new_code("NORED")
    await api.issued(code)
    reply = await api.request("GET", p(REDEMPTIONS, code))
    assert reply.status == 200
    assert reply.json == {"code": code, "redemptions": [], "next_after_seq": None}
    assert_json_error(await api.request("GET", p(REDEMPTIONS, new_code("NONE"))), 404)
    assert_json_error(await api.request("GET", p(REDEMPTIONS, "A.B")), 400)


async def test_detail_and_history_of_unknown_or_invalid_codes(api: Api) -> None:
    unknown = new_code("UNKNOWN")
    assert assert_json_error(await api.detail(unknown), 404) == "voucher not found"
    assert_json_error(await api.request("GET", p(HISTORY, unknown)), 404)
    assert_json_error(await api.detail("A.B"), 400)
    assert_json_error(await api.request("GET", p(HISTORY, "xy")), 400)


PREVIEW_BAD_JSON: dict[str, Any] = {
    "missing": {},
    "blank": {"code": "   "},
    "empty": {"code": ""},
    "int": {"code": 5},
    "null": {"code": None},
    "list": {"code": ["ABC"]},
}
PREVIEW_BAD_RAW: dict[str, bytes] = {
    "array": b"[]",
    "json-string": b'"x"',
    "bare-x": b"x",
    "malformed": b'{"code": ',
    "empty": b"",
}


@pytest.mark.parametrize("case", sorted(PREVIEW_BAD_JSON))
async def test_preview_with_an_invalid_code_is_400(api: Api, case: str) -> None:
    assert_json_error(await api.preview(PREVIEW_BAD_JSON[case]), 400)


# Codes no voucher can have: the seed's landing page showed "does not exist" for them (404);
# a 400 read there as an outage ("could not validate the voucher right now").
MALFORMED_CODES = ("PROMO.2026", "SPRING SALE", "AB", "C" * 80, "A.B", "*", ">", "B" * 65, "ÇODE1")


async def test_preview_of_a_malformed_code_is_the_unknown_codes_404(api: Api) -> None:
    unknown = await api.preview({"code": new_code("NONE")})
    assert (unknown.status, unknown.json) == (404, {"error": "voucher not valid"})
    for code in MALFORMED_CODES:
        reply = await api.preview({"code": code})
        assert (reply.status, reply.text) == (unknown.status, unknown.text), code
    # issuing one stays a clear 400 naming the rule
    for code in ("PROMO.2026", "SPRING SALE", "AB", "C" * 80):
        reply = await api.issue({"code": code, "credit_omr": 5})
        assert "code" in assert_json_error(reply, 400), code


@pytest.mark.parametrize("case", sorted(PREVIEW_BAD_RAW))
async def test_preview_with_a_malformed_body_is_400(api: Api, case: str) -> None:
    reply = await api.request(
        "POST",
        PREVIEW,
        data=PREVIEW_BAD_RAW[case],
        headers={"Content-Type": "application/json"},
        auth=False,
    )
    assert_json_error(reply, 400)


# ---------------------------------------------------------------------- routing and body limit


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/no/such/route"),
        ("POST", "/billing/vouchers"),
        ("GET", "/billing/vouchers/ABC/history/more"),
        ("DELETE", "/billing/admin/promos/ABC/extra"),
        # GET / is no longer one: it redirects to the console (issue 18; see
        # test_a_browser_at_the_root_lands_on_the_console)
    ],
)
async def test_unknown_route_is_404_json(api: Api, method: str, path: str) -> None:
    reply = await api.request(method, path)
    assert assert_json_error(reply, 404) == "not found"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", ISSUE, "POST"),
        ("PATCH", LIST, "GET"),
        ("PUT", PREVIEW, "POST"),
        ("POST", LIST, "GET"),
        ("PUT", LEGACY, "GET"),
        ("POST", p(REVOKE, "ABC"), "DELETE"),
        ("PUT", "/healthz", "GET"),
        ("POST", "/metrics", "GET"),
    ],
)
async def test_wrong_method_is_405_json_with_allow(
    api: Api, method: str, path: str, allowed: str
) -> None:
    reply = await api.request(method, path, json_body={"code": "ABC", "credit_omr": 1})
    assert assert_json_error(reply, 405) == "method not allowed"
    allow = {m.strip() for m in reply.headers.get("Allow", "").split(",") if m.strip()}
    assert allowed in allow, reply.headers
    assert method not in allow


@pytest.mark.parametrize(("path", "allowed"), [(ISSUE, "POST"), (PREVIEW, "POST")])
async def test_get_on_a_write_route_is_405_not_a_lookup_of_a_voucher_named_like_it(
    api: Api, path: str, allowed: str
) -> None:
    """/billing/vouchers/issue must not be read as GET /billing/vouchers/{code} for 'ISSUE'."""
    for with_token in (False, True):
        reply = await api.request("GET", path, auth=with_token)
        assert assert_json_error(reply, 405) == "method not allowed"
        assert allowed in reply.headers.get("Allow", ""), reply.headers


@pytest.mark.parametrize("path", [ISSUE, LEGACY, PREVIEW])
async def test_body_over_the_limit_is_413_json_and_nothing_changes(api: Api, path: str) -> None:
    code = new_code("BIG")
    body = json.dumps({"code": code, "credit_omr": 1, "description": "d" * (200 * 1024)}).encode()
    before = await api.listing()
    reply = await api.request("POST", path, data=body, headers={"Content-Type": "application/json"})
    assert assert_json_error(reply, 413) == "request body too large"
    assert await api.listing() == before
    assert (await api.detail(code)).status == 404


# ------------------------------------------------------------------------------- idempotency


async def test_idempotency_key_replays_the_same_result_and_refuses_a_different_body(
    api: Api,
) -> None:
    code = new_code("IDEM")
    key = f"k-{uuid.uuid4().hex}"
    body = {"code": code, "credit_omr": 5, "description": "once"}
    first = await api.issue(body, headers={"Idempotency-Key": key})
    assert first.status == 200, first
    again = await api.issue(body, headers={"Idempotency-Key": key})
    assert again.status == 200, again
    assert again.json == first.json

    conflict = await api.issue({**body, "credit_omr": 6}, headers={"Idempotency-Key": key})
    assert_json_error(conflict, 409)
    revoke_with_same_key = await api.request(
        "DELETE", p(REVOKE, code), headers={"Idempotency-Key": key}
    )
    assert_json_error(revoke_with_same_key, 409)

    history = await api.history(code)
    assert len(history["events"]) == 1, "a replay or a conflict appends nothing"
    assert history["events"][0]["command_id"] == key
    detail = (await api.detail(code)).json
    assert detail["credit_omr"] == 5
    assert detail["revoked"] is False


async def test_revoke_with_an_idempotency_key_replays_ok(api: Api) -> None:
    code = new_code("IDREV")
    await api.issued(code)
    key = f"rev-{uuid.uuid4().hex}"
    first = await api.request("DELETE", p(REVOKE, code), headers={"Idempotency-Key": key})
    retry = await api.request("DELETE", p(REVOKE, code), headers={"Idempotency-Key": key})
    assert first.status == retry.status == 200
    assert first.json == retry.json == {"ok": True}
    assert_json_error(await api.request("DELETE", p(REVOKE, code)), 404)
    history = await api.history(code)
    assert [e["type"] for e in history["events"]] == ["voucher.issued", "voucher.revoked"]


async def test_idempotency_key_reused_for_another_code_is_409(api: Api) -> None:
    key = f"x-{uuid.uuid4().hex}"
    first = await api.issue(
        {"code": new_code("KA"), "credit_omr": 1}, headers={"Idempotency-Key": key}
    )
    assert first.status == 200
    other = new_code("KB")
    second = await api.issue({"code": other, "credit_omr": 1}, headers={"Idempotency-Key": key})
    assert_json_error(second, 409)
    assert (await api.detail(other)).status == 404


async def test_idempotent_replay_after_a_later_update_returns_the_original_result(
    api: Api,
) -> None:
    code = new_code("REPLAY")
    key = f"r-{uuid.uuid4().hex}"
    body = {"code": code, "credit_omr": 5}
    first = await api.issue(body, headers={"Idempotency-Key": key})
    assert first.status == 200, first
    await api.issued(code, 6)  # a later, different write without the key
    retry = await api.issue(body, headers={"Idempotency-Key": key})
    assert retry.status == 200, retry
    assert retry.json == first.json, "a retry returns the original outcome"


# --------------------------------------------------------------------------- operations routes


async def test_healthz_reports_nats_and_partitions(api: Api) -> None:
    reply = await api.request("GET", "/healthz", auth=False)
    assert reply.status == 200
    assert reply.json == {
        "status": "ok",
        "nats": "connected",
        "processor_partitions": list(range(8)),
    }


async def test_readyz_is_200_with_checks(api: Api) -> None:
    reply = await api.request("GET", "/readyz", auth=False)
    assert reply.status == 200, reply
    body = reply.json
    assert body["ready"] is True
    checks = body["checks"]
    assert checks["nats"] is True
    assert checks["postgres"] is True
    assert set(checks["projection_lag"]) == {
        "vouchers",
        "wallets",
        "billing",
        "campaigns",
        "reports",
        "global_vouchers",
        "audit",
    }
    assert all(isinstance(v, int) and v >= 0 for v in checks["projection_lag"].values())


async def test_metrics_expose_command_counter_and_request_latency(api: Api) -> None:
    await api.issued(new_code("MET"))
    await api.request("GET", "/no/such/route")
    reply = await api.request("GET", "/metrics", auth=False)
    assert reply.status == 200
    assert reply.content_type == "text/plain"
    text = reply.text
    assert "# TYPE voucher_ledger_commands_total counter" in text
    match = re.search(
        r'^voucher_ledger_commands_total\{outcome="accepted",type="issue_voucher"\} (\d+)(?:\.0)?$',
        text,
        re.M,
    )
    assert match is not None, text[:2000]
    assert int(match.group(1)) >= 1
    assert "# TYPE voucher_ledger_http_request_duration_seconds histogram" in text
    assert re.search(
        r'^voucher_ledger_http_request_duration_seconds_count\{method="POST",'
        r'route="/billing/vouchers/issue",status="200"\} [1-9]\d*(?:\.0)?$',
        text,
        re.M,
    ), text[:2000]
    assert 'route="unmatched",status="404"' in text
    assert "voucher_ledger_projection_lag_events" in text
    appends = re.search(r"^voucher_ledger_processor_appends_total (\S+)$", text, re.M)
    events = re.search(r"^voucher_ledger_processor_events_appended_total (\S+)$", text, re.M)
    assert appends is not None, text[:2000]
    assert events is not None, text[:2000]
    assert 1 <= float(appends.group(1)) <= float(events.group(1))


async def test_openapi_documents_exactly_the_routes_the_app_serves(api: Api) -> None:
    reply = await api.request("GET", "/openapi.json", auth=False)
    assert reply.status == 200
    spec = reply.json
    assert spec["openapi"].startswith("3.")
    documented = {
        (method, path)
        for path, ops in spec["paths"].items()
        for method in ops
        if method != "parameters"
    }
    assert documented == EXERCISED
    schemas = spec["components"]["schemas"]
    assert set(schemas["PreviewOut"]["properties"]) == PREVIEW_KEYS
    assert set(schemas["VoucherOut"]["properties"]) == VOUCHER_KEYS
    assert spec["paths"][PREVIEW]["post"]["security"] == []
    assert {"401", "403"} <= set(spec["paths"][ISSUE]["post"]["responses"])


# -------------------------------------------------------------------------- read your writes


async def test_issue_then_preview_always_sees_the_voucher(api: Api) -> None:
    stem = f"RYW{uuid.uuid4().hex[:6]}".upper()
    misses = []
    for n in range(200):
        code = f"{stem}-{n}"
        issued = await api.issue({"code": code, "credit_omr": 1})
        assert issued.status == 200, issued
        preview = await api.preview({"code": code})
        if preview.status != 200:
            misses.append((code, preview.status, preview.text))
    assert misses == []


async def test_revoke_then_preview_never_sees_the_revoked_voucher(api: Api) -> None:
    stem = f"RYR{uuid.uuid4().hex[:6]}".upper()
    codes = [f"{stem}-{n}" for n in range(40)]
    for code in codes:
        await api.issued(code)
    seen = []
    for code in codes:
        revoked = await api.request("DELETE", p(REVOKE, code))
        assert revoked.status == 200, revoked
        preview = await api.preview({"code": code})
        if preview.status != 404:
            seen.append((code, preview.status))
    assert seen == []


# ------------------------------------------------------------------------------- 5xx findings


@pytest.mark.parametrize(
    "path",
    [
        LIST + "?limit=%C2%B2",
        LIST + "?offset=%E2%91%A0",
        LEGACY + "?limit=%C2%B2",
        "/billing/vouchers/ABC/history?after_seq=%C2%B2",
        "/billing/vouchers/ABC/redemptions?limit=%C2%B9",
    ],
)
async def test_query_integer_with_a_non_decimal_digit_is_400(api: Api, path: str) -> None:
    assert_json_error(await api.request("GET", path), 400)


async def test_query_integer_with_unicode_decimal_digits_is_accepted_or_400(api: Api) -> None:
    # '٣' (ARABIC-INDIC DIGIT THREE) is a decimal digit: int() accepts it, so must the API.
    reply = await api.request("GET", LIST + "?limit=%D9%A3")
    assert reply.status in (200, 400), reply
    if reply.status == 200:
        assert len(reply.json) <= 3


@pytest.mark.parametrize(
    "header",
    ["Bearer \xff", "Bearer a\x80b", "Bearer \xe9t\xe9"],
    ids=["ff", "80", "latin1-e9"],
)
async def test_authorization_header_that_is_not_utf8_is_401(server: ApiServer, header: str) -> None:
    # urllib sends header values as latin-1: these code points go out as the raw bytes
    reply = await asyncio.to_thread(
        sync_call, "GET", server.url(LIST), headers={"Authorization": header}
    )
    assert_json_error(reply, 401)


async def test_description_with_a_nul_character_does_not_poison_the_read_models(
    tmp_path: Path, nats_url: str, pg_url: str, http: aiohttp.ClientSession
) -> None:
    async with running_server(
        tmp_path, nats_url, pg_url, name="nul", READ_YOUR_WRITES_TIMEOUT="2"
    ) as srv:
        poisoned = await call(
            http,
            "POST",
            srv.url(ISSUE),
            json_body={"code": "NUL-DESC", "credit_omr": 1, "description": "a\x00b"},
            headers=srv.auth(),
        )
        assert poisoned.status in (200, 400), poisoned
        after = await call(
            http,
            "POST",
            srv.url(ISSUE),
            json_body={"code": "AFTER-NUL", "credit_omr": 1},
            headers=srv.auth(),
        )
        assert after.status == 200, after
        preview = await call(http, "POST", srv.url(PREVIEW), json_body={"code": "AFTER-NUL"})
        assert preview.status == 200, "a write after the NUL description is readable"
        if poisoned.status == 200:
            stored = await call(http, "GET", srv.url(p(DETAIL, "NUL-DESC")), headers=srv.auth())
            assert stored.status == 200
            assert stored.json["description"] == "a\x00b"


# -------------------------------------------------------------------------------- rate limit


@pytest.fixture(scope="module")
async def limited(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str
) -> AsyncIterator[ApiServer]:
    async with running_server(
        tmp_path_factory.mktemp("limited"),
        nats_url,
        pg_url,
        name="rl",
        PREVIEW_BURST="3",
        PREVIEW_RATE_PER_MINUTE="1",
    ) as srv:
        yield srv


async def test_preview_is_rate_limited_per_client_with_retry_after(
    limited: ApiServer, http: aiohttp.ClientSession
) -> None:
    url = limited.url(PREVIEW)
    statuses = []
    for _ in range(3):
        reply = await call(http, "POST", url, json_body={"code": "NOT-THERE"})
        statuses.append(reply.status)
    assert statuses == [404, 404, 404]
    limited_reply = await call(http, "POST", url, json_body={"code": "NOT-THERE"})
    assert assert_json_error(limited_reply, 429) == "too many requests"
    retry_after = limited_reply.headers.get("Retry-After", "")
    assert retry_after.isdigit(), limited_reply.headers
    assert int(retry_after) >= 1
    assert limited_reply.json["retry_after"] == int(retry_after)
    # X-Forwarded-For is not trusted by default: a forged address does not get a new bucket
    forged = await call(
        http, "POST", url, json_body={"code": "NOT-THERE"}, headers={"X-Forwarded-For": "10.9.8.7"}
    )
    assert forged.status == 429
    # the limit is on the public preview only
    listed = await call(http, "GET", limited.url(LIST), headers=limited.auth())
    assert listed.status == 200
    assert listed.json == []


def test_openapi_paths_match_the_application_router() -> None:
    """The routes registered on the aiohttp app are exactly the ones the tests exercise."""
    from voucher_ledger.config.settings import Settings
    from voucher_ledger.http.app import create_app

    app = create_app(Settings(JWT_SECRET="r" * 40))  # type: ignore[call-arg]
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    # plus the web pages (http/pages.py): pages, not API operations, so not in /openapi.json
    assert served == EXERCISED | PAGE_ROUTES
