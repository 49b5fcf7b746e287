"""The command bus over real NATS: replies and acknowledgements taken straight from nats.py's
parser (voucher_ledger.jetstream.direct), and the same outcomes on nats.py's own path; every
way a send can end (stored and answered, not stored, stored but unanswered, a refused
acknowledgement)."""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.aio.client import Client

from tests.conftest import HostFactory
from voucher_ledger.commands.bus import BusUnavailable, CommandBus, CommandTimeout
from voucher_ledger.commands.wire import REPLY_HEADER, Accepted, Rejected
from voucher_ledger.jetstream.direct import DirectDispatch, header_value, status_of
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.ledger.events import Actor
from voucher_ledger.ledger.voucher import IssueVoucher, RedeemVoucher

ADMIN = Actor(sub="admin-1", role="superadmin")
CUSTOMER = Actor(sub="checkout", role="service")


async def _issue_and_redeem(bus: CommandBus, code: str) -> tuple[Accepted, Accepted | Rejected]:
    issued = await bus.send(
        IssueVoucher(code=code, credit_baisa=2500, max_redemptions=1, active=True),
        actor=ADMIN,
        timeout=30,
    )
    assert isinstance(issued, Accepted), issued
    first = await bus.send(RedeemVoucher(code=code, customer_id="c-1"), actor=CUSTOMER, timeout=30)
    assert isinstance(first, Accepted), first
    assert first.redemption is not None
    assert first.redemption.credit_baisa == 2500
    second = await bus.send(RedeemVoucher(code=code, customer_id="c-2"), actor=CUSTOMER, timeout=30)
    return first, second


@pytest.mark.usefixtures("fast_paths_on")
async def test_replies_and_acknowledgements_come_straight_from_the_parser(
    nc: Client, bus: CommandBus, make_host: HostFactory
) -> None:
    await make_host(instance_id="p1")
    dispatch = DirectDispatch.of(nc)
    before = dispatch.taken
    first, second = await _issue_and_redeem(bus, "DIRECT1")
    assert isinstance(second, Rejected), second
    assert second.reason == "cap_reached"
    # Three commands, each an acknowledgement and a reply, none through nats.py's queue.
    assert dispatch.taken - before == 6
    assert first.voucher is not None
    assert first.voucher.times_redeemed == 1


async def test_nats_py_path_gives_the_same_outcomes(
    nc: Client, bus: CommandBus, make_host: HostFactory
) -> None:
    """If nats.py stopped calling ``_process_msg`` (the hook), the callbacks still carry
    everything: simulated by taking the bus's subscription out of the dispatch."""
    await make_host(instance_id="p1")
    assert bus._sub is not None
    dispatch = DirectDispatch.of(nc)
    dispatch.remove(bus._sub)
    before = dispatch.taken
    first, second = await _issue_and_redeem(bus, "DIRECT2")
    assert isinstance(second, Rejected), second
    assert second.reason == "cap_reached"
    assert first.voucher is not None
    assert first.voucher.times_redeemed == 1
    assert dispatch.taken == before


async def test_no_command_stream_is_unavailable_at_once(nc: Client, applied: StreamsSpec) -> None:
    """Nothing stores the subject (the stream is gone): the server's no-responders status comes
    back on the acknowledgement inbox, long before the command's timeout."""
    await nc.request(f"$JS.API.STREAM.DELETE.{applied.command_stream}", b"", timeout=5)
    bus = CommandBus(nc, applied.layout, applied.command_stream)
    await bus.start()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(BusUnavailable, match="503"):
            await bus.send(RedeemVoucher(code="GONE", customer_id="c"), actor=CUSTOMER, timeout=30)
        assert loop.time() - started < 15, "the 503 must not wait out the 30 s timeout"
    finally:
        await bus.close()


async def test_stored_but_unanswered_is_a_timeout_with_unknown_outcome(
    nc: Client, bus: CommandBus, applied: StreamsSpec
) -> None:
    """No processor runs: the command is stored (acknowledged) and nobody answers."""
    with pytest.raises(CommandTimeout) as caught:
        await bus.send(
            RedeemVoucher(code="NOBODY", customer_id="c"),
            actor=CUSTOMER,
            command_id="cmd-nobody-1",
            timeout=0.5,
        )
    assert caught.value.command_id == "cmd-nobody-1"
    info = json.loads(
        (await nc.request(f"$JS.API.STREAM.INFO.{applied.command_stream}", b"", timeout=5)).data
    )
    assert info["state"]["messages"] == 1  # stored: a retry with the same id is the way on


async def test_a_refused_acknowledgement_is_unavailable(nc: Client, applied: StreamsSpec) -> None:
    """An acknowledgement that names another stream than the bus's command stream is not the
    command stored where a processor will find it."""
    bus = CommandBus(nc, applied.layout, "SOME_OTHER_STREAM")
    await bus.start()
    try:
        with pytest.raises(BusUnavailable, match="refused"):
            await bus.send(RedeemVoucher(code="ELSE", customer_id="c"), actor=CUSTOMER, timeout=5)
    finally:
        await bus.close()


def test_raw_header_helpers() -> None:
    raw = f"NATS/1.0\r\n{REPLY_HEADER}: _INBOX.x.r1\r\nOther: y\r\n\r\n".encode()
    assert header_value(raw, REPLY_HEADER.encode()) == "_INBOX.x.r1"
    assert header_value(raw, b"Other") == "y"
    assert header_value(raw, b"Missing") is None
    assert header_value(None, b"Other") is None
    assert status_of(raw) is None
    assert status_of(b"NATS/1.0 503\r\n\r\n") == b"503"
    assert status_of(b"NATS/1.0 408 Request Timeout\r\n\r\n") == b"408"
    assert status_of(None) is None


@pytest.mark.usefixtures("fast_paths_on")
async def test_a_closed_bus_leaves_the_client_as_it_was(
    nc: Client, applied: StreamsSpec, make_host: HostFactory
) -> None:
    assert "_process_msg" not in vars(nc)
    await make_host(instance_id="p1")
    bus = CommandBus(nc, applied.layout, applied.command_stream)
    await bus.start()
    assert "_process_msg" in vars(nc)  # the hook is on
    issued = await bus.send(
        IssueVoucher(code="CLOSED1", credit_baisa=100, max_redemptions=1), actor=ADMIN
    )
    assert isinstance(issued, Accepted)
    await bus.close()
    assert "_process_msg" not in vars(nc)
    reply = await nc.request(f"$JS.API.STREAM.INFO.{applied.command_stream}", b"", timeout=5)
    assert "state" in json.loads(reply.data)  # ordinary requests still answered
