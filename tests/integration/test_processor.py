"""Sequential processors over real NATS: the cap under storms, staleness, retries, failover."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from typing import Any

import pytest
from nats.aio.client import Client

from tests.conftest import HostFactory, stream_state, wait_until
from voucher_ledger.commands.bus import BusError, CommandBus
from voucher_ledger.commands.eventstore import JetStreamEventStore
from voucher_ledger.commands.host import ProcessorHost
from voucher_ledger.commands.wire import Accepted, Rejected
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger.errors import InvalidInput
from voucher_ledger.ledger.events import Actor, VoucherRedeemed
from voucher_ledger.ledger.voucher import IssueVoucher, RedeemVoucher, fold

ADMIN = Actor(sub="admin-1", role="superadmin")
CUSTOMER = Actor(sub="checkout", role="service")


async def all_partitions_covered(hosts: list[ProcessorHost], spec: StreamsSpec) -> None:
    def covered() -> bool:
        held = [p for h in hosts for p in h.partitions]
        counts = [len(h.partitions) for h in hosts]
        balanced = max(counts) - min(counts) <= 1
        return balanced and sorted(held) == list(range(spec.layout.partitions))

    await wait_until(covered, what="every partition held exactly once, fair shares")


async def issue(bus: CommandBus, code: str, cap: int, credit: int = 5000) -> Accepted:
    reply = await bus.send(
        IssueVoucher(code=code, credit_baisa=credit, max_redemptions=cap, active=True),
        actor=ADMIN,
        timeout=30,
    )
    assert isinstance(reply, Accepted), reply
    return reply


def hosts_stats(hosts: list[ProcessorHost]) -> list[str]:
    """The hosts' counters, for an assertion message."""
    return [
        f"{h.instance_id}: {dict(h.stats.commands)} conflicts={h.stats.conflicts}" for h in hosts
    ]


async def redemption_events(store: JetStreamEventStore, spec: StreamsSpec, code: str) -> list[str]:
    history = await store.load(spec.layout.voucher_subject(code))
    return [
        r.envelope.event.customer_id
        for r in history
        if isinstance(r.envelope.event, VoucherRedeemed)
    ]


@pytest.mark.storm
async def test_cap_storm_three_instances_exactly_cap_accepted(
    make_host: HostFactory, bus: CommandBus, store: JetStreamEventStore, applied: StreamsSpec
) -> None:
    hosts = [await make_host() for _ in range(3)]
    await all_partitions_covered(hosts, applied)
    code, cap, attempts = "STORM-CAP", 2500, 10_000
    await issue(bus, code, cap)

    replies = await asyncio.gather(
        *(
            bus.send(RedeemVoucher(code=code, customer_id=f"cust-{i}"), actor=CUSTOMER, timeout=120)
            for i in range(attempts)
        )
    )

    outcomes = Counter(r.status if isinstance(r, Accepted) else r.reason for r in replies)
    assert outcomes == {"accepted": cap, "cap_reached": attempts - cap}
    on_stream = await redemption_events(store, applied, code)
    assert len(on_stream) == cap, "redemption events on the stream"
    accepted_customers = {
        r.redemption.customer_id for r in replies if isinstance(r, Accepted) and r.redemption
    }
    assert set(on_stream) == accepted_customers
    final = max((r for r in replies if isinstance(r, Accepted)), key=lambda r: r.seq)
    assert final.voucher.times_redeemed == cap
    # The work was done in batches: rejections append nothing, and many redemptions shared
    # one atomic batch append.
    # (The exact counts are the replies and the stream, above. A host's counters can miss an
    # append whose acknowledgement timed out on a loaded machine although it landed: the
    # command's redelivery then finds its receipt and counts as "replayed".)
    accepted_by_hosts = sum(h.stats.commands[("redeem_voucher", "accepted")] for h in hosts)
    replayed_by_hosts = sum(h.stats.commands[("redeem_voucher", "replayed")] for h in hosts)
    assert accepted_by_hosts <= cap, ("first-time accepts counted by the hosts", hosts_stats(hosts))
    assert accepted_by_hosts + replayed_by_hosts >= cap, hosts_stats(hosts)
    assert sum(h.stats.events_appended for h in hosts) <= cap + 1  # + the issue
    assert sum(h.stats.appends for h in hosts) < cap / 10


