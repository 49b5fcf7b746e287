"""Issue #21: campaigns over HTTP on a real ``voucher-ledger serve``: create, generate codes
(idempotent, unique, no look-alikes), the CSV against the stream, preview and checkout of a
campaign code like any voucher, the cap and budget across codes, reversal, revocation, and bad
input refused with a clear 4xx and nothing changed."""

from __future__ import annotations

import csv
import io
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import connect
from tests.e2e.api_helpers import assert_json_error
from tests.e2e.checkout_helpers import Shop, new_customer, shop
from tests.e2e.faults import verify_cli, wait_read_models
from tests.e2e.helpers import clean_env
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.jetstream import streams
from voucher_ledger.ledger.campaign_codes import ALPHABET, CAMPAIGN_CODE_PATTERN
from voucher_ledger.ledger.events import (
    CampaignCodeRedeemed,
    CampaignCodesGenerated,
    CampaignRedemptionReversed,
    RecordedEvent,
)

CAMPAIGNS = "/billing/campaigns"


async def create(s: Shop, **body: Any) -> dict[str, Any]:
    reply = await s.request("POST", CAMPAIGNS, json_body={"name": "Omantel inserts", **body})
    assert reply.status == 200, reply
    out: dict[str, Any] = reply.json
    return out


async def generate(s: Shop, campaign_id: str, count: int, **extra: Any) -> list[str]:
    key = extra.pop("key", None)
    reply = await s.request(
        "POST",
        f"{CAMPAIGNS}/{campaign_id}/codes",
        json_body={"count": count, **extra},
        headers={"Idempotency-Key": key} if key else None,
    )
    assert reply.status == 200, reply
    assert reply.json["count"] == count == len(reply.json["codes"])
    codes: list[str] = reply.json["codes"]
    return codes


async def campaign_events(s: Shop, campaign_id: str) -> list[RecordedEvent]:
    nc = await connect(s.server.nats_url)
    try:
        spec = streams.load_spec(s.server.prefix)
        store = JetStreamEventStore(nc, spec.event_stream)
        try:
            return await store.load(spec.layout.campaign_subject(campaign_id))
        finally:
            await store.close()
    finally:
        await nc.close()


async def csv_rows(s: Shop, campaign_id: str) -> list[dict[str, str]]:
    reply = await s.request("GET", f"{CAMPAIGNS}/{campaign_id}/codes.csv")
    assert reply.status == 200, reply
    assert reply.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(reply.text)))
    assert rows == [] or list(rows[0]) == ["code", "status", "redeemed_by", "redeemed_at"]
    return rows


