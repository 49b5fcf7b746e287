"""``org export`` / ``org import`` (``billing/orgmove.py``) against a real nats-server: the export's
expectation when the account changes under it, an interrupted import finished by a rerun, and an
account with another history refused. (Two whole Sovereigns: ``tests/e2e/test_org_move.py``.)"""

from __future__ import annotations

import uuid
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client

from voucher_ledger.billing.orgmove import MoveError, export, import_bundle, read_bundle
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.jetstream import streams
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger import wallet
from voucher_ledger.ledger.commands import Grant, OpenOrder, SettleOrder
from voucher_ledger.ledger.events import (
    AccountMoved,
    Actor,
    EventEnvelope,
    OrderLine,
    RecordedEvent,
)
from voucher_ledger.ledger.voucher import Decided
from voucher_ledger.signing.proof import EventSigner

ACTOR = Actor(sub="u", role="member")


async def checkout(store: JetStreamEventStore, spec: StreamsSpec, org: str, n: int) -> None:
    """One order paid by a grant, decided against the account's stream and appended with its
    expectation (as a processor would)."""
    subject = spec.layout.wallet_subject(org)
    history = await store.load(subject, consistent=True)
    state = wallet.fold(org, history)
    events = []
    for command in (
        OpenOrder(
            customer_id=org,
            order_id=f"{org}-o{n}",
            tenant_id=org,
            plan_id="starter",
            lines=[OrderLine(kind="plan", id="starter", name="S", amount_baisa=9000)],
            total_baisa=9000,
        ),
        SettleOrder(
            customer_id=org,
            order_id=f"{org}-o{n}",
            grant=Grant(redemption_id=f"{org}-r{n}", code="PROMO", amount_baisa=10_000),
            payment_available=False,
        ),
    ):
        outcome = wallet.handle(state, command, f"{command.type}-{n}")
        assert isinstance(outcome, Decided), outcome
        for event in outcome.events:
            env = EventEnvelope(
                event_id=str(uuid.uuid4()),
                aggregate="wallet",
                aggregate_id=org,
                occurred_at=datetime.now(UTC),
                actor=ACTOR,
                command_id=f"{command.type}-{n}",
                event=event,
            )
            state = wallet.evolve(state, RecordedEvent(seq=state.last_seq + 1, envelope=env))
            events.append(env)
    await store.append(subject, history[-1].seq if history else 0, events)


async def exported(
    store: JetStreamEventStore, spec: StreamsSpec, org: str, signer: EventSigner
) -> bytes:
    written: list[bytes] = []
    await export(
        store,
        spec.layout,
        org,
        signer,
        written.append,
        source=None,
        stream=spec.event_stream,
        destination=None,
        seal=False,
    )
    return written[-1]


async def test_an_account_that_changes_during_the_export_is_read_again(
    nc: Client, store: JetStreamEventStore, applied: StreamsSpec
) -> None:
    """A checkout lands between the export's read and its move: the move's expectation fails,
    the export reads the account again, and the bundle and the move cover that checkout."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    signer = EventSigner(Ed25519PrivateKey.generate())
    await checkout(store, applied, org, 1)
    bundles: list[bytes] = []
    raced = False

    async def race() -> None:
        await checkout(store, applied, org, 2)

    def write(data: bytes) -> None:
        nonlocal raced
        bundles.append(data)
        if not raced:
            raced = True
            pending.append(race())

    pending: list[Coroutine[Any, Any, None]] = []

    class Racing(JetStreamEventStore):
        """Runs the racing checkout just before the export's append."""

        async def append(
            self, subject: str, expected_last_seq: int, envelopes: Sequence[EventEnvelope]
        ) -> list[RecordedEvent]:
            while pending:
                await pending.pop()
            return await super().append(subject, expected_last_seq, envelopes)

    racing = Racing(nc, applied.event_stream)
    out = await export(
        racing,
        applied.layout,
        org,
        signer,
        write,
        source=None,
        stream=applied.event_stream,
        destination="b.example",
        seal=False,
    )
    assert raced
    assert len(bundles) == 2  # read again after the conflict
    history = await store.load(applied.layout.wallet_subject(org), consistent=True)
    *before, move = history
    assert isinstance(move.envelope.event, AccountMoved)
    assert move.envelope.event.bundle_digest == out.digest
    bundle = read_bundle(bundles[-1], [signer.public_key])
    assert [e.event_id for e in bundle.wallet] == [r.envelope.event_id for r in before]
    assert {f"{org}-o1", f"{org}-o2"} <= {getattr(e.event, "order_id", None) for e in bundle.wallet}