async def test_stale_writer_gets_conflict_reloads_and_never_exceeds_cap(
    make_host: HostFactory, bus: CommandBus, store: JetStreamEventStore, applied: StreamsSpec
) -> None:
    host = await make_host()
    await all_partitions_covered([host], applied)
    code, cap = "STALE-1", 3
    await issue(bus, code, cap)
    first = await bus.send(RedeemVoucher(code=code, customer_id="early"), actor=CUSTOMER)
    assert isinstance(first, Accepted)
    proc = host.processor(applied.layout.partition_of(code))
    assert proc is not None
    assert proc.cache.get(("voucher", code)) is not None  # warm, in-memory state

    # Behind the processor's back: another writer appends the remaining two redemptions.
    subject = applied.layout.voucher_subject(code)
    history = await store.load(subject)
    state = fold(code, history)
    from tests.integration.test_eventstore import redeemed

    await store.append(
        subject, state.last_seq, [redeemed(code, "sneaky-1"), redeemed(code, "sneaky-2")]
    )
    conflicts_before = host.stats.conflicts

    late = await bus.send(RedeemVoucher(code=code, customer_id="late"), actor=CUSTOMER)

    assert isinstance(late, Rejected)
    assert late.reason == "cap_reached"
    assert host.stats.conflicts == conflicts_before + 1
    assert sorted(await redemption_events(store, applied, code)) == [
        "early",
        "sneaky-1",
        "sneaky-2",
    ]


async def test_retry_same_command_id_five_times_across_restart_one_redemption_same_reply(
    make_host: HostFactory, bus: CommandBus, store: JetStreamEventStore, applied: StreamsSpec
) -> None:
    host = await make_host()
    await all_partitions_covered([host], applied)
    code = "RETRY-1"
    await issue(bus, code, cap=10)
    command = RedeemVoucher(code=code, customer_id="alice")
    command_id = f"cmd-{uuid.uuid4().hex}"

    replies = [await bus.send(command, actor=CUSTOMER, command_id=command_id) for _ in range(2)]
    # A client retry racing itself:
    replies += await asyncio.gather(
        bus.send(command, actor=CUSTOMER, command_id=command_id),
        bus.send(command, actor=CUSTOMER, command_id=command_id),
    )
    await host.stop(release=True)  # restart: the new instance has no in-memory state
    fresh = await make_host()
    await all_partitions_covered([fresh], applied)
    replies.append(await bus.send(command, actor=CUSTOMER, command_id=command_id))

    assert len(replies) == 5
    assert all(isinstance(r, Accepted) for r in replies)
    assert all(r == replies[0] for r in replies), replies
    assert await redemption_events(store, applied, code) == ["alice"]
    other = await bus.send(command, actor=CUSTOMER)  # a NEW command id for the same customer
    assert isinstance(other, Rejected)
    assert other.reason == "already_redeemed"
    reused = await bus.send(
        RedeemVoucher(code=code, customer_id="bob"), actor=CUSTOMER, command_id=command_id
    )
    assert isinstance(reused, Rejected)
    assert reused.reason == "command_id_reused"


async def send_until_answered(
    bus: CommandBus,
    command: RedeemVoucher,
    command_id: str,
    deadline: float,
    in_flight: contextlib.AbstractAsyncContextManager[Any] | None = None,
) -> Accepted | Rejected:
    """What a well-behaved client does: retry with the same command id until it gets a reply.
    ``in_flight`` bounds concurrent clients, so a storm lasts long enough to crash mid-way."""
    loop = asyncio.get_running_loop()
    async with in_flight or contextlib.nullcontext():
        while True:
            try:
                return await bus.send(command, actor=CUSTOMER, command_id=command_id, timeout=4)
            except BusError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)


