"""A checkout's placement chained to its redemption (issue #19), on the in-memory event store:
the partition that decides the redemption hands the placement to the wallet's partition in
the same process, and the one reply carries both outcomes. Where the chain cannot go on (the
redemption refused, the wallet's partition not held here or stopping), the redemption is
answered alone, as before, and the caller places the order itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nats.aio.client import Client

from tests.unit.test_processor_memory import ADMIN, CUSTOMER, Delivery, Replies
from voucher_ledger.commands.chain import placement_after
from voucher_ledger.commands.memory_store import MemoryEventStore
from voucher_ledger.commands.processor import PartitionProcessor, ProcessorStats
from voucher_ledger.commands.wire import REPLY_HEADER, Accepted, Rejected, Then, encode_command
from voucher_ledger.jetstream.layout import Layout
from voucher_ledger.ledger import wallet
from voucher_ledger.ledger.commands import AnyCommand, IssueVoucher, PlaceOrder, RedeemVoucher
from voucher_ledger.ledger.events import OrderLine, OrderPlaced
from voucher_ledger.ledger.voucher import Policy

OMR = 1000
LAYOUT = Layout(prefix="chain", partitions=2)


def key_on(aggregate: str, partition: int, tag: str) -> str:
    """A code (``voucher``) or a customer (``wallet``) that ``partition`` decides."""
    for i in range(1000):
        key = f"{tag}-{i}"
        if LAYOUT.partition_for(aggregate, key) == partition:
            return key
    raise AssertionError(f"no {aggregate} on partition {partition}")


def customer_on(partition: int, tag: str) -> str:
    return key_on("wallet", partition, tag)


def code_on(partition: int, tag: str) -> str:
    return key_on("voucher", partition, tag)


class Process:
    """The partitions of one processor process, on one in-memory store; ``held``: the
    partitions this process holds (the route finds no processor for the others)."""

    def __init__(self, held: set[int] | None = None) -> None:
        self.store = MemoryEventStore(LAYOUT.event_stream)
        self.replies = Replies()
        self.stats = ProcessorStats()
        self.held = {0, 1} if held is None else held
        self.procs = {
            p: PartitionProcessor(
                Client(),
                LAYOUT,
                self.store,
                LAYOUT.command_stream,
                p,
                policy=Policy(),
                stats=self.stats,
                replies=self.replies,
                route=self.route,
            )
            for p in (0, 1)
        }
        self._sent = 0

    def route(self, partition: int) -> PartitionProcessor | None:
        return self.procs[partition] if partition in self.held else None

    def command(
        self, command: AnyCommand, command_id: str | None = None, then: Then | None = None
    ) -> Delivery:
        self._sent += 1
        now = datetime.now(UTC)
        command_id = command_id or f"cmd-{self._sent}"
        actor = ADMIN if isinstance(command, IssueVoucher) else CUSTOMER
        data = encode_command(command_id, actor, now, now + timedelta(minutes=5), command, then)
        return Delivery(data, {REPLY_HEADER: f"_INBOX.chain.{command_id}.{self._sent}"})

    def reply(self, delivery: Delivery) -> Accepted | Rejected | None:
        assert delivery.headers is not None
        return self.replies.sent.get(delivery.headers[REPLY_HEADER])

    async def send(self, delivery: Delivery, partition: int) -> Accepted | Rejected:
        """Deliver to ``partition`` and run every partition until nothing is pending."""
        await self.procs[partition].turn([delivery])
        for _ in range(10):
            for proc in self.procs.values():
                await proc.drain()
        reply = self.reply(delivery)
        assert reply is not None
        return reply

    async def issue(self, code: str, credit_omr: int, cap: int) -> None:
        issued = await self.send(
            self.command(
                IssueVoucher(code=code, credit_baisa=credit_omr * OMR, max_redemptions=cap)
            ),
            LAYOUT.partition_for("voucher", code),
        )
        assert isinstance(issued, Accepted)

    async def orders(self, customer: str) -> list[OrderPlaced]:
        history = await self.store.load(LAYOUT.wallet_subject(customer))
        return [r.envelope.event for r in history if isinstance(r.envelope.event, OrderPlaced)]


def place(customer: str, order_id: str, code: str | None, total_omr: int = 0) -> PlaceOrder:
    return PlaceOrder(
        customer_id=customer,
        order_id=order_id,
        tenant_id=customer,
        plan_id="plan",
        promo_code=code,
        lines=[OrderLine(kind="plan", id="plan", name="Plan", amount_baisa=total_omr * OMR)],
        total_baisa=total_omr * OMR,
    )


def redeem(order: PlaceOrder) -> RedeemVoucher:
    assert order.promo_code is not None
    return RedeemVoucher(
        code=order.promo_code,
        customer_id=order.customer_id,
        plan_id=order.plan_id,
        order_total_baisa=order.total_baisa,
        order=order.draft(),
    )


async def checkout(
    process: Process, order: PlaceOrder, command_id: str | None = None
) -> Accepted | Rejected:
    assert order.promo_code is not None
    then = Then(command_id=f"place-{order.order_id}", command=order)
    delivery = process.command(redeem(order), command_id or f"redeem-{order.order_id}", then)
    return await process.send(delivery, LAYOUT.partition_for("voucher", order.promo_code))


async def test_the_wallets_partition_places_the_order_and_answers_inside_the_redemption() -> None:
    process = Process()
    code, customer = code_on(0, "CHAIN"), customer_on(1, "org")  # two partitions
    await process.issue(code, credit_omr=5, cap=3)
    order = place(customer, "o-1", code)
    reply = await checkout(process, order)
    assert isinstance(reply, Accepted)
    assert reply.command_type == "redeem_voucher"
    assert reply.redemption is not None
    assert reply.redemption.credit_baisa == 5 * OMR
    placed = reply.then
    assert isinstance(placed, Accepted), placed
    assert placed.command_id == "place-o-1"
    assert placed.order is not None
    assert placed.order.status == "completed"
    assert placed.wallet is not None
    assert placed.wallet.balance_baisa == 5 * OMR
    assert placed.seq > reply.seq
    assert process.stats.chained == 1
    # The order placed is the one the caller would have placed with the redemption's terms.
    [event] = await process.orders(customer)
    expected = placement_after(order, reply)
    assert expected is not None
    assert expected.grant is not None
    assert event.grant is not None
    assert event.grant.model_dump() == expected.grant.model_dump()
    assert event.order_id == "o-1"


async def test_on_one_partition_the_chain_goes_back_to_the_same_processor() -> None:
    process = Process()
    code, customer = code_on(0, "SAME"), customer_on(0, "org")
    await process.issue(code, credit_omr=5, cap=3)
    reply = await checkout(process, place(customer, "o-1", code))
    assert isinstance(reply, Accepted)
    assert isinstance(reply.then, Accepted)
    assert reply.then.order is not None
    assert reply.then.order.status == "completed"
    assert len(await process.orders(customer)) == 1


async def test_a_retry_replays_both_the_redemption_and_the_placement() -> None:
    process = Process()
    code, customer = code_on(1, "RETRY"), customer_on(0, "org")
    await process.issue(code, credit_omr=5, cap=3)
    order = place(customer, "o-1", code)
    first = await checkout(process, order)
    again = await checkout(process, order)
    assert isinstance(first, Accepted)
    assert isinstance(again, Accepted)
    assert again.redemption == first.redemption
    assert isinstance(first.then, Accepted)
    assert isinstance(again.then, Accepted)
    assert again.then.order == first.then.order
    assert again.then.seq == first.then.seq  # nothing new appended
    assert len(await process.orders(customer)) == 1
    redeemed = process.stats.commands
    assert redeemed[("redeem_voucher", "accepted")] == 1
    assert redeemed[("redeem_voucher", "replayed")] == 1
    assert redeemed[("place_order", "accepted")] == 1
    assert redeemed[("place_order", "replayed")] == 1


async def test_a_refused_redemption_places_nothing() -> None:
    process = Process()
    code = code_on(0, "FULL")
    await process.issue(code, credit_omr=5, cap=1)
    first, second = customer_on(1, "a"), customer_on(1, "b")
    assert isinstance(await checkout(process, place(first, "o-1", code)), Accepted)
    refused = await checkout(process, place(second, "o-2", code))
    assert isinstance(refused, Rejected)
    assert refused.reason == "cap_reached"
    assert await process.orders(second) == []
    assert process.stats.chained == 1


async def test_a_wallet_partition_held_elsewhere_leaves_the_placement_to_the_caller() -> None:
    process = Process(held={0})
    code, customer = code_on(0, "AWAY"), customer_on(1, "org")
    await process.issue(code, credit_omr=5, cap=3)
    reply = await checkout(process, place(customer, "o-1", code))
    assert isinstance(reply, Accepted)
    assert reply.redemption is not None
    assert reply.then is None
    assert await process.orders(customer) == []
    assert process.stats.chained == 0


async def test_a_stopping_wallet_partition_leaves_the_placement_to_the_caller() -> None:
    process = Process()
    code, customer = code_on(0, "STOP"), customer_on(1, "org")
    await process.issue(code, credit_omr=5, cap=3)
    process.procs[1].stop()
    reply = await checkout(process, place(customer, "o-1", code))
    assert isinstance(reply, Accepted)
    assert reply.then is None
    assert await process.orders(customer) == []


async def test_a_placement_the_wallet_refuses_comes_back_refused_with_the_redemption() -> None:
    """Nothing pays the rest (no card payments, the credit short of the total): the wallet
    refuses; the redemption stands in the reply, for the caller to give its slot back."""
    process = Process()
    code, customer = code_on(1, "SHORT"), customer_on(0, "org")
    await process.issue(code, credit_omr=5, cap=3)
    reply = await checkout(process, place(customer, "o-1", code, total_omr=9))
    assert isinstance(reply, Accepted)
    assert reply.redemption is not None
    assert isinstance(reply.then, Rejected)
    assert reply.then.reason == "payment_unavailable"
    assert reply.then.command_id == "place-o-1"
    assert await process.orders(customer) == []


def test_the_placement_takes_the_redemptions_grant_and_nothing_without_a_redemption() -> None:
    order = place("org-1", "o-1", "CODE")
    assert placement_after(order, Accepted(command_id="x", command_type="t", seq=1)) is None
    assert (
        placement_after(
            order.model_copy(update={"promo_code": None}),
            Accepted(command_id="x", command_type="t", seq=1),
        )
        is None
    )


async def test_a_wallet_stamped_after_its_append_equals_its_history_folded() -> None:
    """The processor does not fold a wallet's new events a second time once they are stored:
    it stamps the state it decided on with their sequences (``wallet.restamp``). That state,
    cached and answered from, must be the fold of what the stream holds, also for a wallet
    decided ahead while its previous append was in flight (stamped with both appends'
    sequences), and every answer must carry its own event's sequence."""
    process = Process()
    code, customer = code_on(0, "STAMP"), customer_on(1, "org")
    await process.issue(code, credit_omr=5, cap=10)
    wallet_proc = process.procs[1]
    # One order placed by the chain, then two more placements held in flight and decided ahead.
    first = await checkout(process, place(customer, "o-1", code))
    assert isinstance(first, Accepted)
    assert isinstance(first.then, Accepted)
    hold = process.store.hold()
    second_place = process.command(place(customer, "o-2", None))
    await wallet_proc.turn([second_place])
    assert hold.is_reached
    third = process.command(place(customer, "o-3", None, total_omr=2))
    await wallet_proc.turn([third])
    assert wallet_proc.decided_ahead == 1
    hold.release()
    await wallet_proc.drain()
    replies = [process.reply(second_place), process.reply(third)]
    assert all(isinstance(r, Accepted) for r in replies), replies
    history = await process.store.load(LAYOUT.wallet_subject(customer))
    assert [r.seq for r in history][-2:] == [r.seq for r in replies if r is not None]
    cached = wallet_proc.cache.get(("wallet", customer))
    assert cached == wallet.fold(customer, history)
    assert cached.last_seq == history[-1].seq
    assert cached.available_baisa == 3 * OMR  # 5 OMR granted, 2 spent on o-3
