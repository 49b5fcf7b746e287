"""Audit subscribers: read every change of the event stream, in order, as typed records.

:class:`AuditSubscriber` is the reference subscriber behind ``voucher-ledger audit tail``::

    async with AuditSubscriber(nc, "ledger", durable="billing-export") as sub:
        async for record in sub:
            print(record.seq, record.envelope.event.type)

* It binds an explicit-ack pull consumer on the event stream (``<PREFIX>_EVENTS``), filtered on
  ``<prefix>.events.>`` unless told otherwise, and yields :class:`AuditRecord` s: the stream
  sequence and the envelope decoded by :func:`~voucher_ledger.ledger.events.decode_envelope`
  (old event versions are upcast on the way).
* A record is acknowledged once the subscriber's code has taken it: when it asks for the next
  record, or when the ``async with`` block ends without an exception. Records filtered out by
  ``types`` are acknowledged as they are skipped.
* A ``durable`` subscriber keeps its position in its own JetStream consumer,
  ``<PREFIX>_AUDIT_<durable>``. Started again with the same name, it continues right after the
  last acknowledged record: no gap, no duplicate after a clean stop; after a crash, the record
  that was being processed comes again (at least once). Delivered but unacknowledged records
  (a fetched batch, a crash) are rewound to the consumer's ack floor at start, so the order is
  kept. One process per durable name. ``from_seq`` / ``since`` only apply when the durable is
  first created.
* Without a durable, the consumer is ephemeral: deleted on close, and by the server after five
  minutes without a client.
* With ``public_key`` (the ledger's published signing key: ``voucher-ledger signing-key``),
  every record is checked before it is handed over (``voucher_ledger.signing``): its signature,
  its place in its aggregate's chain, and the cut-over recorded on the stream. The first that
  fails raises :class:`TamperedEvent` naming its sequence and is not acknowledged. The key is
  all it needs: no secret, no write access (the read-only subscriber credentials suffice).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import nats.errors
import nats.js.errors
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from voucher_ledger.jetstream.layout import PREFIX_PATTERN, Layout, account_token
from voucher_ledger.ledger.codes import CODE_PATTERN
from voucher_ledger.ledger.events import CURRENT_VERSIONS, EventEnvelope, RecordedEvent
from voucher_ledger.ledger.events import decode_envelope as _decode_envelope
from voucher_ledger.signing.chain import Checked, StreamChecker
from voucher_ledger.signing.cutover import CutoverError, reader_checker
from voucher_ledger.signing.proof import IntegrityError

log = logging.getLogger(__name__)

DURABLE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_RESET_SUPPORTED = (2, 14)  # $JS.API.CONSUMER.RESET (ADR-60)
_EPHEMERAL_IDLE = 300.0  # seconds the server keeps an ephemeral consumer without a client
_ACK_CONFIRM_TIMEOUT = 5.0


class AuditSubscriberError(Exception):
    """The subscriber cannot start or continue; the message says why, for a human."""


class UndecodableEvent(AuditSubscriberError):
    """A stored event this build cannot read (corrupt, or a newer type or version).

    It is not acknowledged: a newer build started with the same durable reads it again."""

    def __init__(self, seq: int, subject: str, reason: str) -> None:
        super().__init__(f"event at stream sequence {seq} ({subject}) cannot be read: {reason}")
        self.seq = seq
        self.subject = subject
        self.reason = reason


class TamperedEvent(AuditSubscriberError):
    """A stored event that fails the ledger's signature check (forged, replayed, stripped, or
    signed by another key). Not acknowledged; ``code`` says which check failed."""

    def __init__(self, error: IntegrityError) -> None:
        super().__init__(str(error))
        self.seq = error.seq
        self.code = error.code
        self.reason = error.reason


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One event as a subscriber sees it."""

    seq: int  # stream sequence: the global position in the event stream
    subject: str  # <prefix>.events.<aggregate>.<id>
    envelope: EventEnvelope
    delivered: int = 1  # how many times JetStream has delivered it to this consumer

    @property
    def recorded(self) -> RecordedEvent:
        """The record as the domain folds it (``ledger.voucher.fold``)."""
        return RecordedEvent(seq=self.seq, envelope=self.envelope)


def events_wildcard(prefix: str) -> str:
    return f"{_check_prefix(prefix)}.events.>"


def event_stream_name(prefix: str) -> str:
    return f"{_check_prefix(prefix).upper()}_EVENTS"


