"""Issue #20: when a code redeems (``starts_at``, ``expires_at``) and for whom (``plans``,
``min_order_omr``, ``new_organizations_only``), against a real ``voucher-ledger serve``.

Outside its window or its rules a code does not redeem: the checkout is a 4xx, nothing is
burned (``times_redeemed`` and the balance unchanged), and the public preview's 410 says why
with the window."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tests.conftest import connect, wait_until
from tests.e2e.api_helpers import assert_json_error
from tests.e2e.checkout_helpers import Shop, new_code, new_customer, shop
from voucher_ledger.jetstream import streams
from voucher_ledger.signing.proof import GENESIS, EventSigner, Link, link_of

OMR = 1000
ISSUE = "/billing/vouchers/issue"
PREVIEW = "/billing/vouchers/redeem-preview"


@pytest.fixture(scope="module")
async def rules_shop(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str
) -> AsyncIterator[Shop]:
    async with shop(tmp_path_factory.mktemp("rules"), nats_url, pg_url, "rules") as s:
        yield s


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def issue(s: Shop, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    reply = await s.request("POST", ISSUE, json_body=body)
    assert reply.status == status, reply
    out: dict[str, Any] = reply.json
    return out


async def preview(s: Shop, code: str) -> tuple[int, dict[str, Any]]:
    reply = await s.request("POST", PREVIEW, sub=None, json_body={"code": code})
    return reply.status, reply.json


async def refused_and_nothing_burned(
    s: Shop, sub: str, code: str, fragment: str, **checkout: Any
) -> None:
    before = (await s.voucher(code))["times_redeemed"]
    reply = await s.checkout(sub, promo_code=code, **checkout)
    message = assert_json_error(reply, 400)
    assert fragment in message, message
    assert (await s.voucher(code))["times_redeemed"] == before
    assert (await s.balance(sub))["credit_baisa"] == 0


# ------------------------------------------------------------------------------ windows


async def test_a_code_redeems_until_its_expiry_then_refuses_and_the_preview_says_expired(
    rules_shop: Shop,
) -> None:
    s = rules_shop
    code = new_code("ENDS")
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=8)
    issued = await issue(s, {"code": code, "credit_omr": 5, "expires_at": iso(expires)})
    assert (issued["starts_at"], issued["expires_at"]) == (None, iso(expires))

    early = new_customer()
    reply = await s.checkout(early, "free", promo_code=code)
    assert reply.status == 200, reply
    status, body = await preview(s, code)
    assert status == 200, body
    assert body["expires_at"] == iso(expires)
    assert "reason" not in body

    async def ended() -> bool:
        return (await preview(s, code))[0] == 410

    await wait_until(ended, timeout=30, what="the preview to say the code ended")
    status, body = await preview(s, code)
    assert (status, body["reason"], body["expires_at"]) == (410, "expired", iso(expires))
    assert body["accepting_redemptions"] is False
    assert datetime.now(UTC) >= expires

    await refused_and_nothing_burned(s, new_customer(), code, "expired", plan_id="free")
    voucher = await s.voucher(code)
    assert voucher["times_redeemed"] == 1
    assert voucher["accepting_redemptions"] is False
    assert (await s.balance(early))["credit_baisa"] == 5 * OMR


async def test_a_code_not_started_previews_410_not_started_then_200_and_redeems(
    rules_shop: Shop,
) -> None:
    s = rules_shop
    code = new_code("LATER")
    starts = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)
    await issue(s, {"code": code, "credit_omr": 4, "starts_at": iso(starts)})
    status, body = await preview(s, code)
    assert (status, body["reason"], body["starts_at"]) == (410, "not_started", iso(starts))
    assert body["expires_at"] is None
    await refused_and_nothing_burned(s, new_customer(), code, "valid from", plan_id="free")

    async def started() -> bool:
        return (await preview(s, code))[0] == 200

    await wait_until(started, timeout=30, what="the preview to accept the code")
    assert datetime.now(UTC) >= starts
    sub = new_customer()
    reply = await s.checkout(sub, "free", promo_code=code)
    assert reply.status == 200, reply
    assert (await s.voucher(code))["times_redeemed"] == 1
    assert (await s.balance(sub))["credit_baisa"] == 4 * OMR


async def test_a_window_is_validated_kept_on_update_and_cleared_by_null(rules_shop: Shop) -> None:
    s = rules_shop
    code = new_code("WIN")
    start = datetime(2031, 1, 1, tzinfo=UTC)
    end = datetime(2031, 2, 1, tzinfo=UTC)
    before = await s.stream_seq()
    for bad, field in (
        ({"starts_at": iso(end), "expires_at": iso(start)}, "expires_at"),
        ({"starts_at": iso(start), "expires_at": iso(start)}, "expires_at"),
        ({"expires_at": "2031-01-01T00:00:00"}, "expires_at"),  # no zone
        # PostgreSQL's infinity to asyncpg, read back without a zone: every list was a 500
        ({"expires_at": "9999-12-31T23:59:59.999999Z"}, "expires_at"),
        ({"starts_at": "0001-01-01T00:00:00Z"}, "starts_at"),
        ({"starts_at": "soon"}, "starts_at"),
        ({"starts_at": 1924992000}, "starts_at"),  # a number is not a timestamp
        ({"plans": []}, "plans"),
        ({"plans": ["ok", "bad\nplan"]}, "plans"),
        ({"min_order_omr": -1}, "min_order_omr"),
        ({"new_organizations_only": "yes"}, "new_organizations_only"),
    ):
        reply = await s.request("POST", ISSUE, json_body={"code": code, "credit_omr": 1, **bad})
        message = assert_json_error(reply, 400)
        assert field in message, (bad, message)
    assert await s.stream_seq() == before, "a refused issue appends nothing"

    # +04:00 is read as the instant it names, and answered in UTC
    created = await issue(
        s,
        {
            "code": code,
            "credit_omr": 2,
            "starts_at": "2031-01-01T04:00:00+04:00",
            "expires_at": iso(end),
            "plans": ["business", "starter"],
            "min_order_omr": 7,
            "new_organizations_only": True,
        },
    )
    assert created["starts_at"] == iso(start)
    assert (created["plans"], created["min_order_omr"], created["min_order_baisa"]) == (
        ["business", "starter"],
        7,
        7 * OMR,
    )
    assert created["new_organizations_only"] is True

    # omitted: kept; the listed row posted back (read-only fields included): unchanged
    updated = await issue(s, {"code": code, "credit_omr": 3})
    for field in ("starts_at", "expires_at", "plans", "min_order_omr", "new_organizations_only"):
        assert updated[field] == created[field], field
    posted_back = await issue(s, {**updated, "description": "again"})
    assert posted_back["expires_at"] == iso(end)
    # an end before the start the voucher keeps is refused by the ledger too
    reply = await s.request(
        "POST", ISSUE, json_body={"code": code, "credit_omr": 3, "expires_at": iso(start)}
    )
    assert "expires_at must be after starts_at" in assert_json_error(reply, 400)

    cleared = await issue(
        s,
        {
            "code": code,
            "credit_omr": 3,
            "starts_at": None,
            "plans": None,
            "min_order_omr": None,
            "new_organizations_only": None,
        },
    )
    assert (cleared["starts_at"], cleared["expires_at"]) == (None, iso(end))
    assert (cleared["plans"], cleared["min_order_omr"], cleared["new_organizations_only"]) == (
        None,
        0,
        False,
    )
    detail = await s.voucher(code)
    listed = await s.request("GET", f"/billing/vouchers/list?q={code}")
    assert listed.json[0]["expires_at"] == detail["expires_at"] == iso(end)
    history = await s.request("GET", f"/billing/vouchers/{code}/history")
    issued_events = [e["event"] for e in history.json["events"]]
    assert [e["version"] for e in issued_events] == [
        3,
        3,
        3,
        3,
    ]  # voucher.issued v3 since issue #21
    assert issued_events[0]["min_order_baisa"] == 7 * OMR
    assert issued_events[-1]["plans"] is None
    at = await s.request(
        "GET", f"/billing/vouchers/{code}?at={history.json['events'][0]['occurred_at']}"
    )
    assert at.status == 200, at
    assert (at.json["plans"], at.json["starts_at"]) == (["business", "starter"], iso(start))


# ------------------------------------------------------------------------------ eligibility


async def test_plans_accept_a_listed_plan_and_refuse_another(rules_shop: Shop) -> None:
    s = rules_shop
    code = new_code("PLAN")
    await issue(s, {"code": code, "credit_omr": 40, "plans": ["business"]})
    await refused_and_nothing_burned(
        s, new_customer(), code, "only for the plans", plan_id="starter"
    )
    sub = new_customer()
    reply = await s.checkout(sub, "business", promo_code=code)
    assert reply.status == 200, reply
    assert reply.json["credit_applied_omr"] == 29
    assert (await s.voucher(code))["times_redeemed"] == 1


async def test_min_order_counts_the_total_before_credit(rules_shop: Shop) -> None:
    s = rules_shop
    code = new_code("MIN")
    await issue(s, {"code": code, "credit_omr": 20, "min_order_omr": 12})
    # starter alone is 9 OMR: below the minimum
    await refused_and_nothing_burned(s, new_customer(), code, "at least 12", plan_id="starter")
    sub = new_customer()
    reply = await s.checkout(sub, "starter", ["backup"], promo_code=code)  # 9 + 3 = 12
    assert reply.status == 200, reply
    assert (reply.json["total_omr"], reply.json["credit_balance"]) == (12, 8)
    assert (await s.voucher(code))["times_redeemed"] == 1


async def test_new_organizations_only_refuses_an_account_with_a_completed_order(
    rules_shop: Shop,
) -> None:
    s = rules_shop
    code = new_code("FIRST")
    await issue(s, {"code": code, "credit_omr": 6, "new_organizations_only": True})
    veteran = new_customer()
    first = await s.checkout(veteran, "free")
    assert first.status == 200, first
    assert first.json["status"] == "completed"
    await refused_and_nothing_burned(s, veteran, code, "first order", plan_id="free")
    newcomer = new_customer()
    reply = await s.checkout(newcomer, "free", promo_code=code)
    assert reply.status == 200, reply
    assert (await s.balance(newcomer))["credit_baisa"] == 6 * OMR
    assert (await s.voucher(code))["times_redeemed"] == 1


async def test_a_voucher_issued_before_issue_20_reads_with_no_window_and_no_rules(
    rules_shop: Shop,
) -> None:
    """A v1 voucher.issued, as the old producer wrote it, on the stream: the read models, the
    detail, ?at=, the history and a checkout read it upcast (no window, no rules)."""
    s = rules_shop
    code = new_code("OLDV1")
    stored = {
        "event_id": str(uuid.uuid4()),
        "aggregate": "voucher",
        "aggregate_id": code,
        "occurred_at": "2025-01-02T03:04:05Z",
        "actor": {"sub": "legacy-admin", "role": "superadmin"},
        "command_id": f"legacy-{code}",
        "event": {
            "type": "voucher.issued",
            "version": 1,
            "code": code,
            "credit_baisa": 3000,
            "description": "from before",
            "active": True,
            "max_redemptions": 0,
            "change": "created",
        },
    }
    # Signed as the old producer signed it, over its stored (v1) bytes, with the ledger's key
    # (events are signed from the cut-over on): every reader checks those bytes, not the event
    # upcast.
    body = json.dumps(stored, separators=(",", ":")).encode()
    assert s.server.data_dir is not None
    signer = EventSigner(_private_key(s.server.data_dir / "ledger-signing.key"))
    ((proof,),) = signer.seal([[Link(GENESIS, bytes.fromhex(link_of(GENESIS, body)))]])
    raw = body[:-1] + b',"proof":' + proof.model_dump_json().encode() + b"}"
    nc = await connect(s.server.nats_url)
    try:
        spec = streams.load_spec(s.server.prefix)
        await nc.jetstream().publish(spec.layout.voucher_subject(code), raw)
    finally:
        await nc.close()

    async def projected() -> bool:
        return (await s.request("GET", f"/billing/vouchers/{code}")).status == 200

    await wait_until(projected, what="the v1 event in the read models")
    detail = await s.voucher(code)
    assert (detail["starts_at"], detail["expires_at"], detail["plans"]) == (None, None, None)
    assert (detail["min_order_omr"], detail["credit_valid_for"]) == (0, None)
    at = await s.request("GET", f"/billing/vouchers/{code}?at=2025-06-01T00:00:00Z")
    assert (at.status, at.json["new_organizations_only"]) == (200, False)
    history = await s.request("GET", f"/billing/vouchers/{code}/history")
    [entry] = history.json["events"]
    assert (entry["version"], entry["event"]["version"], entry["event"]["plans"]) == (3, 3, None)
    sub = new_customer()
    reply = await s.checkout(sub, "free", promo_code=code)
    assert reply.status == 200, reply
    assert (await s.balance(sub))["credit_baisa"] == 3 * OMR


def _private_key(path: Path) -> Ed25519PrivateKey:
    key = load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key
