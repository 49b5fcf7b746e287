"""The processor's deciding and settling core on the in-memory event store: deterministic, no
servers, no sleeps. Each test steps the processor as its run loop does (:meth:`turn` with the
commands that arrived, :meth:`drain` to the end) while the store holds, fails or refuses an
append exactly where the test says.

The same behaviours are tested against NATS in tests/integration/test_processor_pipeline.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from nats.aio.client import Client

from voucher_ledger.commands.memory_store import MemoryEventStore
from voucher_ledger.commands.processor import PartitionProcessor, ProcessorStats
from voucher_ledger.commands.store import EventStoreUnavailable, TransientAppendError
from voucher_ledger.commands.wire import (
    REPLY_ADAPTER,
    REPLY_HEADER,
    Accepted,
    Rejected,
    encode_command,
)
from voucher_ledger.jetstream.layout import Layout
from voucher_ledger.ledger.commands import AnyCommand, IssueVoucher, RedeemVoucher
from voucher_ledger.ledger.events import Actor, EventEnvelope, VoucherIssued, VoucherRedeemed
from voucher_ledger.ledger.voucher import Policy

ADMIN = Actor(sub="admin-1", role="superadmin")
CUSTOMER = Actor(sub="checkout", role="service")
LAYOUT = Layout(prefix="mem", partitions=1)


@dataclass
class Delivery:
    """A delivered command as the processor sees one (nats.py's ``Msg`` in service)."""

    data: bytes
    headers: dict[str, str] | None
    acked: bool = False
    terminated: bool = False

    async def ack(self) -> None:
        assert not self.acked, "acked twice"
        self.acked = True

    async def term(self) -> None:
        self.terminated = True


@dataclass
class Replies:
    """Where the processor's replies go: kept per reply inbox, in the order sent."""

    sent: dict[str, Accepted | Rejected] = field(default_factory=dict)

    async def publish(self, subject: str, payload: bytes = b"") -> None:
        assert subject not in self.sent, f"two replies to {subject}"
        self.sent[subject] = REPLY_ADAPTER.validate_json(payload)


class Rig:
    """One partition's processor on an in-memory store."""

    def __init__(self, store: MemoryEventStore | None = None) -> None:
        # Another rig's store: a processor started afresh (nothing cached) on the same stream.
        self.store = store or MemoryEventStore(LAYOUT.event_stream)
        self.replies = Replies()
        self.stats = ProcessorStats()
        # The NATS client is never connected: only the pull loop (not used here) needs it.
        self.proc = PartitionProcessor(
            Client(),
            LAYOUT,
            self.store,
            LAYOUT.command_stream,
            0,
            policy=Policy(),
            stats=self.stats,
            replies=self.replies,
        )
        self._sent = 0 if store is None else 1000  # command ids of its own

    def command(self, command: AnyCommand, actor: Actor = CUSTOMER) -> Delivery:
        self._sent += 1
        now = datetime.now(UTC)
        command_id = f"cmd-{self._sent}"
        data = encode_command(command_id, actor, now, now + timedelta(minutes=5), command)
        return Delivery(data, {REPLY_HEADER: f"_INBOX.mem.{command_id}"})

    def redeem(self, code: str, customer: str) -> Delivery:
        return self.command(RedeemVoucher(code=code, customer_id=customer))

    def reply(self, delivery: Delivery) -> Accepted | Rejected | None:
        assert delivery.headers is not None
        return self.replies.sent.get(delivery.headers[REPLY_HEADER])

    async def issue(self, code: str, cap: int) -> Accepted:
        delivery = self.command(
            IssueVoucher(code=code, credit_baisa=100, max_redemptions=cap), ADMIN
        )
        await self.proc.process([delivery])
        issued = self.reply(delivery)
        assert isinstance(issued, Accepted)
        return issued

    async def on_stream(self, code: str) -> list[str]:
        history = await self.store.load(LAYOUT.voucher_subject(code))
        return [
            r.envelope.event.customer_id
            for r in history
            if isinstance(r.envelope.event, VoucherRedeemed)
        ]


def sneaky(code: str) -> EventEnvelope:
    """A redemption by another writer, behind the processor's back."""
    return EventEnvelope(
        event_id="00000000-0000-4000-8000-000000000001",
        aggregate_id=code,
        occurred_at=datetime.now(UTC),
        actor=CUSTOMER,
        command_id="c-sneaky",
        event=VoucherRedeemed(
            code=code, customer_id="sneaky", redemption_id="r-sneaky", credit_baisa=100
        ),
    )


async def test_commands_arriving_during_an_append_are_decided_ahead_and_sent_next() -> None:
    rig = Rig()
    code = "MEM-AHEAD"
    subject = LAYOUT.voucher_subject(code)
    issued = await rig.issue(code, cap=5)
    hold = rig.store.hold()
    first = rig.redeem(code, "c1")
    await rig.proc.turn([first])  # c1's append goes out and is held
    assert hold.is_reached
    assert hold.parts == [(subject, issued.seq, 1)]

    later = [rig.redeem(code, f"c{i}") for i in range(2, 8)]
    await rig.proc.turn(later)

    # Decided against c1's outcome (c1 counts against the cap already), not sent, not answered.
    assert rig.proc.decided_ahead == 6
    assert len(rig.store.calls) == 2  # the issue, and c1's append at the hold
    assert len(rig.replies.sent) == 1  # the issue's
    assert all(rig.reply(d) is None for d in [first, *later])
    assert not any(d.acked for d in [first, *later])

    hold.release()
    await rig.proc.drain()

    one = rig.reply(first)
    assert isinstance(one, Accepted)
    rest = [rig.reply(d) for d in later]
    accepted = [r for r in rest if isinstance(r, Accepted)]
    refused = [r for r in rest if isinstance(r, Rejected)]
    assert len(accepted) == 4
    assert [r.reason for r in refused] == ["cap_reached", "cap_reached"]
    # The next append went out as soon as c1's was stored, expecting c1's sequence.
    assert rig.store.calls[2:] == [[(subject, one.seq, 4)]]
    assert sorted(r.seq for r in accepted) == list(range(one.seq + 1, one.seq + 5))
    assert await rig.on_stream(code) == ["c1", "c2", "c3", "c4", "c5"]
    assert all(d.acked for d in [first, *later])
    assert rig.proc.decided_ahead == 0
    assert rig.stats.conflicts == 0


async def test_a_conflict_in_flight_sends_the_commands_decided_after_it_back_to_be_decided() -> (
    None
):
    rig = Rig()
    code = "MEM-STALE"
    subject = LAYOUT.voucher_subject(code)
    issued = await rig.issue(code, cap=3)
    hold = rig.store.hold()
    first = rig.redeem(code, "c1")
    await rig.proc.turn([first])
    assert hold.is_reached
    # Behind the processor's back, another writer takes a slot: c1's append will conflict.
    await rig.store.append(subject, issued.seq, [sneaky(code)])
    later = [rig.redeem(code, f"c{i}") for i in range(2, 5)]
    await rig.proc.turn(later)
    # Decided against c1's expected outcome: c2 and c3 take the last slots, c4 is refused.
    assert rig.proc.decided_ahead == 3

    hold.release()
    await rig.proc.drain()

    # All four decided again after a reload, in arrival order: the sneaky redemption counts.
    replies = [rig.reply(d) for d in [first, *later]]
    assert [type(r).__name__ for r in replies] == ["Accepted", "Accepted", "Rejected", "Rejected"]
    assert all(r.reason == "cap_reached" for r in replies[2:] if isinstance(r, Rejected))
    assert await rig.on_stream(code) == ["sneaky", "c1", "c2"]
    # c1's append refused (it expected the issue), the retry expects the sneaky redemption.
    assert rig.store.calls[-1] == [(subject, issued.seq + 1, 2)]
    assert rig.stats.conflicts == 1
    assert rig.stats.transient_refusals == 0
    assert rig.store.backoffs == [1]
    assert all(d.acked for d in [first, *later])
    assert rig.proc.decided_ahead == 0


async def test_a_failed_append_in_flight_sends_the_commands_decided_after_it_back() -> None:
    rig = Rig()
    code = "MEM-FAIL"
    subject = LAYOUT.voucher_subject(code)
    issued = await rig.issue(code, cap=2)
    hold = rig.store.hold()
    rig.store.fail_next(EventStoreUnavailable("append to the hold timed out"))
    first = rig.redeem(code, "c1")
    await rig.proc.turn([first])
    later = [rig.redeem(code, f"c{i}") for i in range(2, 5)]
    await rig.proc.turn(later)
    assert rig.proc.decided_ahead == 3

    hold.release()
    await rig.proc.drain()

    # c1's append failed: not answered, not acked (it comes back after ack_wait). The others
    # are decided again from the stream, where c1 is not: c2 and c3 take the two slots.
    assert rig.reply(first) is None
    assert not first.acked
    replies = [rig.reply(d) for d in later]
    assert [type(r).__name__ for r in replies] == ["Accepted", "Accepted", "Rejected"]
    assert await rig.on_stream(code) == ["c2", "c3"]
    assert [call[0][:2] for call in rig.store.calls[1:]] == [
        (subject, issued.seq),  # c1's, failed
        (subject, issued.seq),  # c2 and c3, after a reload: not c1's expected outcome
    ]
    assert all(d.acked for d in later)
    assert rig.stats.conflicts == 0
    assert rig.store.backoffs == []


async def test_a_transient_refusal_is_decided_again_after_a_backoff_not_counted_a_conflict() -> (
    None
):
    rig = Rig()
    code = "MEM-TRANSIENT"
    subject = LAYOUT.voucher_subject(code)
    issued = await rig.issue(code, cap=2)
    rig.store.refuse_next(subject, TransientAppendError("too many batches", code=10210))
    first = rig.redeem(code, "c1")

    await rig.proc.process([first])

    reply = rig.reply(first)
    assert isinstance(reply, Accepted)
    assert reply.seq == issued.seq + 1
    assert first.acked
    assert await rig.on_stream(code) == ["c1"]
    # Refused once (nothing stored), reloaded, sent again with the same expectation.
    assert rig.store.calls[1:] == [[(subject, issued.seq, 1)], [(subject, issued.seq, 1)]]
    assert rig.stats.transient_refusals == 1
    assert rig.stats.conflicts == 0
    assert rig.store.backoffs == [1]


async def test_a_transient_refusal_in_flight_sends_the_commands_decided_after_it_back() -> None:
    rig = Rig()
    code = "MEM-TRANSIENT-AHEAD"
    subject = LAYOUT.voucher_subject(code)
    issued = await rig.issue(code, cap=2)
    hold = rig.store.hold()
    rig.store.refuse_next(subject, TransientAppendError("leader not ready", code=10163))
    first = rig.redeem(code, "c1")
    await rig.proc.turn([first])
    later = [rig.redeem(code, f"c{i}") for i in range(2, 5)]
    await rig.proc.turn(later)
    assert rig.proc.decided_ahead == 3  # c2 decided on c1's outcome; c3 and c4 at the cap

    hold.release()
    await rig.proc.drain()

    # Nothing of c1's append was stored: c1 and the later ones decided again, in order.
    replies = [rig.reply(d) for d in [first, *later]]
    assert [type(r).__name__ for r in replies] == ["Accepted", "Accepted", "Rejected", "Rejected"]
    assert await rig.on_stream(code) == ["c1", "c2"]
    assert rig.store.calls[-1] == [(subject, issued.seq, 2)]
    assert rig.stats.transient_refusals == 1
    assert rig.stats.conflicts == 0
    assert all(d.acked for d in [first, *later])


# ---------------------------------------------------------------------- presumed new (issue #19)


async def test_a_new_aggregate_is_decided_without_reading_its_history() -> None:
    rig = Rig()
    code = "MEM-NEW"
    issued = await rig.issue(code, cap=1)
    # Nothing read: decided on the empty state, appended expecting the subject to be empty.
    assert rig.stats.loads == 0
    assert rig.stats.presumed == 1
    assert rig.store.calls == [[(LAYOUT.voucher_subject(code), 0, 1)]]
    assert issued.voucher is not None
    assert issued.voucher.max_redemptions == 1
    # Cached from its append: the next command is decided on it, still nothing read.
    first = rig.redeem(code, "c1")
    await rig.proc.process([first])
    assert isinstance(rig.reply(first), Accepted)
    assert rig.stats.loads == 0


async def test_a_presumption_that_was_wrong_is_a_conflict_and_decided_again_on_the_history() -> (
    None
):
    old = Rig()
    code = "MEM-OLD"
    issued = await old.issue(code, cap=1)
    rig = Rig(old.store)  # a fresh processor: nothing cached
    again = rig.command(IssueVoucher(code=code, credit_baisa=500, max_redemptions=9), ADMIN)

    await rig.proc.process([again])

    # Presumed new, the issue was decided as a creation; its append (expecting no event) was
    # refused, the history read and the command decided again on it: an update of the code.
    reply = rig.reply(again)
    assert isinstance(reply, Accepted)
    assert again.acked
    subject = LAYOUT.voucher_subject(code)
    assert rig.store.calls[1:] == [[(subject, 0, 1)], [(subject, issued.seq, 1)]]
    history = await rig.store.load(subject)
    assert [r.seq for r in history] == [issued.seq, reply.seq]
    event = history[-1].envelope.event
    assert isinstance(event, VoucherIssued)
    assert (event.change, event.credit_baisa, event.max_redemptions) == ("updated", 500, 9)
    assert rig.stats.presumed_wrong == 1
    assert rig.stats.loads == 1
    # Not contention: no conflict counted, no backoff.
    assert rig.stats.conflicts == 0
    assert rig.store.backoffs == []


async def test_a_command_refused_on_the_empty_state_is_decided_on_the_history_read() -> None:
    old = Rig()
    code = "MEM-KNOWN"
    issued = await old.issue(code, cap=2)
    rig = Rig(old.store)  # a fresh processor: nothing cached
    first = rig.redeem(code, "c1")

    await rig.proc.process([first])

    # On the empty state the code is unknown: a refusal that no append would confirm, so the
    # history is read and the redemption decided on it.
    reply = rig.reply(first)
    assert isinstance(reply, Accepted)
    assert reply.seq == issued.seq + 1
    assert rig.stats.loads == 1
    assert rig.stats.presumed == 0
    assert rig.store.calls[1:] == [[(LAYOUT.voucher_subject(code), issued.seq, 1)]]
    assert await rig.on_stream(code) == ["c1"]


async def test_a_code_that_does_not_exist_is_refused_after_its_empty_history_is_read() -> None:
    rig = Rig()
    first = rig.redeem("MEM-NOWHERE", "c1")
    await rig.proc.process([first])
    reply = rig.reply(first)
    assert isinstance(reply, Rejected)
    assert reply.reason == "not_found"
    assert rig.stats.loads == 1
    assert rig.store.calls == []