def voucher_subject(prefix: str, code: str) -> str:
    """``<prefix>.events.voucher.<CODE>`` for a normalised code."""
    if not CODE_PATTERN.fullmatch(code):
        raise ValueError(f"invalid voucher code {code!r}: normalise it first (A-Z, 0-9, _ and -)")
    return f"{_check_prefix(prefix)}.events.voucher.{code}"


def wallet_account_token(customer_id: str) -> str:
    """A customer id as a subject token: base64url (RFC 4648 section 5) without padding."""
    return account_token(customer_id)


def wallet_subject(prefix: str, customer_id: str) -> str:
    """``<prefix>.events.wallet.<ACCOUNT>``, ACCOUNT = :func:`wallet_account_token`."""
    return f"{_check_prefix(prefix)}.events.wallet.{wallet_account_token(customer_id)}"


def known_event_types() -> list[str]:
    return sorted(CURRENT_VERSIONS)


def _check_prefix(prefix: str) -> str:
    if not PREFIX_PATTERN.fullmatch(prefix):
        raise ValueError(f"invalid subject prefix {prefix!r}: lower-case [a-z0-9_]")
    return prefix


def _filters(prefix: str, filter_subject: str | Sequence[str] | None) -> list[str]:
    if filter_subject is None:
        return [events_wildcard(prefix)]
    subjects = [filter_subject] if isinstance(filter_subject, str) else list(filter_subject)
    if not subjects:
        return [events_wildcard(prefix)]
    root = f"{prefix}.events."
    for subject in subjects:
        tokens = subject.split(".")
        if (
            not subject.startswith(root)
            or len(subject) == len(root)
            or any(not t or " " in t for t in tokens)
            or any(">" in t and t != ">" for t in tokens)
            or ">" in tokens[:-1]
        ):
            raise ValueError(f"filter subject {subject!r} is not a subject under {root}")
    return sorted(set(subjects))


def _configured_filters(config: ConsumerConfig) -> list[str]:
    if config.filter_subjects:
        return sorted(config.filter_subjects)
    return [config.filter_subject] if config.filter_subject else []


