"""Read the event stream from a sequence in big batches (rebuild and verify), through an
ephemeral pull consumer that nobody acks and the server forgets after a minute of silence."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator

import nats.errors
from nats.aio.client import Client

from voucher_ledger.ledger.events import decode_envelope
from voucher_ledger.projections.projector import StreamEvent
from voucher_ledger.streams import StreamsSpec


async def stream_head(nc: Client, spec: StreamsSpec) -> int:
    msg = await nc.request(f"$JS.API.STREAM.INFO.{spec.event_stream}", b"", timeout=5)
    info = json.loads(msg.data)
    if "error" in info:
        raise RuntimeError(f"event stream {spec.event_stream}: {info['error']}")
    return int(info["state"]["last_seq"])


async def read_stream(
    nc: Client, spec: StreamsSpec, start_seq: int, *, until_seq: int, batch: int = 1000
) -> AsyncIterator[list[StreamEvent]]:
    """Batches of events with ``start_seq <= seq <= until_seq``, in stream order."""
    if start_seq > until_seq:
        return
    name = f"{spec.layout.upper}_REPLAY_{uuid.uuid4().hex[:12]}"
    config = {
        "name": name,
        "deliver_policy": "by_start_sequence",
        "opt_start_seq": max(1, start_seq),
        "ack_policy": "none",
        "filter_subject": spec.layout.events_wildcard,
        "inactive_threshold": 60 * 1_000_000_000,
        "mem_storage": True,
        "num_replicas": 1,
    }
    reply = await nc.request(
        f"$JS.API.CONSUMER.CREATE.{spec.event_stream}.{name}",
        json.dumps({"stream_name": spec.event_stream, "config": config}).encode(),
        timeout=5,
    )
    created = json.loads(reply.data)
    if "error" in created:
        raise RuntimeError(f"replay consumer: {created['error']}")
    js = nc.jetstream()
    psub = await js.pull_subscribe_bind(durable=name, stream=spec.event_stream)
    try:
        reached = start_seq - 1
        while reached < until_seq:
            try:
                msgs = await psub.fetch(min(batch, until_seq - reached), timeout=5)
            except (TimeoutError, nats.errors.TimeoutError) as exc:
                raise RuntimeError(f"the event stream stopped at seq {reached}") from exc
            events = []
            for m in msgs:
                seq = int(m.metadata.sequence.stream)
                if seq > until_seq:
                    break
                events.append(
                    StreamEvent(seq=seq, envelope=decode_envelope(m.data), raw=m.data.decode())
                )
            if not events:
                continue
            reached = events[-1].seq
            yield events
    finally:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
        with contextlib.suppress(Exception):
            await nc.request(f"$JS.API.CONSUMER.DELETE.{spec.event_stream}.{name}", b"", timeout=5)
