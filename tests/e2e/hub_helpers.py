"""Global vouchers at a hub's serve (issue #22): what the tests need besides HTTP."""

from __future__ import annotations

from tests.conftest import connect
from tests.e2e.api_helpers import ApiServer
from tests.e2e.faults import wait_read_models
from voucher_ledger.commands.bus import CommandBus
from voucher_ledger.commands.wire import Accepted
from voucher_ledger.jetstream import streams
from voucher_ledger.ledger.commands import ObserveSovereign
from voucher_ledger.ledger.events import Actor


async def observe(
    server: ApiServer, code: str, sovereign: str, trail_seq: int, redeemed: int
) -> None:
    """What the hub's allocator sends when its trail shows ``sovereign``'s redemptions of
    ``code`` (the HTTP side never sends it); returns once the read models applied it."""
    nc = await connect(server.nats_url)
    spec = streams.load_spec(server.prefix)
    bus = CommandBus(nc, spec.layout, spec.command_stream)
    try:
        await bus.start()
        command = ObserveSovereign(
            code=code,
            sovereign=sovereign,
            trail_seq=trail_seq,
            redeemed=redeemed,
            released_total=0,
            answered_total=0,
        )
        reply = await bus.send(command, actor=Actor(sub="allocator", role="service"))  # type: ignore[arg-type]
        assert isinstance(reply, Accepted), reply
        await wait_read_models(server.database_url, reply.seq)
    finally:
        await bus.close()
        await nc.close()