class AuditSubscriber:
    """An async iterator of :class:`AuditRecord` over the event stream, in stream order.

    ``follow=False`` stops at the stream's head as it was at start (the last record at or below
    it), instead of waiting for new events; :meth:`stop` ends a following iteration from a
    signal handler or another task.
    """

    def __init__(
        self,
        nc: Client,
        prefix: str,
        *,
        durable: str | None = None,
        from_seq: int | None = None,
        since: datetime | None = None,
        filter_subject: str | Sequence[str] | None = None,
        types: Iterable[str] | None = None,
        follow: bool = True,
        stream: str | None = None,
        batch: int = 256,
        fetch_timeout: float = 1.0,
        public_key: Ed25519PublicKey | None = None,
    ) -> None:
        if from_seq is not None and since is not None:
            raise ValueError("give from_seq or since, not both")
        if from_seq is not None and from_seq < 1:
            raise ValueError("from_seq must be at least 1")
        if since is not None and since.tzinfo is None:
            raise ValueError("since must be timezone-aware (e.g. 2026-01-31T12:00:00Z)")
        if durable is not None and not DURABLE_PATTERN.fullmatch(durable):
            raise ValueError("durable name: 1 to 64 characters from A-Z, a-z, 0-9, _ and -")
        if not 1 <= batch <= 10_000:
            raise ValueError("batch must be between 1 and 10000")
        if fetch_timeout <= 0:
            raise ValueError("fetch_timeout must be positive")
        self._types: frozenset[str] | None = None
        if types is not None:
            wanted = frozenset(types)
            unknown = sorted(wanted - CURRENT_VERSIONS.keys())
            if unknown:
                raise ValueError(
                    f"unknown event type(s) {', '.join(unknown)}; "
                    f"known: {', '.join(known_event_types())}"
                )
            self._types = wanted
        self._nc = nc
        self._js = nc.jetstream()
        self.prefix = _check_prefix(prefix)
        self.stream = stream or event_stream_name(prefix)
        self.filters = _filters(prefix, filter_subject)
        self.durable = durable
        upper = prefix.upper()
        self.consumer_name = (
            f"{upper}_AUDIT_{durable}" if durable else f"{upper}_AUDIT_EPH_{uuid.uuid4().hex}"
        )
        self._from_seq = from_seq
        self._since = since
        self._follow = follow
        self._batch = batch
        self._fetch_timeout = fetch_timeout
        self.head: int | None = None  # stream head at start (follow=False stops there)
        self.resumed = False  # an existing durable was continued
        self._psub: Any = None
        self._buffer: list[Msg] = []
        self._held: Msg | None = None  # taken by the caller, not yet acknowledged
        self._last_acked_seq = 0
        self._stopped = False
        self._done = False
        self._started = False
        self._closed = False
        self.use_reset: bool | None = None  # None: decide from the server version
        self._public_key = public_key
        self._checker: StreamChecker | None = None
        self.checked = 0  # records whose proof was checked

    # ------------------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> AuditSubscriber:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close(ack_taken=exc_type is None)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            await self._start()
        except nats.errors.Error as exc:
            raise AuditSubscriberError(f"cannot subscribe to {self.stream}: {exc}") from exc

    async def _start(self) -> None:
        try:
            stream_info = await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError as exc:
            raise AuditSubscriberError(
                f"event stream {self.stream} not found (is SUBJECT_PREFIX right?)"
            ) from exc
        except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise AuditSubscriberError(
                f"no JetStream answer for stream {self.stream}: is JetStream enabled?"
            ) from exc
        self.head = int(stream_info.state.last_seq)
        info = await self._consumer_info()
        if info is None:
            await self._js.add_consumer(self.stream, self._new_config())
        else:
            if self.durable is None:  # pragma: no cover - random names do not collide
                raise AuditSubscriberError(f"consumer {self.consumer_name} already exists")
            have = _configured_filters(info.config)
            if have != self.filters:
                raise AuditSubscriberError(
                    f"durable {self.durable!r} exists with filter {', '.join(have)}; "
                    f"asked for {', '.join(self.filters)}: use another durable name"
                )
            self.resumed = True
            await self._rewind(info)
        if self._public_key is not None:
            await self._start_checker(info)
        self._psub = await self._js.pull_subscribe_bind(
            consumer=self.consumer_name, stream=self.stream
        )

    async def _start_checker(self, resumed: ConsumerInfo | None) -> None:
        """The checker, knowing where reading starts: from the first sequence every aggregate
        starts at its first event; from anywhere else an aggregate's previous event is looked
        up (direct gets, which the read-only credentials allow)."""
        assert self._public_key is not None
        if resumed is not None:
            floor = resumed.ack_floor.stream_seq if resumed.ack_floor else 0
            start = floor + 1
        elif self._from_seq is not None:
            start = self._from_seq
        elif self._since is not None:
            start = 2  # somewhere in the stream: look up what came before
        else:
            start = 1
        try:
            self._checker = await reader_checker(
                self._nc, self.stream, Layout(self.prefix, 1), self._public_key, start
            )
        except CutoverError as exc:
            raise AuditSubscriberError(str(exc)) from exc

    def _new_config(self) -> ConsumerConfig:
        config = ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
            max_deliver=-1,
            max_ack_pending=max(1000, self._batch * 4),
            description="voucher-ledger audit subscriber",
        )
        if self.durable:
            config.durable_name = self.consumer_name
        else:
            config.name = self.consumer_name
            config.inactive_threshold = _EPHEMERAL_IDLE
        if len(self.filters) == 1:
            config.filter_subject = self.filters[0]
        else:
            config.filter_subjects = list(self.filters)
        if self._from_seq is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = self._from_seq
        elif self._since is not None:
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = self._since
        else:
            config.deliver_policy = DeliverPolicy.ALL
        return config

    async def _consumer_info(self) -> ConsumerInfo | None:
        try:
            info: ConsumerInfo = await self._js.consumer_info(self.stream, self.consumer_name)
            return info
        except nats.js.errors.NotFoundError:
            return None

    async def _rewind(self, info: ConsumerInfo) -> None:
        """Redeliver whatever was delivered but not acknowledged, in order, before anything new.

        A fetched batch that was not consumed (a stop, a crash) would otherwise come back only
        after ``ack_wait``, behind newer records."""
        delivered = info.delivered.stream_seq if info.delivered else 0
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        self._last_acked_seq = floor
        if delivered <= floor and not info.num_ack_pending:
            return
        if self.use_reset is None:
            version = self._nc.connected_server_version
            self.use_reset = (int(version.major), int(version.minor)) >= _RESET_SUPPORTED
        if self.use_reset:
            await self._js.reset_consumer(self.stream, self.consumer_name)
            return
        # nats-server < 2.14: recreate the consumer at its ack floor with the same filter.
        config = info.config
        acked_any = bool(info.ack_floor and info.ack_floor.consumer_seq > 0)
        if acked_any:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = floor + 1
            config.opt_start_time = None
        await self._js.delete_consumer(self.stream, self.consumer_name)
        await self._js.add_consumer(self.stream, config)

    def stop(self) -> None:
        """End the iteration at the next record boundary (safe from a signal handler)."""
        self._stopped = True

    async def close(self, *, ack_taken: bool = True) -> None:
        """Acknowledge the record the caller took (unless ``ack_taken`` is false), wait until the
        server has recorded the acknowledgements, and unbind. An ephemeral consumer is deleted."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._held is not None and ack_taken:
                await self._ack(self._held)
            self._held = None
            if self._psub is not None and self._nc.is_connected:
                await self._confirm_acks()
        finally:
            if self._psub is not None:
                try:
                    await self._psub.unsubscribe()
                except nats.errors.Error:
                    log.debug("unsubscribe of %s failed", self.consumer_name, exc_info=True)
                self._psub = None
            if self.durable is None and self._started and self._nc.is_connected:
                try:
                    await self._js.delete_consumer(self.stream, self.consumer_name)
                except (nats.errors.Error, TimeoutError):
                    log.debug("deleting %s failed", self.consumer_name, exc_info=True)

    async def _confirm_acks(self) -> None:
        """Acks are fire-and-forget; make sure the server applied them before we go."""
        if not self._last_acked_seq:
            return
        await self._nc.flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _ACK_CONFIRM_TIMEOUT
        while True:
            info = await self._consumer_info()
            floor = info.ack_floor.stream_seq if info and info.ack_floor else 0
            if info is None or floor >= self._last_acked_seq:
                return
            if loop.time() > deadline:
                log.warning(
                    "%s: acknowledgements up to %d not confirmed; they may be redelivered",
                    self.consumer_name,
                    self._last_acked_seq,
                )
                return
            await asyncio.sleep(0.01)

    async def _ack(self, msg: Msg) -> None:
        await msg.ack()
        self._last_acked_seq = max(self._last_acked_seq, msg.metadata.sequence.stream)

    # ------------------------------------------------------------------------------ iteration

    def __aiter__(self) -> AuditSubscriber:
        return self

    async def __anext__(self) -> AuditRecord:
        if not self._started:
            await self.start()
        if self._closed:
            raise StopAsyncIteration
        if self._held is not None:  # the caller asks for the next one: it is done with this
            held, self._held = self._held, None
            await self._ack(held)
        while True:
            msg = await self._next_msg()
            if msg is None:
                raise StopAsyncIteration
            record = self._decode(msg)
            if self._checker is not None:
                await self._check(record, msg.data)
            if self._types is not None and record.envelope.event.type not in self._types:
                await self._ack(msg)
                continue
            self._held = msg
            return record

    async def _check(self, record: AuditRecord, raw: bytes) -> None:
        assert self._checker is not None
        env = record.envelope
        try:
            await self._checker.check([Checked(record.seq, raw, env.aggregate, env.aggregate_id)])
        except IntegrityError as exc:
            raise TamperedEvent(exc) from exc
        self.checked += 1

    def _decode(self, msg: Msg) -> AuditRecord:
        meta = msg.metadata
        seq = int(meta.sequence.stream)
        try:
            envelope = _decode_envelope(msg.data)
        except Exception as exc:  # any failure: a record this build cannot read
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UndecodableEvent(seq, msg.subject, reason) from exc
        return AuditRecord(
            seq=seq, subject=msg.subject, envelope=envelope, delivered=int(meta.num_delivered)
        )

    async def _next_msg(self) -> Msg | None:
        while not self._buffer:
            if self._stopped or self._done:
                return None
            if not self._follow and await self._caught_up():
                self._done = True
                return None
            try:
                self._buffer = list(
                    await self._psub.fetch(self._batch, timeout=self._fetch_timeout)
                )
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.js.errors.NotFoundError as exc:
                raise AuditSubscriberError(f"consumer {self.consumer_name} was deleted") from exc
            except nats.errors.ConnectionClosedError as exc:
                raise AuditSubscriberError("the NATS connection was closed") from exc
        if self._stopped:
            return None
        msg = self._buffer[0]
        if not self._follow and self.head is not None and msg.metadata.sequence.stream > self.head:
            # Past the head we started at: leave it (and the rest of the batch) unacked;
            # a durable rewinds to its ack floor when it starts again.
            self._done = True
            self._buffer.clear()
            return None
        self._buffer.pop(0)
        return msg

    async def _caught_up(self) -> bool:
        """follow=False: nothing at or below the starting head is left for this consumer."""
        if self.head is not None and self._last_acked_seq >= self.head:
            return True
        info = await self._consumer_info()
        if info is None:
            raise AuditSubscriberError(f"consumer {self.consumer_name} was deleted")
        # Nothing undelivered; what was delivered and not acked has been handed to us already.
        return not info.num_pending