@pytest.mark.storm
async def test_failover_mid_storm_cap_holds_and_accepted_replies_are_on_stream(
    make_host: HostFactory,
    bus: CommandBus,
    store: JetStreamEventStore,
    applied: StreamsSpec,
    nc: Client,
) -> None:
    hosts = [await make_host() for _ in range(3)]
    await all_partitions_covered(hosts, applied)
    code, cap, attempts = "FAILOVER-1", 1500, 4000
    await issue(bus, code, cap)
    partition = applied.layout.partition_of(code)
    active = next(h for h in hosts if partition in h.partitions)
    survivors = [h for h in hosts if h is not active]

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    in_flight = asyncio.Semaphore(40)
    tasks = [
        asyncio.create_task(
            send_until_answered(
                bus, RedeemVoucher(code=code, customer_id=f"c{i}"), f"fo-{i}", deadline, in_flight
            )
        )
        for i in range(attempts)
    ]
    # Crash the active processor once it has accepted some, but not all, redemptions.
    await wait_until(
        lambda: active.stats.commands[("redeem_voucher", "accepted")] >= 200,
        what="the active instance to be mid-storm",
    )
    await active.stop(release=False)  # no lease release, no acks: as after a SIGKILL
    await active._nc.close()  # its connection dies with it

    replies = await asyncio.gather(*tasks)

    assert any(partition in h.partitions for h in survivors), "nobody took over"
    accepted = [r for r in replies if isinstance(r, Accepted)]
    rejected = Counter(r.reason for r in replies if isinstance(r, Rejected))
    assert len(accepted) == cap
    assert rejected == {"cap_reached": attempts - cap}
    on_stream = await redemption_events(store, applied, code)
    assert len(on_stream) == cap  # never over the cap, whatever was redelivered
    assert {r.redemption.customer_id for r in accepted if r.redemption} == set(on_stream)
    # Every accepted reply names the stream sequence of its own event.
    history = {r.seq: r for r in await store.load(applied.layout.voucher_subject(code))}
    for reply in accepted:
        event = history[reply.seq].envelope
        assert event.command_id == reply.command_id
    assert active.stats.commands[("redeem_voucher", "accepted")] < cap  # the crash was mid-storm


@pytest.mark.parametrize(
    "raw",
    ["A.B", "*", ">", "a b", "X" * 65, "", "   ", "CAFÉ-1", "AB", "A>B", "A*", "\x00AB"],
)
async def test_bad_codes_are_rejected_before_anything_is_published(
    raw: str, bus: CommandBus, nc: Client, applied: StreamsSpec
) -> None:
    with pytest.raises(InvalidInput):
        await bus.send(RedeemVoucher(code=raw, customer_id="c"), actor=CUSTOMER)
    with pytest.raises(InvalidInput):
        IssueVoucher(code=raw, credit_baisa=1000)
    assert (await stream_state(nc, applied.command_stream))["messages"] == 0
    assert (await stream_state(nc, applied.event_stream))["messages"] == 0


async def test_malformed_command_on_the_stream_is_refused_not_retried(
    make_host: HostFactory, nc: Client, applied: StreamsSpec
) -> None:
    host = await make_host()
    await all_partitions_covered([host], applied)
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    subject = applied.layout.voucher_command_subject("GOOD-CODE")
    await nc.request(
        subject, b'{"command_id": "x", "garbage": true}', headers={"Vl-Reply-To": inbox}
    )
    reply = await sub.next_msg(timeout=10)
    assert b'"invalid_command"' in reply.data
    await wait_until(
        lambda: host.stats.commands[("unknown", "malformed")] == 1, what="malformed counted"
    )
    await wait_until(lambda: _empty(nc, applied.command_stream), what="malformed command removed")
    assert (await stream_state(nc, applied.event_stream))["messages"] == 0


