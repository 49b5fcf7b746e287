"""Issue #21, deliverable 4: ``GET /billing/reports/campaigns`` on a real ``voucher-ledger
serve`` (real NATS and PostgreSQL, the fake Stripe for paid orders). Two campaigns of credit
codes (one whose credit expires) and a single voucher; orders on credit alone, orders paid
partly by Stripe (the webhook completes them), an order without a code, an expiring grant
expired, a redemption reversed. The report (JSON and CSV) equals a fold of the event stream
written here, by the rules the README states; the window filters; bad parameters are a 400;
``verify`` is clean and a rebuild swaps in the very rows the live projector wrote."""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import connect, wait_until
from tests.e2e.api_helpers import assert_json_error
from tests.e2e.checkout_helpers import SOVEREIGN, Shop, new_code, new_customer, shop, stripe_env
from tests.e2e.faults import verify_cli, wait_read_models
from tests.e2e.helpers import clean_env
from tests.fakes.stripe_server import FakeStripe
from voucher_ledger.jetstream import streams
from voucher_ledger.ledger.campaign_codes import campaign_of
from voucher_ledger.ledger.events import (
    CampaignCodeRedeemed,
    CampaignCodesGenerated,
    CampaignRedemptionReversed,
    CreditCaptured,
    CreditExpired,
    CreditGranted,
    CreditReleased,
    CreditReserved,
    GrantRevoked,
    OrderCompleted,
    OrderOpened,
    OrderPlaced,
    RedemptionReversed,
    VoucherIssued,
    VoucherRedeemed,
)
from voucher_ledger.projections.replay import read_stream, stream_head

OMR = 1000
REPORT = "/billing/reports/campaigns"
FIGURES = (
    "codes_issued",
    "redemptions",
    "credit_granted_baisa",
    "credit_spent_baisa",
    "credit_expired_baisa",
    "discount_baisa",
    "orders",
    "revenue_baisa",
)
TABLES = {
    "report_facts": "seq, n",
    "report_grants": "customer_id, redemption_id",
    "report_holds": "order_id",
    "report_orders": "order_id",
}


@pytest.fixture(scope="module")
async def s(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str, fake_stripe: FakeStripe
) -> AsyncIterator[Shop]:
    async with shop(
        tmp_path_factory.mktemp("reports"),
        nats_url,
        pg_url,
        "reports",
        CREDIT_EXPIRY_INTERVAL="0.5",
        **stripe_env(fake_stripe),
    ) as shop_:
        yield shop_


# ------------------------------------------------------------------ the fold written here


def _line(code: str | None) -> str:
    return "none" if not code else campaign_of(code) or "vouchers"