async def test_an_interrupted_import_is_finished_by_a_rerun_and_a_third_writes_nothing(
    nc: Client, applied: StreamsSpec, store: JetStreamEventStore
) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    signer = EventSigner(Ed25519PrivateKey.generate())
    for n in range(3):
        await checkout(store, applied, org, n)
    data = await exported(store, applied, org, signer)
    bundle = read_bundle(data, [signer.public_key])
    total = len(bundle.wallet)
    # the importer: another stream (another Sovereign's ledger)
    other = streams.load_spec(f"imp{uuid.uuid4().hex[:10]}")
    await streams.apply(nc, other)
    try:
        there = JetStreamEventStore(nc, other.event_stream)
        importer = EventSigner(Ed25519PrivateKey.generate())
        # an import that stopped after its first chunk of 4 (as a crash there leaves it)
        partial = bundle.__class__(
            bundle.header, bundle.wallet[:4], bundle.redemptions, bundle.digest, bundle.key
        )
        first = await import_bundle(there, other.layout, partial, importer, chunk_size=4)
        assert (first.written, first.already) == (4, 0)
        rest = await import_bundle(there, other.layout, bundle, importer, chunk_size=4)
        assert (rest.written, rest.already) == (total - 4, 4)
        assert not rest.differences
        again = await import_bundle(there, other.layout, bundle, importer)
        assert (again.written, again.already) == (0, total)
        history = await there.load(other.layout.wallet_subject(org), consistent=True)
        assert [r.envelope.event_id for r in history] == [e.event_id for e in bundle.wallet]
        assert [r.envelope.occurred_at for r in history] == [e.occurred_at for e in bundle.wallet]
        assert wallet.fold(org, history).balance_baisa == 3 * (10_000 - 9000)

        # the same Organization with a history of its own on the importer: refused, untouched
        stranger = f"org-{uuid.uuid4().hex[:8]}"
        await checkout(store, applied, stranger, 1)
        theirs = read_bundle(await exported(store, applied, stranger, signer), [signer.public_key])
        await checkout(there, other, stranger, 7)
        head = await there.last_sequence()
        with pytest.raises(MoveError, match="already has a different billing history"):
            await import_bundle(there, other.layout, theirs, importer)
        assert await there.last_sequence() == head
    finally:
        for cfg in other.streams.values():
            await nc.request(f"$JS.API.STREAM.DELETE.{cfg['name']}", b"", timeout=5)


async def test_an_account_with_a_checkout_half_way_is_not_moved_within_the_wait(
    store: JetStreamEventStore, applied: StreamsSpec
) -> None:
    org = f"org-{uuid.uuid4().hex[:8]}"
    signer = EventSigner(Ed25519PrivateKey.generate())
    await checkout(store, applied, org, 1)
    subject = applied.layout.wallet_subject(org)
    history = await store.load(subject, consistent=True)
    opened = wallet.decide(
        wallet.fold(org, history),
        OpenOrder(
            customer_id=org,
            order_id="half-way",
            tenant_id=org,
            plan_id="starter",
            lines=[OrderLine(kind="plan", id="starter", name="S", amount_baisa=9000)],
            total_baisa=9000,
        ),
    )
    env = EventEnvelope(
        event_id=str(uuid.uuid4()),
        aggregate="wallet",
        aggregate_id=org,
        occurred_at=datetime.now(UTC),
        actor=ACTOR,
        command_id="open-half-way",
        event=opened[0],
    )
    await store.append(subject, history[-1].seq, [env])
    head = await store.last_sequence()
    written: list[bytes] = []
    with pytest.raises(
        MoveError, match=r"order half-way of .* is being checked out.*\(for 0.3 s\)"
    ):
        await export(
            store,
            applied.layout,
            org,
            signer,
            written.append,
            source=None,
            stream=applied.event_stream,
            destination=None,
            seal=False,
            wait=0.3,
        )
    assert written == []
    assert await store.last_sequence() == head