async def test_a_campaigns_codes_preview_check_out_and_share_one_cap(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    async with shop(tmp_path, nats_url, pg_url, "camp") as s:
        c = await create(s, credit_omr=20, max_redemptions=2, description="Welcome")
        cid = c["campaign_id"]
        assert (c["codes_issued"], c["redemptions"], c["accepting_redemptions"]) == (0, 0, True)
        codes = await generate(s, cid, 5, prefix="oman")
        assert all(code.startswith(f"OMAN-{cid}-") for code in codes)

        # Previews like any voucher (public), and an issuer reads it as one.
        preview = await s.request(
            "POST", "/billing/vouchers/redeem-preview", sub=None, json_body={"code": codes[0]}
        )
        assert preview.status == 200, preview
        assert (preview.json["credit_omr"], preview.json["description"]) == (20, "Welcome")
        detail = await s.voucher(codes[0].lower())
        assert (detail["max_redemptions"], detail["times_redeemed"]) == (1, 0)

        # Three Organizations, three codes, a cap of two across the campaign.
        subs = [new_customer("camp") for _ in range(3)]
        first = await s.checkout(subs[0], promo_code=codes[0])
        assert first.status == 200, first
        assert first.json["paid_by_credit"] is True
        assert (await s.balance(subs[0]))["credit_baisa"] == 11_000  # 20 OMR less a 9 OMR plan
        again = await s.checkout(subs[1], promo_code=codes[0])  # the code's own cap: 1
        assert again.status == 400, again
        second = await s.checkout(subs[1], promo_code=codes[1])
        assert second.status == 200, second
        third = await s.checkout(subs[2], promo_code=codes[2])  # the campaign's cap: 2
        assert third.status == 400, third
        assert "redemption limit" in third.json["error"]
        capped = await s.request(
            "POST", "/billing/vouchers/redeem-preview", sub=None, json_body={"code": codes[3]}
        )
        assert (capped.status, capped.json["reason"]) == (410, "capped")

        shown = await s.request("GET", f"{CAMPAIGNS}/{cid}")
        assert shown.status == 200, shown
        assert (shown.json["redemptions"], shown.json["credit_granted_omr"]) == (2, 40)
        assert shown.json["accepting_redemptions"] is False
        assert shown.json["timeline"][-1]["redemptions"] == 2
        listed = await s.request("GET", CAMPAIGNS)
        assert [x["campaign_id"] for x in listed.json] == [cid]

        # The CSV and the stream say the same.
        rows = await csv_rows(s, cid)
        assert [r["code"] for r in rows] == codes
        events = await campaign_events(s, cid)
        redeemed = {e.envelope.event.code: e for e in events if _is(e, CampaignCodeRedeemed)}
        for row in rows:
            event = redeemed.get(row["code"])
            if event is None:
                assert (row["status"], row["redeemed_by"], row["redeemed_at"]) == (
                    "available",
                    "",
                    "",
                )
            else:
                assert row["status"] == "redeemed"
                assert row["redeemed_by"] == event.envelope.event.customer_id
                assert row["redeemed_at"].startswith(event.envelope.occurred_at.date().isoformat())
        assert set(redeemed) == {codes[0], codes[1]}
        # A code's history and redemptions read like a voucher's: its campaign's events for it.
        history = await s.request("GET", f"/billing/vouchers/{codes[0]}/history")
        assert history.status == 200, history
        assert [e["type"] for e in history.json["events"]] == [
            "campaign.created",
            "campaign.codes_generated",
            "campaign.code_redeemed",
        ]
        untouched = await s.request("GET", f"/billing/vouchers/{codes[4]}/history")
        assert [e["type"] for e in untouched.json["events"]] == [
            "campaign.created",
            "campaign.codes_generated",
        ]
        taken = await s.request("GET", f"/billing/vouchers/{codes[0]}/redemptions")
        assert [r["customer_id"] for r in taken.json["redemptions"]] == [subs[0]]

        # Revoking the campaign revokes its codes.
        revoked = await s.request("DELETE", f"{CAMPAIGNS}/{cid}")
        assert revoked.status == 200, revoked
        gone = await s.request(
            "POST", "/billing/vouchers/redeem-preview", sub=None, json_body={"code": codes[4]}
        )
        assert gone.status == 404, gone
        late = await s.checkout(new_customer("camp"), promo_code=codes[4])
        assert late.status == 400, late
        assert {r["status"] for r in await csv_rows(s, cid)} == {"revoked"}

        await wait_read_models(s.server.database_url, await s.stream_seq())
        env = clean_env(
            NATS_URL=s.server.nats_url,
            DATABASE_URL=s.server.database_url,
            SUBJECT_PREFIX=s.server.prefix,
        )
        await verify_cli(env)


async def test_a_budget_binds_across_codes_and_a_failed_checkout_gives_its_share_back(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    async with shop(tmp_path, nats_url, pg_url, "campb") as s:
        # 30 OMR of budget at 20 OMR a code: one redemption fits, not two.
        c = await create(s, credit_omr=20, budget_omr=30)
        cid = c["campaign_id"]
        codes = await generate(s, cid, 3)
        # Without Stripe a 29 OMR plan on 20 OMR of credit cannot be paid: the checkout fails
        # and its compensation gives the budget back.
        failed = await s.checkout(new_customer("campb"), plan_id="business", promo_code=codes[0])
        assert failed.status in (400, 409, 503), failed
        ok = await s.checkout(new_customer("campb"), promo_code=codes[1])
        assert ok.status == 200, ok
        over = await s.checkout(new_customer("campb"), promo_code=codes[2])
        assert over.status == 400, over
        assert "budget" in over.json["error"]
        shown = (await s.request("GET", f"{CAMPAIGNS}/{cid}")).json
        assert (shown["redemptions"], shown["credit_granted_baisa"]) == (1, 20_000)
        assert shown["budget_left_baisa"] == 10_000
        events = await campaign_events(s, cid)
        kinds = [type(e.envelope.event).__name__ for e in events]
        assert kinds.count("CampaignCodeRedeemed") == 2
        assert kinds.count("CampaignRedemptionReversed") == 1
        reversed_ = next(e for e in events if _is(e, CampaignRedemptionReversed))
        assert reversed_.envelope.event.code == codes[0]


async def test_generation_is_idempotent_unique_and_free_of_look_alikes(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    """100,000 codes in one call (20 messages of 5,000 in one atomic append): unique, of the
    alphabet, the same on a retry with the key; the CSV lists exactly the stream's codes."""
    async with shop(tmp_path, nats_url, pg_url, "campg") as s:
        cid = (await create(s, credit_omr=5))["campaign_id"]
        key = f"gen-{uuid.uuid4().hex[:8]}"
        codes = await generate(s, cid, 100_000, key=key, prefix="VCH")
        assert await generate(s, cid, 100_000, key=key, prefix="VCH") == codes  # a retry
        reused = await s.request(
            "POST",
            f"{CAMPAIGNS}/{cid}/codes",
            json_body={"count": 3},
            headers={"Idempotency-Key": key},
        )
        assert_json_error(reused, 409)
        more = await generate(s, cid, 5)
        assert len(set(codes) | set(more)) == 100_005
        for code in codes:
            match = CAMPAIGN_CODE_PATTERN.fullmatch(code)
            assert match is not None, code
            assert match.group(1) == cid, code
            assert set(code.removeprefix(f"VCH-{cid}-")) <= set(ALPHABET)
        events = await campaign_events(s, cid)
        parts = [e.envelope.event for e in events if _is(e, CampaignCodesGenerated)]
        assert [len(p.codes) for p in parts] == [5000] * 20 + [5]
        assert [c for p in parts for c in p.codes] == codes + more
        rows = await csv_rows(s, cid)
        assert [r["code"] for r in rows] == codes + more
        assert {r["status"] for r in rows} == {"available"}
        shown = (await s.request("GET", f"{CAMPAIGNS}/{cid}")).json
        assert shown["codes_issued"] == 100_005


async def test_bad_campaign_input_is_a_clear_4xx_and_changes_nothing(
    tmp_path: Path, nats_url: str, pg_url: str
) -> None:
    async with shop(tmp_path, nats_url, pg_url, "campx") as s:
        before = await s.stream_seq()
        bad_bodies: list[Any] = [
            {"name": "x"},  # no credit
            {"name": "x", "credit_omr": 0},
            {"name": "x", "credit_omr": 5, "budget_omr": 2},
            {"name": "x", "credit_omr": 5, "max_redemptions": -1},
            {"name": "x", "credit_omr": 5, "kind": "percent_off"},
            {"name": "x", "credit_omr": 5, "typo": 1},
            {"name": "", "credit_omr": 5},
            {
                "name": "x",
                "credit_omr": 5,
                "starts_at": "2030-01-02T00:00:00Z",
                "expires_at": "2030-01-01T00:00:00Z",
            },
            {"name": "x", "credit_omr": "5"},
            # PostgreSQL's infinity to asyncpg, read back without a zone: the list was a 500
            {"name": "x", "credit_omr": 5, "expires_at": "9999-12-31T23:59:59.999999Z"},
        ]
        for body in bad_bodies:
            assert_json_error(await s.request("POST", CAMPAIGNS, json_body=body), 400)
        member = await s.request(
            "POST", CAMPAIGNS, role="member", json_body={"name": "x", "credit_omr": 5}
        )
        assert_json_error(member, 403)
        cid = (await create(s, credit_omr=5))["campaign_id"]
        after_create = await s.stream_seq()
        assert after_create == before + 1
        for body in (
            {"count": 0},
            {"count": 100_001},
            {"count": 3, "prefix": "A-B"},
            {"count": 3, "prefix": "x" * 17},
            {"count": 3, "extra": True},
        ):
            path = f"{CAMPAIGNS}/{cid}/codes"
            assert_json_error(await s.request("POST", path, json_body=body), 400)
        for path in (f"{CAMPAIGNS}/222222", f"{CAMPAIGNS}/222222/codes.csv"):
            assert_json_error(await s.request("GET", path), 404)
        assert_json_error(await s.request("GET", f"{CAMPAIGNS}/a.b*"), 400)
        missing = await s.request("POST", f"{CAMPAIGNS}/222222/codes", json_body={"count": 1})
        assert_json_error(missing, 404)
        # A single voucher cannot take a campaign's code shape.
        shaped = await s.request(
            "POST",
            "/billing/vouchers/issue",
            json_body={"code": f"{cid}-2345678923", "credit_omr": 5},
        )
        assert "campaign" in assert_json_error(shaped, 409)
        assert await s.stream_seq() == after_create


def _is(recorded: RecordedEvent, kind: type) -> bool:
    return isinstance(recorded.envelope.event, kind)
