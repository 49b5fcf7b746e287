"""``voucher-ledger import-seed``: carry a running seed billing database (spec section 3:
``promo_codes``, ``promo_redemptions``, ``customers``, ``credit_ledger``, ``orders``,
``subscriptions``, ``invoices``) over as events with the original times.

1. **Read** every table (one REPEATABLE READ snapshot).
2. **Plan** each aggregate's events: a voucher per promo code (issued, its redemptions, revoked
   if tombstoned), a wallet per seed customer (the JWT ``sub``, ``customers.user_id``): credit
   grants and spends from ``credit_ledger``, orders, invoices. Whatever cannot be carried is
   listed with its reason and nothing is written (a code our rules refuse, two codes that
   normalise alike, a history whose balance goes negative, an aggregate that already exists in
   the ledger and was not imported, ...). The seed's quirks that can be carried are, and said.
3. **Write** each aggregate's events, in chunks of atomic batches, each with the subject's
   expected last sequence. Event ids and command ids derive from the source rows, so a rerun
   finds what an earlier run wrote and writes only what is missing: nothing twice.
4. **Reconcile** the source against the ledger (the stream folded by the domain code, not the
   read models): counts, every voucher's counters, every customer's balance, every order's
   status and total, every invoice. Any difference: exit 1.

Mapping decisions (README "Importing from the seed"):

* codes are normalised (``strip().upper()``, the seed stored some in lower case, B8);
* a voucher's counter is its ``promo_redemptions`` rows (the redemptions that happened); the
  seed's ``times_redeemed`` where it disagrees is reported, not carried;
* whole OMR become baisa (x1000); an invoice whose ``amount_baisa`` is its ``amount_omr`` (the
  seed's fix-up without x1000, B22) is carried at ``amount_omr`` x 1000;
* a spend (a negative ledger row) is a reservation captured for its order; one without an order
  (the seed's quirk) for a placeholder order ``seed-ledger-<row id>``; zero rows are skipped;
* a completed order is completed (paid by credit when a spend names it, else by card); a
  pending order with a Stripe session awaits payment with it; one without a session (never sent
  to Stripe, the seed's B20 orphans) is abandoned, so recovery never charges it;
* the seed's ``subscriptions`` are not carried as such: ours are built from completed orders
  (one per Organization); the report compares the Organizations with an active subscription.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.jetstream.layout import Layout
from voucher_ledger.ledger import voucher as voucher_agg
from voucher_ledger.ledger import wallet as wallet_agg
from voucher_ledger.ledger.codes import CODE_PATTERN, CODE_RULE, validate_customer_id
from voucher_ledger.ledger.errors import InvalidInput
from voucher_ledger.ledger.events import (
    Actor,
    CreditCaptured,
    CreditGranted,
    CreditReserved,
    EventEnvelope,
    InvoiceRecorded,
    OrderAbandoned,
    OrderCompleted,
    OrderLine,
    OrderOpened,
    OrderPaymentRequested,
    OrderSessionCreated,
    RecordedEvent,
    VoucherIssued,
    VoucherRedeemed,
    VoucherRevoked,
    WalletEventT,
)
from voucher_ledger.ledger.money import BAISA
from voucher_ledger.signing.proof import GENESIS, EventSigner, proof_of

TABLES = (
    "promo_codes",
    "promo_redemptions",
    "customers",
    "credit_ledger",
    "orders",
    "subscriptions",
    "invoices",
)
IMPORT_ACTOR = Actor(sub="import-seed", role="system")
COMMAND_PREFIX = "seed-import:"
CHUNK = 500  # events per atomic batch
_NS = uuid.UUID("8a4e0c1d-37b2-4f6e-9d21-0b5c7e3f1a66")


class SourceError(Exception):
    """The source cannot be read (missing table, connection refused)."""


@dataclass
class Source:
    rows: dict[str, list[dict[str, Any]]]

    def __getitem__(self, table: str) -> list[dict[str, Any]]:
        return self.rows[table]


async def read_source(url: str) -> Source:
    try:
        conn = await asyncpg.connect(url)
    except Exception as exc:  # any connection failure is the same story for the operator
        raise SourceError(f"cannot connect to the seed database: {exc}") from exc
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            present = {
                r["table_name"]
                for r in await conn.fetch(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()"
                )
            }
            missing = [t for t in TABLES if t not in present]
            if missing:
                raise SourceError(f"not a seed billing database: no table {', '.join(missing)}")
            rows = {}
            for table in TABLES:  # constant names (TABLES)
                rows[table] = [dict(r) for r in await conn.fetch(f"SELECT * FROM {table}")]  # noqa: S608
    finally:
        await conn.close()
    return Source(rows)


@dataclass
class Plan:
    """Each aggregate's events, in order; what cannot be carried; the quirks carried."""

    vouchers: dict[str, list[EventEnvelope]] = field(default_factory=dict)
    wallets: dict[str, list[EventEnvelope]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # source code -> normalised code; seed customer uuid -> sub
    codes: dict[str, str] = field(default_factory=dict)
    subs: dict[str, str] = field(default_factory=dict)
    # seed customer uuid -> its Stripe customer (what the billing portal opens)
    stripe_customers: dict[str, str] = field(default_factory=dict)
    # order id -> the status it is carried as
    order_status: dict[str, str] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return sum(len(v) for v in (*self.vouchers.values(), *self.wallets.values()))


def _env(
    aggregate: str, key: str, index: int, event: Any, at: datetime, command: str
) -> EventEnvelope:
    return EventEnvelope(
        event_id=str(uuid.uuid5(_NS, f"{aggregate}\x00{key}\x00{index}")),
        aggregate=aggregate,
        aggregate_id=key,
        occurred_at=at,
        actor=IMPORT_ACTOR,
        command_id=COMMAND_PREFIX + command,
        event=event,
    )


def _redemption_id(code: str, sub: str) -> str:
    return str(uuid.uuid5(_NS, f"redemption\x00{code}\x00{sub}"))


def _json_list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = json.loads(value)
    return [str(v) for v in value] if isinstance(value, list) else []


def plan_import(src: Source, *, max_credit_baisa: int) -> Plan:
    plan = Plan()
    for c in src["customers"]:
        try:
            plan.subs[str(c["id"])] = validate_customer_id(c["user_id"])
            if c.get("stripe_customer_id"):
                plan.stripe_customers[str(c["id"])] = str(c["stripe_customer_id"])
        except InvalidInput as exc:
            plan.problems.append(f"customer {c['id']}: user_id cannot be a wallet: {exc.message}")
    _plan_vouchers(src, plan, max_credit_baisa)
    _plan_wallets(src, plan)
    return plan


def _plan_vouchers(src: Source, plan: Plan, max_credit_baisa: int) -> None:
    by_code: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in src["promo_redemptions"]:
        by_code[r["code"]].append(r)
    seen: dict[str, str] = {}
    for p in sorted(src["promo_codes"], key=lambda p: (p["created_at"], p["code"])):
        raw = p["code"]
        code = raw.strip().upper() if raw.isascii() else raw
        why = None
        if not CODE_PATTERN.fullmatch(code):
            why = f"not a valid code here ({CODE_RULE})"
        elif code in seen:
            why = f"normalises to {code}, as the seed's {seen[code]!r} does"
        elif p["credit_omr"] <= 0 or p["credit_omr"] * BAISA > max_credit_baisa:
            why = f"credit {p['credit_omr']} OMR is outside 1..{max_credit_baisa // BAISA}"
        if why is not None:
            plan.problems.append(f"promo code {raw!r}: {why}")
            continue
        seen[code] = raw
        plan.codes[raw] = code
        if code != raw:
            plan.notes.append(f"promo code {raw!r} carried as {code}")
        cap = p["max_redemptions"] if p["max_redemptions"] > 0 else 0
        credit = p["credit_omr"] * BAISA
        events = [
            _env(
                "voucher",
                code,
                0,
                VoucherIssued(
                    code=code,
                    credit_baisa=credit,
                    description=p["description"] or "",
                    active=bool(p["active"]),
                    max_redemptions=cap,
                    change="created",
                ),
                p["created_at"],
                f"promo:{code}",
            )
        ]
        redemptions = sorted(
            by_code.get(raw, []), key=lambda r: (r["created_at"], str(r["customer_id"]))
        )
        for r in redemptions:
            sub = plan.subs.get(str(r["customer_id"]))
            if sub is None:
                plan.problems.append(f"redemption of {raw!r}: unknown customer {r['customer_id']}")
                continue
            events.append(
                _env(
                    "voucher",
                    code,
                    len(events),
                    VoucherRedeemed(
                        code=code,
                        customer_id=sub,
                        redemption_id=_redemption_id(code, sub),
                        credit_baisa=credit,
                        user_id=sub,  # the seed's wallet was its user's (README "import-seed")
                    ),
                    r["created_at"],
                    f"redemption:{code}:{sub}",
                )
            )
        if p["times_redeemed"] != len(redemptions):
            plan.notes.append(
                f"promo code {code}: the seed's times_redeemed is {p['times_redeemed']}, its "
                f"promo_redemptions hold {len(redemptions)}: carried {len(redemptions)}"
            )
        if p.get("deleted_at") is not None:
            events.append(
                _env(
                    "voucher",
                    code,
                    len(events),
                    VoucherRevoked(code=code),
                    p["deleted_at"],
                    f"revoke:{code}",
                )
            )
        plan.vouchers[code] = events
    for raw in by_code:
        if raw not in {p["code"] for p in src["promo_codes"]}:
            plan.problems.append(f"redemptions of {raw!r}: no such promo code")


def _plan_wallets(src: Source, plan: Plan) -> None:
    ledger: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in src["credit_ledger"]:
        ledger[str(row["customer_id"])].append(row)
    orders: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in src["orders"]:
        orders[str(row["customer_id"])].append(row)
    invoices: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in src["invoices"]:
        invoices[str(row["customer_id"])].append(row)
    redeemed = {(str(r["customer_id"]), r["code"]) for r in src["promo_redemptions"]}
    for customer_id, sub in sorted(plan.subs.items(), key=lambda kv: kv[1]):
        steps = _wallet_steps(
            plan,
            sub,
            customer_id,
            ledger[customer_id],
            orders[customer_id],
            invoices[customer_id],
            redeemed,
        )
        if not steps:
            continue
        steps.sort(key=lambda s: (s[0], s[1]))
        events: list[EventEnvelope] = []
        balance = 0
        for at, _, command, event in steps:
            if isinstance(event, CreditGranted):
                balance += event.amount_baisa
            elif isinstance(event, CreditCaptured):
                balance -= event.amount_baisa
                if balance < 0:
                    plan.problems.append(
                        f"customer {sub!r}: the balance goes negative ({balance} baisa) at "
                        f"{at.isoformat()} ({command}): the seed's double spend (B3) cannot be "
                        "carried; correct the source ledger first"
                    )
                    break
            events.append(_env("wallet", sub, len(events), event, at, command))
        plan.wallets[sub] = events


def _wallet_steps(
    plan: Plan,
    sub: str,
    customer_id: str,
    ledger: list[dict[str, Any]],
    orders: list[dict[str, Any]],
    invoices: list[dict[str, Any]],
    redeemed: set[tuple[str, str]],
) -> list[tuple[datetime, int, str, WalletEventT]]:
    """(time, tie-break, command id, event) of one customer's history."""
    steps: list[tuple[datetime, int, str, WalletEventT]] = []
    order_ids = {str(o["id"]) for o in orders}
    spent: dict[str, tuple[int, datetime]] = {}
    tick = iter(range(10**9))
    for row in sorted(ledger, key=lambda r: (r["created_at"], str(r["id"]))):
        amount = row["amount_omr"] * BAISA
        if amount == 0:
            plan.notes.append(f"credit_ledger row {row['id']}: zero amount, skipped")
            continue
        order_id = row["order_id"] or None
        if amount > 0:
            reason = str(row["reason"])
            raw = reason.removeprefix("promo:") if reason.startswith("promo:") else None
            code = plan.codes.get(raw, raw) if raw is not None else reason
            redemption = (
                _redemption_id(code, sub)
                if raw is not None and (customer_id, raw) in redeemed
                else str(uuid.uuid5(_NS, f"ledger\x00{row['id']}"))
            )
            steps.append(
                (
                    row["created_at"],
                    next(tick),
                    f"grant:{row['id']}",
                    CreditGranted(
                        customer_id=sub,
                        redemption_id=redemption,
                        code=code,
                        order_id=order_id or "",
                        amount_baisa=amount,
                    ),
                )
            )
        elif order_id in order_ids:
            before = spent.get(order_id, (0, row["created_at"]))
            spent[order_id] = (before[0] - amount, max(before[1], row["created_at"]))
        else:
            placeholder = f"seed-ledger-{row['id']}"
            plan.notes.append(
                f"credit_ledger row {row['id']} ({-amount} baisa spent by {sub!r}) names no "
                f"order of the customer: carried for the placeholder order {placeholder}"
            )
            for event in (
                CreditReserved(customer_id=sub, order_id=placeholder, amount_baisa=-amount),
                CreditCaptured(customer_id=sub, order_id=placeholder, amount_baisa=-amount),
            ):
                steps.append((row["created_at"], next(tick), f"spend:{row['id']}", event))
    for o in sorted(orders, key=lambda o: (o["created_at"], str(o["id"]))):
        steps.extend(_order_steps(plan, sub, o, spent.get(str(o["id"])), tick))
    for inv in sorted(invoices, key=lambda i: (i["created_at"], str(i["id"]))):
        step = _invoice_step(plan, sub, inv, plan.stripe_customers.get(customer_id))
        if step is not None:
            steps.append((inv["created_at"], next(tick), f"invoice:{inv['id']}", step))
    return steps


def _order_steps(
    plan: Plan,
    sub: str,
    o: dict[str, Any],
    spend: tuple[int, datetime] | None,
    tick: Iterable[int],
) -> list[tuple[datetime, int, str, WalletEventT]]:
    ticks = iter(tick)
    order_id = str(o["id"])
    total = o["amount_baisa"] or o["amount_omr"] * BAISA
    promo = o.get("promo_code")
    if promo:
        promo = plan.codes.get(promo, promo.strip().upper())
    at = o["created_at"]
    command = f"order:{order_id}"
    out: list[tuple[datetime, int, str, WalletEventT]] = [
        (
            at,
            next(ticks),
            command,
            OrderOpened(
                customer_id=sub,
                order_id=order_id,
                tenant_id=o["tenant_id"],
                plan_id=o["plan_id"],
                apps=_json_list(o["apps"]),
                addons=_json_list(o["addons"]),
                promo_code=promo or None,
                lines=[
                    OrderLine(kind="plan", id=o["plan_id"], name=o["plan_id"], amount_baisa=total)
                ],
                total_baisa=total,
                user_id=sub,
            ),
        )
    ]
    session = o.get("stripe_session_id") or None
    if o["status"] == "completed":
        applied, when = spend if spend is not None else (0, at)
        if applied:
            for event in (
                CreditReserved(customer_id=sub, order_id=order_id, amount_baisa=applied),
                CreditCaptured(customer_id=sub, order_id=order_id, amount_baisa=applied),
            ):
                out.append((when, next(ticks), command, event))
        by_credit = session is None
        out.append(
            (
                when,
                next(ticks),
                command,
                OrderCompleted(
                    customer_id=sub,
                    order_id=order_id,
                    paid_by_credit=by_credit,
                    credit_applied_baisa=applied,
                    amount_paid_baisa=0 if by_credit else max(total - applied, 0),
                    stripe_session_id=session,
                ),
            )
        )
        plan.order_status[order_id] = "completed"
        return out
    if spend is not None:
        plan.problems.append(f"order {order_id} is {o['status']!r} but credit_ledger spent on it")
    out.append(
        (
            at,
            next(ticks),
            command,
            OrderPaymentRequested(
                customer_id=sub, order_id=order_id, credit_applied_baisa=0, amount_due_baisa=total
            ),
        )
    )
    if o["status"] == "pending" and session is not None:
        out.append(
            (
                at,
                next(ticks),
                command,
                OrderSessionCreated(
                    customer_id=sub, order_id=order_id, session_id=session, session_url=""
                ),
            )
        )
        plan.order_status[order_id] = "awaiting_payment"
    elif o["status"] == "pending":
        out.append(
            (
                at,
                next(ticks),
                command,
                OrderAbandoned(
                    customer_id=sub, order_id=order_id, reason="seed_never_sent_to_stripe"
                ),
            )
        )
        plan.order_status[order_id] = "abandoned"
        plan.notes.append(
            f"order {order_id}: pending without a Stripe session in the seed: carried abandoned"
        )
    else:
        plan.problems.append(f"order {order_id}: unknown status {o['status']!r}")
    return out


def _invoice_step(
    plan: Plan, sub: str, inv: dict[str, Any], stripe_customer: str | None
) -> InvoiceRecorded | None:
    outcome = {"paid": "paid", "open": "payment_failed"}.get(inv["status"])
    if outcome is None:
        plan.problems.append(
            f"invoice {inv['id']}: status {inv['status']!r} has no counterpart here (paid, open)"
        )
        return None
    amount = inv["amount_baisa"]
    if inv["amount_omr"] > 0 and amount < inv["amount_omr"] * BAISA:
        plan.notes.append(
            f"invoice {inv['id']}: amount_baisa {amount} < amount_omr {inv['amount_omr']} x 1000 "
            "(the seed's fix-up without x1000): carried at amount_omr x 1000"
        )
        amount = inv["amount_omr"] * BAISA
    return InvoiceRecorded(
        customer_id=sub,
        tenant_id=inv["tenant_id"],
        stripe_invoice_id=inv["stripe_invoice_id"] or f"seed-invoice-{inv['id']}",
        stripe_customer_id=stripe_customer,
        outcome=outcome,
        amount_baisa=amount,
        currency=(inv.get("currency") or "omr").lower(),
        period_start=inv.get("period_start"),
        period_end=inv.get("period_end"),
        pdf_url=inv.get("pdf_url") or None,
    )


# ------------------------------------------------------------------------------------- write


@dataclass
class Written:
    events: int = 0
    aggregates: int = 0
    already: int = 0


async def existing(
    store: JetStreamEventStore, layout: Layout, plan: Plan
) -> tuple[dict[tuple[str, str], list[RecordedEvent]], list[str]]:
    """What each planned aggregate holds already, and the aggregates that exist in the ledger
    without having been imported (they cannot be carried: listed)."""
    found: dict[tuple[str, str], list[RecordedEvent]] = {}
    conflicts = []
    for aggregate, key, events in _aggregates(plan):
        subject = _subject(layout, aggregate, key)
        have = await store.load(subject, consistent=True)
        found[(aggregate, key)] = have
        planned = [e.event_id for e in events]
        ids = [r.envelope.event_id for r in have]
        # imported (and perhaps changed since: the reconciliation says so), partly imported
        # (an interrupted run: the rest is written), or someone else's
        if ids[: len(planned)] != planned and ids != planned[: len(ids)]:
            conflicts.append(
                f"{aggregate} {key!r} already exists in the ledger ({len(have)} events not "
                "written by this import)"
            )
    return found, conflicts


async def write(
    store: JetStreamEventStore,
    layout: Layout,
    plan: Plan,
    found: dict[tuple[str, str], list[RecordedEvent]],
    signer: EventSigner | None = None,
) -> Written:
    """The planned events each aggregate does not hold yet. With ``signer`` (the processors'
    key: LEDGER_SIGNING), each append is sealed as the processors seal theirs: chained to the
    aggregate's head, one signature on its last event."""
    written = Written()
    for aggregate, key, events in _aggregates(plan):
        have = found[(aggregate, key)]
        rest = events[len(have) :]
        if not rest:
            written.already += 1
            continue
        last = have[-1].seq if have else 0
        head = GENESIS
        if have:
            proof = proof_of(have[-1].envelope)
            head = proof.link if proof is not None else GENESIS
        subject = _subject(layout, aggregate, key)
        for start in range(0, len(rest), CHUNK):
            chunk = rest[start : start + CHUNK]
            if signer is not None:
                ((chunk, head),) = signer.sign_append([(head, chunk)])
            recorded = await store.append(subject, last, chunk)
            last = recorded[-1].seq
        written.events += len(rest)
        written.aggregates += 1
    return written


def _aggregates(plan: Plan) -> list[tuple[str, str, list[EventEnvelope]]]:
    return [
        *(("voucher", k, v) for k, v in plan.vouchers.items()),
        *(("wallet", k, v) for k, v in plan.wallets.items()),
    ]


def _subject(layout: Layout, aggregate: str, key: str) -> str:
    return layout.voucher_subject(key) if aggregate == "voucher" else layout.wallet_subject(key)


# --------------------------------------------------------------------------------- reconcile


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)

    def count(self, what: str, source: int, ledger: int) -> None:
        self.lines.append(f"{what}: source {source}, ledger {ledger}")
        if source != ledger:
            self.differences.append(f"{what}: source {source}, ledger {ledger}")

    def same(self, what: str, source: Any, ledger: Any) -> None:
        if source != ledger:
            self.differences.append(f"{what}: source {source!r}, ledger {ledger!r}")