async def _empty(nc: Client, stream: str) -> bool:
    return (await stream_state(nc, stream))["messages"] == 0


async def test_reply_subject_outside_inbox_is_never_published_to(
    make_host: HostFactory,
    bus: CommandBus,
    nc: Client,
    applied: StreamsSpec,
    store: JetStreamEventStore,
) -> None:
    """A forged Vl-Reply-To aimed at the event stream must not land an event there."""
    host = await make_host()
    await all_partitions_covered([host], applied)
    await issue(bus, "FORGE-1", cap=0)
    before = (await stream_state(nc, applied.event_stream))["messages"]
    from datetime import UTC, datetime

    from voucher_ledger.commands.wire import CommandEnvelope

    env = CommandEnvelope(
        command_id="forge-1",
        actor=CUSTOMER,
        sent_at=datetime.now(UTC),
        command=RedeemVoucher(code="FORGE-1", customer_id="mallory"),
    )
    target = applied.layout.voucher_subject("FORGE-1")
    await nc.request(
        applied.layout.voucher_command_subject("FORGE-1"),
        env.model_dump_json().encode(),
        headers={"Vl-Reply-To": target},
    )
    await wait_until(
        lambda: host.stats.commands[("redeem_voucher", "accepted")] == 1, what="processed"
    )
    history = await store.load(target)
    assert (await stream_state(nc, applied.event_stream))["messages"] == before + 1
    assert all(r.envelope.event.type != "voucher.issued" or r.seq == 1 for r in history)


async def _send_raw(nc: Client, applied: StreamsSpec, env: object) -> Accepted | Rejected:
    from voucher_ledger.commands.wire import REPLY_ADAPTER, CommandEnvelope

    assert isinstance(env, CommandEnvelope)
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.request(
        applied.layout.voucher_command_subject(env.command.code),
        env.model_dump_json().encode(),
        headers={"Vl-Reply-To": inbox},
    )
    msg = await sub.next_msg(timeout=10)
    await sub.unsubscribe()
    return REPLY_ADAPTER.validate_json(msg.data)


async def test_a_command_past_its_deadline_is_refused_not_applied_late(
    make_host: HostFactory,
    bus: CommandBus,
    nc: Client,
    applied: StreamsSpec,
    store: JetStreamEventStore,
) -> None:
    """A caller that stopped waiting never has its command applied behind its back; a command
    that was applied before still replays its original reply."""
    from datetime import UTC, datetime, timedelta

    from voucher_ledger.commands.wire import CommandEnvelope

    host = await make_host()
    await all_partitions_covered([host], applied)
    await issue(bus, "LATE-1", cap=0)
    past = datetime.now(UTC) - timedelta(seconds=1)
    late = CommandEnvelope(
        command_id="late-1",
        actor=CUSTOMER,
        sent_at=past - timedelta(seconds=10),
        expires_at=past,
        command=RedeemVoucher(code="LATE-1", customer_id="slowpoke"),
    )
    reply = await _send_raw(nc, applied, late)
    assert isinstance(reply, Rejected)
    assert reply.reason == "expired"
    assert await redemption_events(store, applied, "LATE-1") == []

    applied_first = await bus.send(
        RedeemVoucher(code="LATE-1", customer_id="on-time"), actor=CUSTOMER, command_id="ok-1"
    )
    assert isinstance(applied_first, Accepted)
    replay = await _send_raw(
        nc,
        applied,
        late.model_copy(
            update={
                "command_id": "ok-1",
                "command": RedeemVoucher(code="LATE-1", customer_id="on-time"),
            }
        ),
    )
    assert replay == applied_first
    assert await redemption_events(store, applied, "LATE-1") == ["on-time"]
