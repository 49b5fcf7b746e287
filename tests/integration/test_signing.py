"""The tamper-evident stream (issue 24, item 3) on a real nats-server and PostgreSQL: a process
with plain publish rights on the event subjects but without the signing key cannot mint credit.

The forgery of the issue: the customer's ``wallet.credit_granted`` copied, its amount set to
9,000,000 baisa, published to ``<prefix>.events.wallet.<account>`` (JetStream acks it). It is
never applied: the projector stops on it (the balance does not move), the processors put the
wallet on hold (a checkout's command is refused), ``verify`` names its sequence, a rebuild
refuses it. A verbatim replay of an old signed event, and an unsigned event after the cut-over,
fare the same; unsigned events from before the cut-over are accepted."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client

from tests.conftest import HostFactory, wait_until
from voucher_ledger.commands.bus import CommandBus, LedgerOnHold
from voucher_ledger.commands.wire import Accepted
from voucher_ledger.jetstream.api import js_api
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger.commands import Grant as GrantSpec
from voucher_ledger.ledger.commands import GrantCredit, OpenOrder
from voucher_ledger.ledger.events import (
    Actor,
    CreditGranted,
    EventEnvelope,
    OrderLine,
    encode_envelope,
)
from voucher_ledger.ledger.voucher import IssueVoucher, RedeemVoucher
from voucher_ledger.projections.migrate import migrate
from voucher_ledger.projections.projector import ProjectionStatus, Projector
from voucher_ledger.projections.rebuild import rebuild
from voucher_ledger.projections.registry import ALL_PROJECTIONS
from voucher_ledger.projections.verify import verify
from voucher_ledger.published.subscriber import AuditSubscriber, TamperedEvent
from voucher_ledger.signing.proof import EventSigner, IntegrityError

CUSTOMER = Actor(sub="cust-1", role="member")
ADMIN = Actor(sub="admin", role="superadmin")
SIGNER = EventSigner(Ed25519PrivateKey.generate())


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(database, min_size=1, max_size=len(ALL_PROJECTIONS) + 2)
    async with p.acquire() as conn:
        await migrate(conn)
    yield p
    await p.close()


@contextlib.asynccontextmanager
async def projecting(
    nc: Client, pool: asyncpg.Pool, spec: StreamsSpec
) -> AsyncIterator[ProjectionStatus]:
    """The live projector of every read model, checking events with the public key."""
    status = ProjectionStatus(pool, [p.name for p in ALL_PROJECTIONS])
    projector = Projector(
        nc, pool, spec, ALL_PROJECTIONS, status, public_key=SIGNER.public_key, batch=64
    )
    task = asyncio.create_task(projector.run())
    try:
        yield status
    finally:
        projector.stop()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def credit(bus: CommandBus, customer: str, order: str, baisa: int) -> None:
    line = OrderLine(kind="plan", id="starter", name="Starter", amount_baisa=baisa)
    await bus.send(
        OpenOrder(
            customer_id=customer,
            order_id=order,
            tenant_id="t-1",
            plan_id="starter",
            lines=[line],
            total_baisa=baisa,
        ),
        actor=CUSTOMER,
    )
    grant = GrantSpec(redemption_id=f"r-{order}", code="FIVE", amount_baisa=baisa)
    await bus.send(GrantCredit(customer_id=customer, order_id=order, grant=grant), actor=CUSTOMER)


async def last_on(nc: Client, spec: StreamsSpec, subject: str) -> tuple[int, bytes]:
    answer = await js_api(nc, f"STREAM.MSG.GET.{spec.event_stream}", {"last_by_subj": subject})
    message: dict[str, Any] = answer["message"]
    return int(message["seq"]), base64.b64decode(message["data"])


async def publish(nc: Client, subject: str, body: bytes) -> int:
    """What the forger does: a plain JetStream publish (acked)."""
    ack = json.loads((await nc.request(subject, body, timeout=5)).data)
    assert "seq" in ack, ack
    return int(ack["seq"])


async def balance(pool: asyncpg.Pool, customer: str) -> int:
    value = await pool.fetchval(
        "SELECT balance_baisa FROM wallets WHERE customer_id = $1", customer
    )
    return int(value or 0)


async def head(nc: Client, spec: StreamsSpec) -> int:
    info = await js_api(nc, f"STREAM.INFO.{spec.event_stream}")
    return int(info["state"]["last_seq"])


async def assert_refused_everywhere(
    nc: Client,
    pool: asyncpg.Pool,
    spec: StreamsSpec,
    bus: CommandBus,
    status: ProjectionStatus,
    customer: str,
    bad_seq: int,
    check: str,
    before: int,
) -> None:
    await wait_until(lambda: "wallets" in status.stopped, what="the projector to stop")
    assert {s.seq for s in status.stopped.values()} == {bad_seq}
    assert {s.code for s in status.stopped.values()} == {check}
    assert status.applied["wallets"] == bad_seq - 1
    assert await balance(pool, customer) == before  # the balance did not move
    # A checkout cannot spend it: the wallet is on hold, its commands are refused (503).
    line = OrderLine(kind="plan", id="enterprise", name="Enterprise", amount_baisa=109_000)
    with pytest.raises(LedgerOnHold, match=f"sequence {bad_seq}"):
        await bus.send(
            OpenOrder(
                customer_id=customer,
                order_id="o-spend",
                tenant_id="t-1",
                plan_id="enterprise",
                lines=[line],
                total_baisa=109_000,
            ),
            actor=CUSTOMER,
        )
    report = await verify(pool, nc, spec, public_key=SIGNER.public_key)
    assert not report.clean
    assert report.integrity is not None
    assert report.integrity.seq == bad_seq
    assert f"stream sequence {bad_seq}" in report.differences[0]
    with pytest.raises(IntegrityError) as refused:
        await rebuild(pool, nc, spec, list(ALL_PROJECTIONS), public_key=SIGNER.public_key)
    assert refused.value.seq == bad_seq


@pytest.mark.parametrize("attack", ["forged_amount", "verbatim_replay", "proof_stripped"])
async def test_an_event_published_without_the_signing_key_is_never_applied(
    attack: str,
    nc: Client,
    pool: asyncpg.Pool,
    applied: StreamsSpec,
    bus: CommandBus,
    make_host: HostFactory,
) -> None:
    await make_host(signer=SIGNER)
    customer = "cust-forgery"
    subject = applied.layout.wallet_subject(customer)
    async with projecting(nc, pool, applied) as status:
        await credit(bus, customer, "o-1", 5000)
        await credit(bus, customer, "o-2", 5000)
        seq = await head(nc, applied)
        await wait_until(lambda: status.low_water >= seq, what="the projector to catch up")
        before = await balance(pool, customer)
        assert before == 10_000
        _, original = await last_on(nc, applied, subject)
        doc = json.loads(original)
        assert doc["event"]["type"] == "wallet.credit_granted"
        assert "proof" in doc
        if attack == "forged_amount":
            doc["event"]["amount_baisa"] = 9_000_000
            body, check = json.dumps(doc, separators=(",", ":")).encode(), "bad_signature"
        elif attack == "verbatim_replay":
            body, check = original, "broken_chain"
        else:
            doc["event"]["amount_baisa"] = 9_000_000
            del doc["proof"]
            body, check = json.dumps(doc, separators=(",", ":")).encode(), "unsigned"
        bad_seq = await publish(nc, subject, body)
        await assert_refused_everywhere(
            nc, pool, applied, bus, status, customer, bad_seq, check, before
        )


async def test_unsigned_events_before_the_cut_over_are_accepted_and_after_it_refused(
    nc: Client,
    pool: asyncpg.Pool,
    applied: StreamsSpec,
    bus: CommandBus,
    make_host: HostFactory,
) -> None:
    old = "cust-before"
    subject = applied.layout.wallet_subject(old)
    unsigned = EventEnvelope(
        event_id="00000000-0000-4000-8000-000000000001",
        aggregate="wallet",
        aggregate_id=old,
        occurred_at=datetime.now(UTC),
        actor=CUSTOMER,
        command_id="c" * 32,
        event=CreditGranted(
            customer_id=old, redemption_id="r-old", code="OLD", order_id="", amount_baisa=3000
        ),
    )
    before_cutover = await publish(nc, subject, encode_envelope(unsigned))  # an old service's
    await make_host(signer=SIGNER)  # the first start with signing records the cut-over
    async with projecting(nc, pool, applied) as status:
        await credit(bus, old, "o-1", 5000)  # signed, after the unsigned history
        seq = await head(nc, applied)
        await wait_until(lambda: status.low_water >= seq, what="the projector to catch up")
        assert await balance(pool, old) == 8000
        report = await verify(pool, nc, applied, public_key=SIGNER.public_key)
        assert report.clean, report.differences
        summary = await rebuild(
            pool, nc, applied, list(ALL_PROJECTIONS), public_key=SIGNER.public_key
        )
        assert summary.reached == seq  # rebuild of a signed stream: equals live (verify below)
        assert (await verify(pool, nc, applied, public_key=SIGNER.public_key)).clean
        # The same unsigned body after the cut-over: refused.
        again = unsigned.model_copy(update={"event_id": "00000000-0000-4000-8000-000000000002"})
        bad_seq = await publish(nc, subject, encode_envelope(again))
        assert bad_seq > before_cutover
        await assert_refused_everywhere(
            nc, pool, applied, bus, status, old, bad_seq, "unsigned", 8000
        )


async def subscribe_all(
    nc: Client, spec: StreamsSpec, **kwargs: Any
) -> tuple[AuditSubscriber, list[int], set[int]]:
    """Read the whole stream (to its head at start) as a subscriber with the public key only."""
    sub = AuditSubscriber(
        nc,
        spec.layout.prefix,
        stream=spec.event_stream,
        follow=False,
        public_key=SIGNER.public_key,
        batch=500,
        **kwargs,
    )
    seen = []
    sizes = set()  # how many events the appends of the records read had
    async with sub:
        async for record in sub:
            seen.append(record.seq)
            if record.envelope.proof is not None:
                sizes.add(record.envelope.proof.n)
    return sub, seen, sizes


@pytest.mark.storm
async def test_a_subscriber_checks_every_event_of_a_storm_with_the_public_key_alone(
    nc: Client,
    applied: StreamsSpec,
    bus: CommandBus,
    make_host: HostFactory,
) -> None:
    """A storm on a hot code and on many cold ones, with credit grants, from two processor
    instances: appends of many events (one signature each) and of one. A subscriber holding
    only the public key checks every event, from the first sequence and from the middle (where
    it looks up each aggregate's previous event); then one forged event stops it there."""
    await make_host(signer=SIGNER)
    await make_host(signer=SIGNER)
    hot, cap = "SIGNED-HOT", 150
    await bus.send(IssueVoucher(code=hot, credit_baisa=1000, max_redemptions=cap), actor=ADMIN)
    cold = [f"SIGNED-{i:03d}" for i in range(40)]
    await asyncio.gather(
        *(bus.send(IssueVoucher(code=c, credit_baisa=500), actor=ADMIN) for c in cold)
    )
    replies = await asyncio.gather(
        *(
            bus.send(RedeemVoucher(code=hot, customer_id=f"h{i}"), actor=CUSTOMER, timeout=60)
            for i in range(300)
        ),
        *(
            bus.send(RedeemVoucher(code=c, customer_id=f"c{i}"), actor=CUSTOMER, timeout=60)
            for i, c in enumerate(cold)
        ),
        *(credit(bus, f"w{i}", f"o{i}", 1000) for i in range(20)),
    )
    accepted = [r for r in replies[:300] if isinstance(r, Accepted)]
    assert len(accepted) == cap
    last = await head(nc, applied)

    sub, seen, sizes = await subscribe_all(nc, applied)
    assert seen == list(range(1, last + 1))
    assert sub.checked == last  # every event's proof, not just read
    # Appends of many events (one signature covers them all) as well as appends of one.
    assert max(sizes) > 1
    assert 1 in sizes
    middle = last // 2
    sub, seen, _ = await subscribe_all(nc, applied, from_seq=middle)
    assert seen == list(range(middle, last + 1))
    assert sub.checked == last - middle + 1

    # A forged grant on a wallet: the subscriber stops at it, naming it; nothing after it.
    subject = applied.layout.wallet_subject("w3")
    _, original = await last_on(nc, applied, subject)
    doc = json.loads(original)
    doc["event"]["amount_baisa"] = 9_000_000
    bad_seq = await publish(nc, subject, json.dumps(doc, separators=(",", ":")).encode())
    for start in (None, middle):
        with pytest.raises(TamperedEvent) as stopped:
            await subscribe_all(nc, applied, from_seq=start)
        assert stopped.value.seq == bad_seq
        assert stopped.value.code == "bad_signature"
        assert f"stream sequence {bad_seq}" in str(stopped.value)
    # A subscriber of that wallet alone (a filter: it looks nothing up) stops there too.
    with pytest.raises(TamperedEvent) as filtered:
        await subscribe_all(nc, applied, filter_subject=subject)
    assert filtered.value.seq == bad_seq