async def reconcile(store: JetStreamEventStore, layout: Layout, src: Source, plan: Plan) -> Report:
    """The source against the ledger: the imported aggregates read back from the stream and
    folded by the domain code."""
    report = Report()
    vouchers = {}
    for code in plan.vouchers:
        history = await store.load(layout.voucher_subject(code), consistent=True)
        vouchers[code] = voucher_agg.fold(code, history)
    wallets = {}
    for sub in plan.wallets:
        history = await store.load(layout.wallet_subject(sub), consistent=True)
        wallets[sub] = wallet_agg.fold(sub, history)
    promos = [p for p in src["promo_codes"] if p["code"] in plan.codes]
    report.count("vouchers", len(src["promo_codes"]), sum(v.issued for v in vouchers.values()))
    by_code: dict[str, int] = defaultdict(int)
    for r in src["promo_redemptions"]:
        by_code[r["code"]] += 1
    report.count(
        "redemptions",
        len(src["promo_redemptions"]),
        sum(v.times_redeemed for v in vouchers.values()),
    )
    for p in promos:
        v = vouchers[plan.codes[p["code"]]]
        name = f"voucher {plan.codes[p['code']]}"
        if not v.issued:
            report.differences.append(f"{name}: missing from the ledger")
            continue
        report.same(f"{name} credit_baisa", p["credit_omr"] * BAISA, v.credit_baisa)
        report.same(f"{name} active", bool(p["active"]), v.active)
        report.same(f"{name} revoked", p.get("deleted_at") is not None, v.revoked)
        report.same(f"{name} max_redemptions", max(p["max_redemptions"], 0), v.max_redemptions)
        report.same(f"{name} redemptions", by_code.get(p["code"], 0), v.times_redeemed)
    balances: dict[str, int] = defaultdict(int)
    entries: dict[str, int] = defaultdict(int)
    for row in src["credit_ledger"]:
        sub = plan.subs.get(str(row["customer_id"]), "?")
        balances[sub] += row["amount_omr"] * BAISA
        entries[sub] += 1
    report.count("customers with credit", len(balances), sum(1 for s in balances if s in wallets))
    report.count(
        "credit balance (baisa, all customers)",
        sum(balances.values()),
        sum(wallets[s].balance_baisa for s in balances if s in wallets),
    )
    for sub, amount in sorted(balances.items()):
        held = wallets[sub].balance_baisa if sub in wallets else None
        report.same(f"balance of {sub!r} (baisa)", amount, held)
    orders = {o: w for w in wallets.values() for o in w.orders}
    report.count("orders", len(src["orders"]), len(plan.order_status))
    for o in src["orders"]:
        order_id = str(o["id"])
        sub = plan.subs.get(str(o["customer_id"]), "?")
        state = wallets[sub].orders.get(order_id) if sub in wallets else None
        if state is None or order_id not in orders:
            report.differences.append(f"order {order_id}: missing from the ledger")
            continue
        report.same(f"order {order_id} status", plan.order_status.get(order_id), state.status)
        report.same(
            f"order {order_id} total (baisa)",
            o["amount_baisa"] or o["amount_omr"] * BAISA,
            state.total_baisa,
        )
        report.same(f"order {order_id} tenant", o["tenant_id"], state.tenant_id)
    carried = {
        (inv["stripe_invoice_id"] or f"seed-invoice-{inv['id']}")
        for inv in src["invoices"]
        if inv["status"] in ("paid", "open")
    }
    invoiced = {i for w in wallets.values() for i in w.invoices}
    report.count("invoices", len(src["invoices"]), len(invoiced & carried))
    active_tenants = {s["tenant_id"] for s in src["subscriptions"] if s["status"] == "active"}
    subscribed = {
        state.tenant_id
        for w in wallets.values()
        for state in w.orders.values()
        if state.status == "completed"
    }
    report.lines.append(
        f"Organizations with an active subscription: source {len(active_tenants)}, with a "
        f"completed order here {len(subscribed)} (subscriptions are built from completed "
        f"orders; {len(active_tenants - subscribed)} of the source's have none)"
    )
    return report
