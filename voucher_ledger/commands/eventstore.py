"""The event store: a JetStream stream, one subject per aggregate.

* ``append`` always carries ``Nats-Expected-Last-Subject-Sequence``. Several events for one
  subject go as one atomic batch (ADR-50, nats-server >= 2.12) whose first message carries the
  expectation; all are stored or none.
* ``load`` reads a subject's history with batched direct gets (ADR-31). Any replica of an R3
  stream answers a direct get, a follower possibly a few messages behind the leader; with
  ``consistent=True`` (the processors) the stream leader is asked for the subject's last
  sequence and any missing tail is read from the leader, so a decision is never taken on a
  stale history. A stream with one replica has no follower to be behind: its only server
  answers the direct get, so the leader request is skipped (the replica count is read from
  the stream's info and looked at again every ``REPLICAS_RECHECK`` seconds, so a stream
  scaled up while the service runs gets the leader request again).
* JetStream's errors are mapped by their code (:func:`voucher_ledger.jetstream.api.parse_api_answer`
  reads every answer): the wrong-sequence codes become :class:`ConcurrencyConflict`, the
  refusals that may pass on a retry :class:`TransientAppendError` (never a conflict), no
  answer :class:`EventStoreUnavailable`; nothing above this module sees ``nats`` error types.

The port it implements, with the error classes and the ``Append`` / ``PartResult`` types, is
:mod:`voucher_ledger.commands.store`; they are re-exported here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voucher_ledger.commands.store import (
    MAX_BATCH,
    Append,
    ConcurrencyConflict,
    CorruptEvent,
    EventStoreError,
    EventStoreUnavailable,
    PartRefusal,
    PartResult,
    TransientAppendError,
)
from voucher_ledger.jetstream.api import JetStreamApiError, js_api, parse_api_answer
from voucher_ledger.ledger.events import (
    EventEnvelope,
    RecordedEvent,
    decode_envelope,
    encode_envelope,
)

__all__ = [
    "ATOMIC_MIN",
    "MAX_BATCH",
    "Append",
    "ConcurrencyConflict",
    "CorruptEvent",
    "EventStoreError",
    "EventStoreUnavailable",
    "JetStreamEventStore",
    "PartRefusal",
    "PartResult",
    "TransientAppendError",
]

# Below this many messages, a group of appends goes as separate publishes, not as one atomic
# batch: on an R1 file stream nats-server 2.15 stages every atomic batch in a temporary file
# store of its own (~3 ms of server CPU and ~6 ms of wall time per batch, measured, against
# ~0.3 ms per plain publish with sync_interval: always).
ATOMIC_MIN = 10
_CONFLICT_CODES = {10071, 10164}  # wrong last sequence (per subject / constant)
# Refusals that stored nothing and may pass on a retry: not ready after a leader change, in
# process, too many; an incomplete atomic batch (e.g. the leader changed mid-batch), too many
# atomic batches in flight.
_TRANSIENT_CODES = {10163, 10158, 10167, 10176, 10210}
_UNAVAILABLE = 503  # the ``code`` (HTTP-like) of a refusal by a server that is not ready
_NO_MESSAGE = 10037  # stream msg get: no message found
REPLICAS_RECHECK = 5.0  # seconds between looks at the event stream's replica count


_PendingGet = tuple[list[Msg], "asyncio.Future[dict[str, str]]"]
_Queued = tuple[Append, "asyncio.Future[PartResult]"]


class JetStreamEventStore:
    def __init__(self, nc: Client, stream: str, *, timeout: float = 5.0) -> None:
        self._nc = nc
        self._stream = stream
        self._timeout = timeout
        self._queue: list[_Queued] = []
        self._flusher: asyncio.Task[None] | None = None
        self._busy = False  # an append is in flight (its caller's or the flusher's)
        self._load_prefix: str | None = None
        self._load_sub: Subscription | None = None
        self._load_tokens = itertools.count(1)
        self._load_waiting: dict[str, _PendingGet] = {}
        # (whether the stream has a single replica, monotonic time it was read)
        self._single_replica: tuple[bool, float] | None = None

    @property
    def stream(self) -> str:
        return self._stream

    async def append(
        self, subject: str, expected_last_seq: int, envelopes: Sequence[EventEnvelope]
    ) -> list[RecordedEvent]:
        """``envelopes`` on ``subject``, all or none, if the subject's last sequence is still
        ``expected_last_seq``."""
        return (await self.append_many([(subject, expected_last_seq, envelopes)]))[0]

    async def append_parts(self, parts: Sequence[Append]) -> list[PartResult]:
        """Each part (one subject's events, with its expected last subject sequence) stored
        all or none, independently of the other parts: its recorded events, or the
        :class:`ConcurrencyConflict` that refused it. Other errors are raised.

        Group commit: the parts of every caller (the partitions' processors) that arrive while
        an append is in flight go together as ONE atomic batch (one fsync, one PubAck), each
        subject's first message with its own expectation; a group of fewer than
        :data:`ATOMIC_MIN` messages goes as plain publishes. If a combined batch is refused
        (the server does not say which subject), its parts are sent again one by one, so each
        learns its own outcome (a :class:`ConcurrencyConflict` or a
        :class:`TransientAppendError`)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[PartResult] | None] = []
        for part in parts:
            if not part[2]:
                futures.append(None)
                continue
            fut: asyncio.Future[PartResult] = loop.create_future()
            self._queue.append((part, fut))
            futures.append(fut)
        if self._queue and not self._busy:
            # Nothing in flight: this caller sends what is queued itself (no task hop); what
            # arrives meanwhile is sent by a flusher task once this flight is over.
            self._busy = True
            group, self._queue = self._queue, []
            try:
                await self._send_chunks(group)
            except BaseException:  # cancelled: the other callers of the group must not hang
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(EventStoreUnavailable("the append was interrupted"))
                raise
            finally:
                if self._queue:
                    self._flusher = asyncio.create_task(self._flush())
                else:
                    self._busy = False
        pending = [fut for fut in futures if fut is not None]
        if not all(fut.done() for fut in pending):
            await asyncio.wait(pending)
        for fut in pending:
            error = fut.exception()  # retrieved for all of them, raised for the first
            if error is not None:
                for other in pending:
                    other.exception()
                raise error
        return [[] if fut is None else fut.result() for fut in futures]

    async def _flush(self) -> None:
        group: list[_Queued] = []
        try:
            while self._queue:
                group, self._queue = self._queue, []
                await self._send_chunks(group)
        except BaseException:  # cancelled (shutting down): no caller is left waiting forever
            for _, fut in group + self._queue:
                if not fut.done():
                    fut.set_exception(EventStoreUnavailable("the append was interrupted"))
            self._queue = []
            raise
        finally:
            self._busy = False
            self._flusher = None

    async def _send_chunks(self, group: list[_Queued]) -> None:
        """``group`` in atomic batches of at most :data:`MAX_BATCH` messages."""
        chunks: list[list[_Queued]] = [[]]
        size = 0
        for queued in group:
            n = len(queued[0][2])
            if size + n > MAX_BATCH and chunks[-1]:
                chunks.append([])
                size = 0
            chunks[-1].append(queued)
            size += n
        if len(chunks) == 1:
            await self._send_group(chunks[0], False)
        else:
            await asyncio.gather(*(self._send_group(chunk, False) for chunk in chunks))

    async def _send_group(self, group: list[_Queued], alone: bool) -> None:
        """One atomic batch for ``group`` (or, if ``alone``, or small and of single events,
        one plain publish per part). A small group with a part of several events goes as one
        batch all the same: that part needs one anyway, and each batch costs the server a
        staging store of its own (see :data:`ATOMIC_MIN`), so one is cheaper than several."""
        small = sum(len(q[0][2]) for q in group) < ATOMIC_MIN
        if len(group) > 1 and (alone or (small and all(len(q[0][2]) == 1 for q in group))):
            await asyncio.gather(*(self._send_group([queued], True) for queued in group))
            return
        try:
            results = await self.append_many([part for part, _ in group])
        except (ConcurrencyConflict, TransientAppendError) as exc:
            if len(group) > 1:  # which part? each alone says
                await self._send_group(group, True)
                return
            _settle(group[0][1], exc)
            return
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the group
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), result in zip(group, results, strict=True):
            _settle(fut, result)

    async def append_many(self, appends: Sequence[Append]) -> list[list[RecordedEvent]]:
        """Several subjects' events as ONE atomic batch (one PubAck, one fsync on the server):
        each subject's first message carries its own ``Nats-Expected-Last-Subject-Sequence``;
        if any of them is wrong nothing is stored and :class:`ConcurrencyConflict` is raised
        (the server's error does not say which subject: ``wrong last sequence: <the subject's
        actual last sequence>``); a refusal that may pass on a retry raises
        :class:`TransientAppendError`. Subjects must be distinct; at most :data:`MAX_BATCH`
        messages in all. Returns the recorded events per entry of ``appends``."""
        messages: list[tuple[str, bytes, str | None]] = []  # subject, payload, expectation
        seen: set[str] = set()
        for subject, expected_last_seq, envelopes in appends:
            if subject in seen:
                raise ValueError(f"{subject} twice in one atomic batch")
            seen.add(subject)
            for i, env in enumerate(envelopes):
                expectation = str(expected_last_seq) if i == 0 else None
                messages.append((subject, encode_envelope(env), expectation))
        if not messages:
            return [[] for _ in appends]
        if len(messages) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} events per append")
        where = messages[0][0] if len(seen) == 1 else f"{len(seen)} subjects"
        try:
            if len(messages) == 1:
                subject, payload, expectation = messages[0]
                headers = {"Nats-Expected-Last-Subject-Sequence": expectation or "0"}
                ack = await self._request(subject, payload, headers)
            else:
                ack = await self._append_batch(messages, where)
        except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise EventStoreUnavailable(f"append to {where} timed out") from exc
        except nats.errors.ConnectionClosedError as exc:
            raise EventStoreUnavailable("NATS connection closed") from exc
        seq = int(ack["seq"]) - len(messages) + 1  # a batch is stored contiguously, in order
        out: list[list[RecordedEvent]] = []
        for _, _, envelopes in appends:
            recorded = []
            for env in envelopes:
                recorded.append(RecordedEvent.model_construct(seq=seq, envelope=env))
                seq += 1
            out.append(recorded)
        return out

    async def _append_batch(
        self, messages: list[tuple[str, bytes, str | None]], where: str
    ) -> dict[str, Any]:
        """One atomic batch (ADR-50). Only the commit is a request: the server answers it with
        the PubAck or with the batch's error (a missing or out-of-order message, atomic publish
        disabled, a wrong expectation), so an early request on the first message would only
        cost a round trip."""
        batch_id = uuid.uuid4().hex
        last_index = len(messages)
        for index, (subject, payload, expectation) in enumerate(messages, start=1):
            headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(index)}
            if expectation is not None:
                headers["Nats-Expected-Last-Subject-Sequence"] = expectation
            if index < last_index:
                await self._nc.publish(subject, payload, headers=headers)
                continue
            headers["Nats-Batch-Commit"] = "1"
            msg = await self._nc.request(subject, payload, timeout=self._timeout, headers=headers)
            ack = self._pub_ack(msg.data, where)
            if int(ack.get("count", last_index)) != last_index:
                raise EventStoreError(f"batch stored {ack.get('count')} of {last_index}")
            return ack
        raise AssertionError("unreachable")

    async def _request(
        self, subject: str, payload: bytes, headers: dict[str, str]
    ) -> dict[str, Any]:
        msg = await self._nc.request(subject, payload, timeout=self._timeout, headers=headers)
        return self._pub_ack(msg.data, subject)

    def _pub_ack(self, data: bytes, subject: str) -> dict[str, Any]:
        """The PubAck in ``data``; a refusal mapped by its code (:func:`append_error`)."""
        try:
            ack = parse_api_answer(data)
        except JetStreamApiError as exc:
            raise append_error(exc, subject) from exc
        if ack.get("stream") != self._stream:
            raise EventStoreError(f"{subject} was stored by stream {ack.get('stream')!r}")
        return ack

    async def load(
        self, subject: str, after_seq: int = 0, page: int = 1000, *, consistent: bool = False
    ) -> list[RecordedEvent]:
        """Every event on ``subject`` with a sequence above ``after_seq``, in order.

        ``consistent``: at least every event the stream leader had stored when the load began
        (a direct get may be answered by a follower that is behind)."""
        leader_last = 0
        if consistent and not await self._is_single_replica():
            leader_last = await self._leader_last_seq(subject)
        out = await self._direct_load(subject, after_seq, page)
        last = out[-1].seq if out else after_seq
        while last < leader_last:
            recorded = await self._leader_get_next(subject, last + 1)
            if recorded is None:
                break
            out.append(recorded)
            last = recorded.seq
        return out

    async def _is_single_replica(self) -> bool:
        """Whether the stream has one replica (so a direct get is answered by its only
        server, never by a follower that is behind). Read from the stream's info at most once
        every ``REPLICAS_RECHECK`` seconds."""
        known = self._single_replica
        now = time.monotonic()
        if known is not None and now - known[1] < REPLICAS_RECHECK:
            return known[0]
        info = await self._stream_info()
        cluster = info.get("cluster") or {}
        single = int(info["config"].get("num_replicas", 1)) == 1 and not cluster.get("replicas")
        self._single_replica = (single, now)
        return single

    async def _stream_info(self) -> dict[str, Any]:
        try:
            return await js_api(self._nc, f"STREAM.INFO.{self._stream}", timeout=self._timeout)
        except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise EventStoreUnavailable(f"stream info of {self._stream}: no answer") from exc
        except nats.errors.ConnectionClosedError as exc:
            raise EventStoreUnavailable("NATS connection closed") from exc
        except JetStreamApiError as exc:
            raise EventStoreError(exc.description) from exc

    async def _leader_api(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """``$JS.API.STREAM.MSG.GET``, answered by the stream leader only: the message, or None
        when there is none."""
        try:
            answer = await js_api(
                self._nc, f"STREAM.MSG.GET.{self._stream}", payload, timeout=self._timeout
            )
        except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise EventStoreUnavailable(f"stream leader of {self._stream} did not answer") from exc
        except nats.errors.ConnectionClosedError as exc:
            raise EventStoreUnavailable("NATS connection closed") from exc
        except JetStreamApiError as exc:
            if exc.err_code == _NO_MESSAGE:
                return None
            if exc.code == _UNAVAILABLE:
                raise EventStoreUnavailable(f"{self._stream}: {exc.description}") from exc
            raise EventStoreError(f"message get on {self._stream}: {exc.description}") from exc
        message: dict[str, Any] = answer["message"]
        return message

    async def _leader_last_seq(self, subject: str) -> int:
        message = await self._leader_api({"last_by_subj": subject})
        return 0 if message is None else int(message["seq"])

    async def _leader_get_next(self, subject: str, start: int) -> RecordedEvent | None:
        message = await self._leader_api({"seq": start, "next_by_subj": subject})
        if message is None:
            return None
        seq = int(message["seq"])
        raw = base64.b64decode(message.get("data") or "")
        try:
            envelope = decode_envelope(raw)
        except Exception as exc:
            raise CorruptEvent(f"{subject} seq {seq}: {exc}") from exc
        return RecordedEvent(seq=seq, envelope=envelope, raw=raw)

    async def _direct_load(self, subject: str, after_seq: int, page: int) -> list[RecordedEvent]:
        """Batched direct gets (any replica may answer). Replies come back on one long-lived
        wildcard subscription shared by every load of this store (a token per request): a cache
        miss costs no SUB/UNSUB on the server, whose subscription changes invalidate its
        subject-match cache for every publisher."""
        out: list[RecordedEvent] = []
        start = after_seq + 1
        while True:
            request = {"seq": start, "batch": page, "next_by_subj": subject}
            msgs, end = await self._direct_get(request, subject)
            for msg in msgs:
                seq = int(msg.headers["Nats-Sequence"])  # type: ignore[index]
                try:
                    envelope = decode_envelope(msg.data)
                except Exception as exc:
                    raise CorruptEvent(f"{subject} seq {seq}: {exc}") from exc
                out.append(RecordedEvent.model_construct(seq=seq, envelope=envelope, raw=msg.data))
                start = seq + 1
            if end is None:  # 404: nothing (more) on the subject
                return out
            if not int(end.get("Nats-Num-Pending", "0")):
                return out

    async def _direct_get(
        self, request: dict[str, Any], subject: str
    ) -> tuple[list[Msg], dict[str, str] | None]:
        """One batched direct get: the messages, and the end-of-batch headers (None: 404)."""
        if self._load_prefix is None:
            prefix = f"{self._nc.new_inbox()}."
            self._load_sub = await self._nc.subscribe(f"{prefix}*", cb=self._on_direct_reply)
            self._load_prefix = prefix
        token = str(next(self._load_tokens))
        loop = asyncio.get_running_loop()
        pending: _PendingGet = ([], loop.create_future())
        self._load_waiting[token] = pending
        try:
            await self._nc.publish(
                f"$JS.API.DIRECT.GET.{self._stream}",
                json.dumps(request).encode(),
                reply=self._load_prefix + token,
            )
            try:
                end = await asyncio.wait_for(pending[1], self._timeout)
            except TimeoutError as exc:
                raise EventStoreUnavailable(f"loading {subject} timed out") from exc
        finally:
            self._load_waiting.pop(token, None)
        status = end.get("Status")
        if status == "404":
            return pending[0], None
        if status != "204":
            raise EventStoreError(f"direct get on {subject}: status {status}")
        return pending[0], end

    async def _on_direct_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        pending = self._load_waiting.get(token)
        if pending is None:
            return
        msgs, done = pending
        headers = msg.headers or {}
        if headers.get("Status"):
            if not done.done():
                done.set_result(headers)
        elif not done.done():
            msgs.append(msg)

    async def last_sequence(self) -> int:
        # No answer stays nats.py's error here (the audit CLI tells it apart).
        try:
            info = await js_api(self._nc, f"STREAM.INFO.{self._stream}", timeout=self._timeout)
        except JetStreamApiError as exc:
            raise EventStoreError(exc.description) from exc
        return int(info["state"]["last_seq"])

    async def sleep_backoff(self, attempt: int) -> None:
        await asyncio.sleep(min(0.5, 0.005 * (2**attempt)))

    async def close(self) -> None:
        """Unsubscribe the reply subscription of the direct gets (taken by the first load), if
        any; a load still waiting for its replies fails with :class:`EventStoreUnavailable`.
        A load after ``close`` subscribes again."""
        sub, self._load_sub, self._load_prefix = self._load_sub, None, None
        for _, done in self._load_waiting.values():
            if not done.done():
                done.set_exception(EventStoreUnavailable(f"{self._stream}: the store was closed"))
        if sub is not None:
            # Closed with the connection already, or gone with a drain: nothing left to undo.
            with contextlib.suppress(
                nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError
            ):
                await sub.unsubscribe()


def append_error(exc: JetStreamApiError, subject: str) -> EventStoreError:
    """The event store's error for JetStream's refusal of an append to ``subject``, by code:
    a wrong last sequence is a :class:`ConcurrencyConflict`; a refusal that stored nothing and
    may pass on a retry a :class:`TransientAppendError`; anything else an
    :class:`EventStoreError`."""
    if exc.err_code in _CONFLICT_CODES:
        return ConcurrencyConflict(f"{subject}: {exc.description}")
    if exc.err_code in _TRANSIENT_CODES or exc.code == _UNAVAILABLE:
        return TransientAppendError(f"{subject}: {exc.description}", code=exc.err_code or exc.code)
    return EventStoreError(f"append to {subject} failed: {exc.description} ({exc.err_code})")


def _settle(fut: asyncio.Future[PartResult], result: PartResult) -> None:
    if not fut.done():
        fut.set_result(result)