def fold(events: list[Any], since: datetime | None, until: datetime | None) -> dict[str, Any]:
    """Each report line's figures of the events in [since, until), by the README's rules.
    Spending needs the whole history (which grant an order's credit came from), so every event
    is walked and only the figures of those in the window are counted."""
    lines: dict[str, dict[str, int]] = {}
    grants: dict[str, list[list[Any]]] = {}  # account -> [rid, line, left, expiring], in order
    holds: dict[str, list[list[Any]]] = {}  # order -> [line, rid, amount, expiring]
    order_line: dict[str, str] = {}
    discounts: dict[str, tuple[str, int]] = {}  # order -> its discount's line and amount

    for e in events:
        at = e.envelope.occurred_at
        counted = (since is None or at >= since) and (until is None or at < until)

        def add(line: str, figure: str, amount: int, counted: bool = counted) -> None:
            if counted:
                row = lines.setdefault(line, dict.fromkeys(FIGURES, 0))
                row[figure] += amount

        event = e.envelope.event
        mine = grants.setdefault(e.envelope.aggregate_id, [])
        parts = event.parts() if isinstance(event, OrderPlaced) else [event]
        # order.placed's discount (the discounts' shape: a model, or a dict before them)
        discount = getattr(event, "discount", None) if isinstance(event, OrderPlaced) else None
        if discount is not None:
            code, amount = (
                (discount["code"], discount["amount_baisa"])
                if isinstance(discount, dict)
                else (discount.code, discount.amount_baisa)
            )
            discounts[event.order_id] = (_line(code), amount)
        for p in parts:
            if isinstance(p, VoucherIssued) and p.change == "created":
                add("vouchers", "codes_issued", 1)
            elif isinstance(p, CampaignCodesGenerated):
                add(p.campaign_id, "codes_issued", len(p.codes))
            elif isinstance(p, VoucherRedeemed | CampaignCodeRedeemed):
                add(_line(p.code), "redemptions", 1)
            elif isinstance(p, RedemptionReversed | CampaignRedemptionReversed):
                add(_line(p.code), "redemptions", -1)
            elif isinstance(p, CreditGranted):
                add(_line(p.code), "credit_granted_baisa", p.amount_baisa)
                mine.append(
                    [p.redemption_id, _line(p.code), p.amount_baisa, p.expires_at is not None]
                )
            elif isinstance(p, GrantRevoked):
                add(_line(p.code), "credit_granted_baisa", -p.amount_baisa)
                rest = p.amount_baisa - sum(x.amount_baisa for x in p.lots)
                own = [g for g in mine if g[0] == p.redemption_id and not g[3]]
                for g in own + [g for g in mine if not g[3] and g not in own]:
                    n = min(rest, g[2])
                    g[2], rest = g[2] - n, rest - n
            elif isinstance(p, CreditReserved):
                hold = holds.setdefault(p.order_id, [])
                by_rid = {g[0]: g for g in mine}
                for x in p.lots:
                    hold.append([by_rid[x.redemption_id][1], x.redemption_id, x.amount_baisa, True])
                rest = p.amount_baisa - sum(x.amount_baisa for x in p.lots)
                for g in mine:  # credit that never expires: the oldest grant first
                    if not g[3] and rest and g[2]:
                        n = min(rest, g[2])
                        g[2], rest = g[2] - n, rest - n
                        hold.append([g[1], g[0], n, False])
                assert rest == 0, "more credit reserved than the account's grants hold"
            elif isinstance(p, CreditReleased):
                hold = holds.pop(p.order_id, [])
                assert sum(h[2] for h in hold) == p.amount_baisa  # a release returns it all
                for h in hold:
                    for g in mine:
                        if g[0] == h[1] and not h[3]:
                            g[2] += h[2]
            elif isinstance(p, CreditCaptured):
                hold = holds.pop(p.order_id, [])
                assert sum(h[2] for h in hold) == p.amount_baisa  # a capture spends it all
                for h in hold:
                    add(h[0], "credit_spent_baisa", h[2])
            elif isinstance(p, CreditExpired):
                add(_line(p.code), "credit_expired_baisa", p.amount_baisa)
            elif isinstance(p, OrderOpened):
                order_line[p.order_id] = _line(p.promo_code)
            elif isinstance(p, OrderCompleted):
                line = order_line.get(p.order_id, "none")
                add(line, "orders", 1)
                add(line, "revenue_baisa", 0 if p.paid_by_credit else p.amount_paid_baisa)
                if p.order_id in discounts:
                    add(discounts[p.order_id][0], "discount_baisa", discounts[p.order_id][1])
    return lines


async def stream_events(s: Shop) -> list[Any]:
    nc = await connect(s.server.nats_url)
    try:
        spec = streams.load_spec(s.server.prefix)
        head = await stream_head(nc, spec)
        out: list[Any] = []
        async for batch in read_stream(nc, spec, 1, until_seq=head, batch=1000):
            out.extend(batch)
        return out
    finally:
        await nc.close()


# ----------------------------------------------------------------------------- the calls


