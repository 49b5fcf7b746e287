"""Read the event stream from a sequence in big batches (rebuild and verify), with batched
direct gets (no consumer to create or clean up; the stream must allow direct access, which
``streams.yaml`` declares)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from nats.aio.client import Client
from nats.aio.msg import Msg

from voucher_ledger.ledger.events import decode_envelope
from voucher_ledger.projections.projector import StreamEvent
from voucher_ledger.streams import StreamsSpec


async def stream_head(nc: Client, spec: StreamsSpec) -> int:
    msg = await nc.request(f"$JS.API.STREAM.INFO.{spec.event_stream}", b"", timeout=5)
    info = json.loads(msg.data)
    if "error" in info:
        raise RuntimeError(f"event stream {spec.event_stream}: {info['error']}")
    return int(info["state"]["last_seq"])


async def _direct_batch(
    nc: Client, spec: StreamsSpec, start_seq: int, until_seq: int, batch: int
) -> list[StreamEvent]:
    """One batched direct get: up to ``batch`` events from ``start_seq`` (at most until_seq).

    A callback subscription collects the replies: nats.py's ``next_msg`` costs a task and a
    ``wait_for`` per message, which dominated the replay profile."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    raw: list[tuple[int, bytes]] = []

    async def on_msg(msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status")
        if status:
            if not done.done():
                if status in ("204", "404"):
                    done.set_result(None)
                else:
                    done.set_exception(RuntimeError(f"direct get: status {status}"))
            return
        raw.append((int(headers["Nats-Sequence"]), msg.data))

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=batch * 4)
    try:
        request = {
            "seq": start_seq,
            "batch": min(batch, until_seq - start_seq + 1),
            "next_by_subj": spec.layout.events_wildcard,
        }
        await nc.publish(
            f"$JS.API.DIRECT.GET.{spec.event_stream}", json.dumps(request).encode(), reply=inbox
        )
        await asyncio.wait_for(done, 10)
    finally:
        await sub.unsubscribe()
    return [
        StreamEvent(seq=seq, envelope=decode_envelope(data), raw=data.decode())
        for seq, data in sorted(raw)
        if seq <= until_seq
    ]


async def read_stream(
    nc: Client, spec: StreamsSpec, start_seq: int, *, until_seq: int, batch: int = 1000
) -> AsyncIterator[list[StreamEvent]]:
    """Batches of events with ``start_seq <= seq <= until_seq``, in stream order; the next
    batch is fetched while the caller works on the current one."""
    batch = max(1, min(batch, 1000))
    position = max(1, start_seq)
    if position > until_seq:
        return
    pending = asyncio.ensure_future(_direct_batch(nc, spec, position, until_seq, batch))
    try:
        while True:
            events = await pending
            if not events:
                raise RuntimeError(f"the event stream has nothing after seq {position - 1}")
            position = events[-1].seq + 1
            more = position <= until_seq
            if more:
                pending = asyncio.ensure_future(_direct_batch(nc, spec, position, until_seq, batch))
            yield events
            if not more:
                return
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
