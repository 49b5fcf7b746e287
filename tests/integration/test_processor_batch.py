"""One processor's fetched batch spanning several aggregates: one append for all of them, and
a conflict on one aggregate that refuses the batch (nothing of it lands) and is decided again
after a reload, while the others' commands land once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest
from nats.aio.client import Client

from tests.conftest import stream_state
from tests.integration.test_eventstore import redeemed
from tests.integration.test_eventstore_batch import spy_on_atomic_appends
from voucher_ledger.commands import processor as processor_module
from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.eventstore import (
    ATOMIC_MIN,
    JetStreamEventStore,
)
from voucher_ledger.commands.processor import PartitionProcessor, ProcessorStats
from voucher_ledger.commands.wire import Accepted, Rejected
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger.events import Actor, VoucherRedeemed
from voucher_ledger.ledger.voucher import IssueVoucher, Policy, RedeemVoucher

ADMIN = Actor(sub="admin-1", role="superadmin")
CUSTOMER = Actor(sub="checkout", role="service")


def codes_in_one_partition(spec: StreamsSpec, n: int) -> list[str]:
    found: dict[int, list[str]] = {}
    for i in range(1000):
        code = f"XAGG-{i}"
        same = found.setdefault(spec.layout.partition_of(code), [])
        same.append(code)
        if len(same) == n:
            return same
    raise AssertionError("no partition with enough codes")


def processor_for(
    nc: Client,
    spec: StreamsSpec,
    store: JetStreamEventStore,
    partition: int,
    stats: ProcessorStats | None = None,
) -> PartitionProcessor:
    return PartitionProcessor(
        nc,
        spec.layout,
        store,
        spec.command_stream,
        partition,
        policy=Policy(),
        stats=stats or ProcessorStats(),
    )


async def process_all(
    nc: Client, spec: StreamsSpec, proc: PartitionProcessor, sends: list[Awaitable[object]]
) -> list[object]:
    """Send the commands, fetch them as ONE batch, process it, and return the replies."""
    tasks = [asyncio.ensure_future(send) for send in sends]
    pulls = proc.pull_loop()
    await pulls.start()
    try:
        msgs: list[object] = []
        while len(msgs) < len(tasks):
            msgs += await pulls.next(timeout=5.0)
        await proc.process(msgs)  # type: ignore[arg-type]
    finally:
        await pulls.stop()
    return list(await asyncio.gather(*tasks))


async def on_stream(store: JetStreamEventStore, spec: StreamsSpec, code: str) -> list[str]:
    return [
        r.envelope.event.customer_id
        for r in await store.load(spec.layout.voucher_subject(code))
        if isinstance(r.envelope.event, VoucherRedeemed)
    ]


async def test_a_batch_of_several_codes_is_one_append_and_a_stale_code_is_decided_again(
    nc: Client, bus: CommandBus, store: JetStreamEventStore, applied: StreamsSpec
) -> None:
    stale_code, busy_code, other_code = codes_in_one_partition(applied, 3)
    partition = applied.layout.partition_of(stale_code)
    stats = ProcessorStats()
    proc = processor_for(nc, applied, store, partition, stats)
    caps = {stale_code: 1, busy_code: 100, other_code: 100}
    issued = await process_all(
        nc,
        applied,
        proc,
        [
            bus.send(IssueVoucher(code=c, credit_baisa=100, max_redemptions=cap), actor=ADMIN)
            for c, cap in caps.items()
        ],
    )
    assert all(isinstance(r, Accepted) for r in issued), issued
    assert stats.appends == 1  # three codes, one append
    assert proc.cache.get(("voucher", stale_code)) is not None

    # Behind the processor's back: another writer takes the stale code's only slot.
    subject = applied.layout.voucher_subject(stale_code)
    last = (await store.load(subject))[-1].seq
    await store.append(subject, last, [redeemed(stale_code, "sneaky")])
    head = (await stream_state(nc, applied.event_stream))["last_seq"]

    # One batch: the stale code's redemption, and enough for the others to make the group an
    # atomic batch (ATOMIC_MIN messages or more).
    busy = [f"busy-{i}" for i in range(ATOMIC_MIN)]
    calls = spy_on_atomic_appends(store)
    replies = await process_all(
        nc,
        applied,
        proc,
        [bus.send(RedeemVoucher(code=stale_code, customer_id="late"), actor=CUSTOMER)]
        + [bus.send(RedeemVoucher(code=busy_code, customer_id=c), actor=CUSTOMER) for c in busy]
        + [bus.send(RedeemVoucher(code=other_code, customer_id="o-1"), actor=CUSTOMER)],
    )

    late, *others = replies
    assert isinstance(late, Rejected), late
    assert late.reason == "cap_reached"
    assert all(isinstance(r, Accepted) for r in others), others
    assert stats.conflicts == 1
    # The three codes went as one atomic batch, which stored nothing; then each alone.
    assert calls[0] == (3, "refused"), calls
    assert sorted(calls[1:]) == [(1, "refused"), (1, "stored"), (1, "stored")], calls
    assert await on_stream(store, applied, stale_code) == ["sneaky"]
    assert await on_stream(store, applied, busy_code) == busy
    assert await on_stream(store, applied, other_code) == ["o-1"]
    # Every acknowledged event is on the stream at the sequence its reply reported, once.
    state = await stream_state(nc, applied.event_stream)
    assert state["last_seq"] == head + len(busy) + 1
    seqs = sorted(r.seq for r in others if isinstance(r, Accepted))
    assert len(set(seqs)) == len(seqs)
    assert seqs[-1] <= state["last_seq"]
    assert seqs[0] > head
    # The processor's state is the stream's: the next redemption of the stale code is refused
    # without another conflict, and the busy code counts every redemption.
    again = await process_all(
        nc,
        applied,
        proc,
        [
            bus.send(RedeemVoucher(code=stale_code, customer_id="later"), actor=CUSTOMER),
            bus.send(RedeemVoucher(code=busy_code, customer_id="busy-last"), actor=CUSTOMER),
        ],
    )
    assert isinstance(again[0], Rejected)
    assert again[0].reason == "cap_reached"
    assert isinstance(again[1], Accepted)
    assert again[1].voucher is not None
    assert again[1].voucher.times_redeemed == len(busy) + 1
    assert stats.conflicts == 1


async def test_a_settled_appends_answers_and_acks_go_out_in_one_write_answers_first(
    nc: Client,
    bus: CommandBus,
    store: JetStreamEventStore,
    applied: StreamsSpec,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The callers wait for their answers, nobody for the acks: every answer of an append is
    published before the first of its commands' acks, and the answers and the acks are then
    written out together (one send on the socket, not one for each kind)."""
    (code,) = codes_in_one_partition(applied, 1)
    proc = processor_for(nc, applied, store, applied.layout.partition_of(code))
    issue = IssueVoucher(code=code, credit_baisa=100, max_redemptions=100)
    await process_all(nc, applied, proc, [bus.send(issue, actor=ADMIN)])

    seen: list[str] = []
    publish, write_now = nc.publish, processor_module.write_now

    async def spy_publish(subject: str, *args: object, **kwargs: object) -> None:
        if subject.startswith(processor_module.REPLY_PREFIX):
            seen.append("answer")
        elif subject.startswith("$JS.ACK."):
            seen.append("ack")
        await publish(subject, *args, **kwargs)  # type: ignore[arg-type]

    def spy_write_now(client: Client) -> None:
        seen.append("write")
        write_now(client)

    monkeypatch.setattr(nc, "publish", spy_publish)
    monkeypatch.setattr(processor_module, "write_now", spy_write_now)
    customers = [f"first-{i}" for i in range(8)]
    replies = await process_all(
        nc,
        applied,
        proc,
        [bus.send(RedeemVoucher(code=code, customer_id=c), actor=CUSTOMER) for c in customers],
    )

    assert all(isinstance(r, Accepted) for r in replies), replies
    assert seen.count("answer") == seen.count("ack") == len(customers), seen
    last_answer = max(i for i, what in enumerate(seen) if what == "answer")
    first_ack = seen.index("ack")
    assert last_answer < first_ack, seen
    first_answer = seen.index("answer")
    last_ack = max(i for i, what in enumerate(seen) if what == "ack")
    assert "write" not in seen[first_answer:last_ack], seen  # no write between them ...
    assert seen[last_ack + 1 : last_ack + 2] == ["write"], seen  # ... one right after the acks