async def report(s: Shop, query: str = "", *, csv_: bool = False) -> Any:
    headers = {"Accept": "text/csv"} if csv_ else None
    reply = await s.request("GET", REPORT + query, headers=headers)
    assert reply.status == 200, reply
    if csv_:
        assert reply.content_type == "text/csv"
        return list(csv.DictReader(io.StringIO(reply.text)))
    return reply.json


def figures_by_line(body: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The report's non-empty lines (a campaign by its id), with the figures the fold has."""
    out = {}
    for row in body["rows"]:
        line = row["campaign_id"] or row["scope"]
        figures = {f: row[f] for f in FIGURES}
        if any(figures.values()):
            out[line] = figures
    return out


async def create(s: Shop, **body: Any) -> str:
    reply = await s.request("POST", "/billing/campaigns", json_body={"name": "Inserts", **body})
    assert reply.status == 200, reply
    return str(reply.json["campaign_id"])


async def generate(s: Shop, campaign_id: str, count: int) -> list[str]:
    reply = await s.request(
        "POST", f"/billing/campaigns/{campaign_id}/codes", json_body={"count": count}
    )
    assert reply.status == 200, reply
    codes: list[str] = reply.json["codes"]
    return codes


async def pay(s: Shop, fake: FakeStripe, reply: Any) -> None:
    """The Stripe webhook completes a checkout waiting for its payment."""
    assert (reply.status, reply.json["state"]) == (200, "awaiting_payment"), reply
    session_id = reply.json["session_url"].rsplit("/", 1)[-1]
    event = fake.event(
        "checkout.session.completed", session_id, payment_status="paid", status="complete"
    )
    assert (await s.webhook(event)).status == 200
    order_id = reply.json["order_id"]

    async def completed() -> bool:
        return any(o["id"] == order_id and o["status"] == "completed" for o in await s.orders())

    await wait_until(completed, what=f"order {order_id} completed by the webhook")


async def projected(s: Shop) -> None:
    await wait_read_models(s.server.database_url, await s.stream_seq())


# ----------------------------------------------------------------------------------- tests


async def test_the_report_equals_a_fold_of_the_stream_in_json_and_csv_and_by_window(
    s: Shop, fake_stripe: FakeStripe
) -> None:
    lasting = await create(s, credit_omr=10)
    expiring = await create(s, credit_omr=5, credit_valid_for="PT3S")
    a = await generate(s, lasting, 4)
    b = await generate(s, expiring, 2)
    single = new_code("SINGLE")
    await s.issue(single, 4)
    one, two, three, four, five = (new_customer("rep") for _ in range(5))

    # Credit alone: 9 OMR of the 10 of campaign A (1 OMR left, which never expires).
    alone = await s.checkout(one, "starter", promo_code=a[0])
    assert (alone.status, alone.json["paid_by_credit"]) == (200, True), alone
    # Partly Stripe: 10 OMR of A's credit, 19 OMR paid.
    await pay(s, fake_stripe, await s.checkout(two, "business", promo_code=a[1]))
    await projected(s)
    middle = datetime.now(UTC)

    # The single voucher's 4 OMR and A's remaining 1 OMR (the oldest grant first): 5 OMR of
    # credit on a 9 OMR order, 4 OMR paid.
    await pay(s, fake_stripe, await s.checkout(one, "starter", promo_code=single))
    # B's expiring credit: all 5 OMR spent (its lot, exactly) on 29 OMR, 24 paid.
    await pay(s, fake_stripe, await s.checkout(five, "business", promo_code=b[1]))
    # B's expiring credit left alone: it expires.
    assert (await s.checkout(three, "free", promo_code=b[0])).status == 200
    # A redemption reversed: another user's checkout for `three`'s Organization is refused
    # after A's code redeemed (403), and the redemption is given back.
    refused = await s.checkout(four, "starter", promo_code=a[2], tenant_id=three)
    assert_json_error(refused, 403)

    async def expired() -> bool:
        balance = await s.balance(three)
        return any(e["kind"] == "expired" for e in balance["entries"])

    await wait_until(expired, timeout=40, what="campaign B's credit to expire")
    reversals = [
        e.envelope.event
        for e in await stream_events(s)
        if isinstance(e.envelope.event, CampaignRedemptionReversed)
    ]
    assert [r.code for r in reversals] == [a[2]]
    # A discount campaign's code: 20% off a 29 OMR order (5.8 OMR), 23.2 OMR paid.
    off = await create(s, kind="percent_off", percent_off=20, duration="once")
    [c] = await generate(s, off, 1)
    await pay(s, fake_stripe, await s.checkout(new_customer("rep"), "business", promo_code=c))
    # An order without a code, paid by Stripe.
    await pay(s, fake_stripe, await s.checkout(new_customer("rep"), "starter"))
    await projected(s)

    whole = await report(s)
    events = await stream_events(s)
    assert whole["sovereign"] == SOVEREIGN
    assert figures_by_line(whole) == fold(events, None, None)
    # The same by hand, so a rule both folds got wrong the same way fails too.
    got = figures_by_line(whole)
    assert got[lasting] == {
        "codes_issued": 4,
        "redemptions": 2,
        "credit_granted_baisa": 20 * OMR,
        "credit_spent_baisa": 20 * OMR,  # 9 + 10 + the 1 left, oldest first
        "credit_expired_baisa": 0,
        "discount_baisa": 0,
        "orders": 2,
        "revenue_baisa": 19 * OMR,
    }
    assert got[expiring] == {
        "codes_issued": 2,
        "redemptions": 2,
        "credit_granted_baisa": 10 * OMR,
        "credit_spent_baisa": 5 * OMR,
        "credit_expired_baisa": 5 * OMR,
        "discount_baisa": 0,
        "orders": 2,
        "revenue_baisa": 24 * OMR,
    }
    assert got[off] == {
        "codes_issued": 1,
        "redemptions": 1,
        "credit_granted_baisa": 0,
        "credit_spent_baisa": 0,
        "credit_expired_baisa": 0,
        "discount_baisa": 5800,
        "orders": 1,
        "revenue_baisa": 23200,
    }
    vouchers = got["vouchers"]
    assert vouchers["credit_spent_baisa"] == 4 * OMR
    assert (vouchers["orders"], vouchers["revenue_baisa"]) == (1, 4 * OMR)
    assert (got["none"]["orders"], got["none"]["revenue_baisa"]) == (1, 9 * OMR)
    # The Sovereign's totals are the rows' sums, in OMR and baisa.
    totals = whole["totals"]
    assert (totals["scope"], totals["sovereign"]) == ("sovereign", SOVEREIGN)
    for figure in FIGURES:
        assert totals[figure] == sum(r[figure] for r in whole["rows"]), figure
    assert totals["revenue_omr"] == totals["revenue_baisa"] // OMR

    # CSV: the same rows and the totals, with the Sovereign as a column.
    table = await report(s, csv_=True)
    assert len(table) == len(whole["rows"]) + 1
    for row, line in zip(table, [*whole["rows"], totals], strict=True):
        assert row["sovereign"] == SOVEREIGN
        assert (row["scope"], row["campaign_id"] or None) == (line["scope"], line["campaign_id"])
        for figure in (*FIGURES, "credit_spent_omr", "revenue_omr"):
            assert int(row[figure]) == line[figure], figure

    # Windows: [middle, ...) and [..., middle) split the whole, each equal to the fold's.
    stamp = quote(middle.isoformat())
    later = await report(s, f"?from={stamp}")
    earlier = await report(s, f"?to={stamp}")
    assert figures_by_line(later) == fold(events, middle, None)
    assert figures_by_line(earlier) == fold(events, None, middle)
    assert figures_by_line(earlier)[lasting]["orders"] == 2  # one and two
    assert lasting not in figures_by_line(later) or figures_by_line(later)[lasting]["orders"] == 0
    for figure in FIGURES:
        assert later["totals"][figure] + earlier["totals"][figure] == totals[figure], figure
    both = await report(s, f"?from={stamp}&to={quote(datetime.now(UTC).isoformat())}")
    assert figures_by_line(both) == fold(events, middle, datetime.now(UTC))
    empty = await report(s, "?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z")
    assert figures_by_line(empty) == {}
    backwards = await report(s, f"?from={stamp}&to=2020-01-01T00:00:00Z")  # an empty window
    assert figures_by_line(backwards) == {}
    assert {r["campaign_id"] for r in empty["rows"]} >= {lasting, expiring}

    # verify is clean (the reports among its folds), and a rebuild swaps in the same rows.
    env = clean_env(
        NATS_URL=s.server.nats_url,
        DATABASE_URL=s.server.database_url,
        SUBJECT_PREFIX=s.server.prefix,
        DATA_DIR=str(s.server.data_dir),
    )
    printed = await verify_cli(env)
    assert "report_facts" in printed, printed
    before = {t: await s.db(f"SELECT * FROM {t} ORDER BY {k}") for t, k in TABLES.items()}  # noqa: S608
    assert before["report_facts"]
    rebuilt = await _cli(env, "rebuild", "--no-progress")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    after = {t: await s.db(f"SELECT * FROM {t} ORDER BY {k}") for t, k in TABLES.items()}  # noqa: S608
    assert {t: [dict(r) for r in rows] for t, rows in after.items()} == {
        t: [dict(r) for r in rows] for t, rows in before.items()
    }
    await verify_cli(env)
    assert figures_by_line(await report(s)) == figures_by_line(whole)


async def test_a_drift_in_the_report_is_a_diff_of_verify(s: Shop) -> None:
    await s.issue(new_code("DRIFT"), 3)
    await projected(s)
    env = clean_env(
        NATS_URL=s.server.nats_url,
        DATABASE_URL=s.server.database_url,
        SUBJECT_PREFIX=s.server.prefix,
        DATA_DIR=str(s.server.data_dir),
    )
    await verify_cli(env)
    [fact] = await s.db(
        "UPDATE report_facts SET codes_issued = codes_issued + 1 "
        "WHERE (seq, n) = (SELECT seq, n FROM report_facts WHERE scope = 'vouchers' "
        "ORDER BY seq DESC LIMIT 1) RETURNING seq"
    )
    try:
        drifted = await _cli(env, "verify")
        assert drifted.returncode == 1, drifted.stdout + drifted.stderr
        assert "DIFF report_facts[vouchers].codes_issued" in drifted.stdout, drifted.stdout
    finally:
        await s.db(
            "UPDATE report_facts SET codes_issued = codes_issued - 1 WHERE seq = $1", fact["seq"]
        )
    await verify_cli(env)


async def test_bad_report_parameters_are_a_400_and_only_issuers_read_it(s: Shop) -> None:
    for query, said in (
        ("?from=yesterday", "from"),
        ("?to=2026-13-01T00:00:00Z", "to"),
        ("?from=2026-01-01T00:00:00", "time zone"),
        ("?from=2026-01-01T00:00:00Z&from=2026-01-02T00:00:00Z", "once"),
        ("?since=2026-01-01T00:00:00Z", "since"),
        ("?from=" + "9" * 70, "from"),
        ("?from=0001-01-01T00:00:00%2B14:00", "range"),
        ("?to=9999-12-31T23:59:59-14:00", "range"),
    ):
        reply = await s.request("GET", REPORT + query)
        assert said in assert_json_error(reply, 400), (query, reply)
    member = await s.request("GET", REPORT, sub="someone", role="member")
    assert_json_error(member, 403)
    anonymous = await s.request("GET", REPORT, sub=None)
    assert_json_error(anonymous, 401)


async def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "voucher_ledger.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
