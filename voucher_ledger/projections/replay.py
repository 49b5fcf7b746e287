"""Read the event stream from a sequence in big batches (rebuild and verify), through an
ephemeral pull consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.protocol import parser as nats_parser

from voucher_ledger.jetstream import fastpaths
from voucher_ledger.jetstream.api import js_api
from voucher_ledger.jetstream.pulls import PullLoop, stream_sequence
from voucher_ledger.jetstream.streams import StreamsSpec
from voucher_ledger.projections.model import StreamEvent, stream_event

log = logging.getLogger(__name__)


async def stream_head(nc: Client, spec: StreamsSpec) -> int:
    info = await js_api(nc, f"STREAM.INFO.{spec.event_stream}")
    return int(info["state"]["last_seq"])


async def _create_reader(nc: Client, spec: StreamsSpec, start_seq: int) -> str:
    """An ephemeral pull consumer over every event from ``start_seq`` (no acks; the server
    removes it 30 s after its last pull if the reader dies)."""
    name = f"REPLAY_{os.urandom(8).hex().upper()}"
    config = {
        "name": name,
        "deliver_policy": "by_start_sequence",
        "opt_start_seq": start_seq,
        "ack_policy": "none",
        "filter_subject": spec.layout.events_wildcard,
        "replay_policy": "instant",
        "inactive_threshold": 30_000_000_000,
        "mem_storage": True,
        "num_replicas": 1,
        "max_waiting": 8,
    }
    stream = spec.event_stream
    body = {"stream_name": stream, "config": config, "action": "create"}
    await js_api(nc, f"CONSUMER.CREATE.{stream}.{name}", body)
    return name


_V1_TOKENS = 9  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
_V2_MIN_TOKENS = 11  # $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>...
# Read here, not imported: the fence (fastpaths.REPLAY_PARSER) reports it missing instead.
_AWAITING_CONTROL_LINE = getattr(nats_parser, "AWAITING_CONTROL_LINE", None)
_HMSG = b"HMSG "
_HEADERS = b"NATS/1.0\r\n"  # a delivery's header block; a status line has a code after 1.0
_CRLF = b"\r\n"


def _ack_sequence(reply: bytes) -> int | None:
    """The stream sequence in a JetStream ack subject (as ``pulls.stream_sequence``), or
    None for a subject of another shape."""
    tokens = reply.split(b".")
    if len(tokens) == _V1_TOKENS:
        return int(tokens[5])
    if len(tokens) >= _V2_MIN_TOKENS:
        return int(tokens[7])
    return None


class _Delivery(Msg):
    """A replay delivery: its stream sequence and body, nothing else of a message (built by
    the replay's own parsing, read only by :func:`read_events`)."""

    def __init__(self, seq: int, data: bytes) -> None:  # only these two, no dataclass fields
        self.seq = seq
        self.data = data


class _ReplayPulls(PullLoop):
    """The replay's pull loop, with its deliveries taken straight from nats.py's protocol
    parser: nats.py would match every delivery's control line with its regular expressions,
    parse its headers (a stored event carries its batch headers) into a dict, build a message,
    queue it and call the subscription's callback for it, most of a rebuild's receiving cost.

    A hook on the parser's ``parse`` (removed when the loop stops) first takes every complete
    delivery to this loop's inbox at the head of the buffer (a control line split once, the
    body sliced out, the sequence read from the ack subject), leaves a partial one in the
    buffer for the next read, and lets nats.py's parser carry on from anything else (another
    subscription's message, a status message, a ping). The deliveries that nats.py's parser
    does hand over come through the pull loop's direct handler
    (:mod:`voucher_ledger.jetstream.direct`), here taking their sequence from the ack subject.
    Everything else takes nats.py's own path. Should nats.py stop calling either hook, the
    deliveries simply keep arriving through the other or the callback.

    Both hooks are fenced (:mod:`voucher_ledger.jetstream.fastpaths`): with the fast paths off
    or nats.py's parser not as expected, the parser hook is not put on, and the deliveries come
    through the pull loop (its direct handler, or nats.py's callback with ordinary messages).
    A failure inside the parser hook leaves what it had not yet taken to nats.py's parser."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sid: int | None = None
        self._sid_token = b""
        self._parser: Any = None
        self._parse_hook = self._parse
        self._parse_passthrough: Any = None
        self._parse_owned = False
        self._wanted = 0  # bytes the buffer needs before the next delivery can be taken
        self.direct = 0  # deliveries taken by the hooks
        self.parsed = 0  # of which by the parser's

    async def start(self) -> None:
        await super().start()
        nc = self._nc
        self._sid = getattr(self._sub, "_id", None)
        if self._sid is None:
            return
        self._sid_token = str(self._sid).encode()
        if not fastpaths.REPLAY_PARSER.allowed():
            return
        parser: Any = getattr(nc, "_ps", None)
        if isinstance(getattr(parser, "buf", None), bytearray) and hasattr(parser, "state"):
            self._parser = parser
            self._parse_owned = "parse" not in vars(parser)
            self._parse_passthrough = parser.parse
            parser.parse = self._parse_hook

    async def stop(self) -> None:
        self._sid = None  # from now on the hook (if still called) passes everything on
        parser, self._parser = self._parser, None
        if parser is not None and vars(parser).get("parse") is self._parse_hook:
            if self._parse_owned:
                del vars(parser)["parse"]
            else:
                parser.parse = self._parse_passthrough
        await super().stop()

    def _take(self, seq: int, data: bytes) -> None:
        self._buffer.append(_Delivery(seq, data))
        self._open -= 1
        self.direct += 1

    async def _parse(self, data: bytes = b"") -> None:
        parser = self._parser
        if parser is None or self._sid is None:
            await self._parse_passthrough(data)
            return
        buf: bytearray = parser.buf
        buf.extend(data)
        if len(buf) < self._wanted:
            return  # the delivery at the head of the buffer is still incomplete
        self._wanted = 0
        if parser.state == _AWAITING_CONTROL_LINE and buf.startswith(_HMSG):
            view = bytes(buf)  # one copy of the chunk; the bodies are sliced out of it
            pos = 0
            size = len(view)
            taken = self.direct
            wanted = 0  # the buffer ends in the middle of a delivery: its size, or more
            try:
                while view.startswith(_HMSG, pos):
                    end = view.find(_CRLF, pos)
                    if end < 0:
                        wanted = size - pos + 1
                        break
                    # subject, sid, reply, header length, total length
                    args = view[pos + 5 : end].split()
                    if len(args) != 5 or args[1] != self._sid_token:
                        break
                    start = end + 2
                    stop = start + int(args[4])
                    if stop + 2 > size:
                        wanted = stop + 2 - pos
                        break
                    if not view.startswith(_HEADERS, start):
                        break
                    seq = _ack_sequence(args[2])
                    if seq is None:
                        break
                    self._take(seq, view[start + int(args[3]) : stop])
                    pos = stop + 2
            except Exception:  # a bug here must not lose a delivery: nats.py's parser takes over
                log.exception("the replay's parser hook failed; nats.py's parser takes the rest")
                wanted = 0
            if pos:
                del buf[:pos]
                if self.direct > taken:
                    self.parsed += self.direct - taken
                    self._wake()
            if wanted:
                self._wanted = wanted
                return  # the rest of it comes with the next reads
        await self._parse_passthrough(b"")

    def _on_direct(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        if headers is None or headers.startswith(_HEADERS):
            seq = _ack_sequence(reply)
            if seq is not None:
                self._take(seq, data)
                self._wake()
                return True
        return super()._on_direct(subject, reply, data, headers)


_T = TypeVar("_T")


def read_stream(
    nc: Client, spec: StreamsSpec, start_seq: int, *, until_seq: int, batch: int = 1000
) -> AsyncIterator[list[StreamEvent]]:
    """Batches of up to ``batch`` events with ``start_seq <= seq <= until_seq``, in stream
    order, decoded to models (see :func:`read_events`)."""
    return read_events(nc, spec, start_seq, until_seq=until_seq, batch=batch, make=stream_event)


async def read_events(
    nc: Client,
    spec: StreamsSpec,
    start_seq: int,
    *,
    until_seq: int,
    batch: int = 1000,
    make: Callable[[int, bytes], _T],
) -> AsyncIterator[list[_T]]:
    """Batches of up to ``batch`` events with ``start_seq <= seq <= until_seq``, in stream
    order, each made by ``make(seq, body)``. An ephemeral consumer streams them (the server
    keeps a pull of 1,000 open while the caller works on a batch); a delivery carries only its
    own headers and its sequence in the ack subject, where a direct get's answer carries six
    headers nats.py parses one by one (17 % of a rebuild's CPU)."""
    position = max(1, start_seq)
    if position > until_seq:
        return
    name = await _create_reader(nc, spec, position)
    pulls = _ReplayPulls(nc, spec.event_stream, name, batch=1000, expires=5.0)
    await pulls.start()
    try:
        out: list[_T] = []
        while position <= until_seq:
            msgs = await pulls.next(timeout=10.0)
            if not msgs:
                raise RuntimeError(f"the event stream has nothing after seq {position - 1}")
            for msg in msgs:
                seq = msg.seq if isinstance(msg, _Delivery) else stream_sequence(msg)
                if seq > until_seq:
                    position = seq
                    break
                out.append(make(seq, msg.data))
                position = seq + 1
                if len(out) >= batch:
                    yield out
                    out = []
            # Let a concurrent consumer (rebuild's prefetch) get on with its batch in between.
            await asyncio.sleep(0)
        if out:
            yield out
    finally:
        with contextlib.suppress(Exception):
            await pulls.stop()
        with contextlib.suppress(Exception):
            await js_api(nc, f"CONSUMER.DELETE.{spec.event_stream}.{name}")
