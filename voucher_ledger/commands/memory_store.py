"""An event store in memory, with the semantics of the JetStream one (the contract suite,
``tests/integration/test_event_store_contract.py``, runs on both): one global sequence, each
subject's events in order, every append checked against its subject's last sequence, each part
of ``append_parts`` all or none and independent of the others.

Deterministic, for tests of the processor: nothing runs in the background, and a test steers
the appends through the store's own controls, without patching anything:

* :meth:`MemoryEventStore.hold` — the next append waits until the test releases it (an append
  in flight, as long as the test wants);
* :meth:`MemoryEventStore.fail_next` — the next append raises an error (nothing stored: a
  timeout, say);
* :meth:`MemoryEventStore.refuse_next` — the next append of a subject is refused with a
  :class:`ConcurrencyConflict` or :class:`TransientAppendError`;
* :attr:`MemoryEventStore.calls` records every append's parts, :attr:`backoffs` every backoff
  asked for (which returns at once).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from voucher_ledger.commands.store import (
    MAX_BATCH,
    Append,
    ConcurrencyConflict,
    PartRefusal,
    PartResult,
)
from voucher_ledger.ledger.events import EventEnvelope, RecordedEvent

# (subject, expected last subject sequence, number of events) of one part of an append
PartCall = tuple[str, int, int]


class AppendHold:
    """One append held in flight by the test (:meth:`MemoryEventStore.hold`)."""

    def __init__(self) -> None:
        self._reached = asyncio.Event()
        self._released = asyncio.Event()
        self.parts: list[PartCall] = []  # the held append's parts, once it is reached

    async def reached(self) -> None:
        """Until an append is waiting at this hold."""
        await self._reached.wait()

    @property
    def is_reached(self) -> bool:
        return self._reached.is_set()

    def release(self) -> None:
        """Let the held append go on (it is checked and stored then, not when it arrived)."""
        self._released.set()

    async def _wait(self, parts: list[PartCall]) -> None:
        self.parts = parts
        self._reached.set()
        await self._released.wait()


class MemoryEventStore:
    """The event store port (:class:`voucher_ledger.commands.store.EventStore`) in memory."""

    def __init__(self, stream: str = "MEMORY") -> None:
        self._stream = stream
        self._events: list[tuple[str, RecordedEvent]] = []  # in stream order
        self._subjects: dict[str, list[RecordedEvent]] = {}
        self._holds: deque[AppendHold] = deque()
        self._failures: deque[BaseException] = deque()
        self._refusals: dict[str, deque[PartRefusal]] = {}
        self.calls: list[list[PartCall]] = []
        self.backoffs: list[int] = []
        self.closed = False

    @property
    def stream(self) -> str:
        return self._stream

    # ------------------------------------------------------------------------ test controls

    def hold(self) -> AppendHold:
        """The next append not held yet waits at the returned hold until it is released.
        Appends that arrive meanwhile are not held (unless held too)."""
        hold = AppendHold()
        self._holds.append(hold)
        return hold

    def fail_next(self, error: BaseException) -> None:
        """The next append (after its hold, if any) raises ``error``; nothing is stored."""
        self._failures.append(error)

    def refuse_next(self, subject: str, refusal: PartRefusal) -> None:
        """The next append of ``subject`` is refused with ``refusal`` (nothing of it stored):
        ``append_parts`` returns it as the part's result, ``append`` and ``append_many`` raise
        it."""
        self._refusals.setdefault(subject, deque()).append(refusal)

    # ------------------------------------------------------------------------------ the port

    async def append(
        self, subject: str, expected_last_seq: int, envelopes: Sequence[EventEnvelope]
    ) -> list[RecordedEvent]:
        return (await self.append_many([(subject, expected_last_seq, envelopes)]))[0]

    async def append_parts(self, parts: Sequence[Append]) -> list[PartResult]:
        if not any(envelopes for _, _, envelopes in parts):
            return [[] for _ in parts]  # nothing to send, as JetStream's
        await self._enter(parts)
        out: list[PartResult] = []
        for part in parts:
            if not part[2]:
                out.append([])
                continue
            refusal = self._refusal(part)
            if refusal is not None:
                out.append(refusal)
                continue
            out.append(self._store([part])[0])
        return out

    async def append_many(self, appends: Sequence[Append]) -> list[list[RecordedEvent]]:
        seen: set[str] = set()
        for subject, _, _ in appends:
            if subject in seen:
                raise ValueError(f"{subject} twice in one atomic batch")
            seen.add(subject)
        if sum(len(envelopes) for _, _, envelopes in appends) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} events per append")
        if not any(envelopes for _, _, envelopes in appends):
            return [[] for _ in appends]  # nothing to send, as JetStream's
        await self._enter(appends)
        for part in appends:
            if part[2]:
                refusal = self._refusal(part)
                if refusal is not None:
                    raise refusal
        return self._store(appends)

    async def load(
        self, subject: str, after_seq: int = 0, page: int = 1000, *, consistent: bool = False
    ) -> list[RecordedEvent]:
        return [r for r in self._subjects.get(subject, ()) if r.seq > after_seq]

    async def last_sequence(self) -> int:
        return len(self._events)

    async def sleep_backoff(self, attempt: int) -> None:
        self.backoffs.append(attempt)

    async def close(self) -> None:
        self.closed = True

    # ------------------------------------------------------------------------------ internals

    async def _enter(self, parts: Sequence[Append]) -> None:
        """Record the call, wait at its hold (if any), raise an injected failure (if any)."""
        calls = [(subject, expected, len(envelopes)) for subject, expected, envelopes in parts]
        self.calls.append(calls)
        if self._holds:
            await self._holds.popleft()._wait(calls)
        if self._failures:
            raise self._failures.popleft()

    def _refusal(self, part: Append) -> PartRefusal | None:
        """An injected refusal of the part's subject, or a conflict if the subject moved."""
        subject, expected, _ = part
        queued = self._refusals.get(subject)
        if queued:
            return queued.popleft()
        last = self._last_seq(subject)
        if last != expected:
            return ConcurrencyConflict(f"{subject}: wrong last sequence: {last}")
        return None

    def _last_seq(self, subject: str) -> int:
        history = self._subjects.get(subject)
        return history[-1].seq if history else 0

    def _store(self, appends: Sequence[Append]) -> list[list[RecordedEvent]]:
        """Store (checked already): contiguous sequences, in order."""
        out: list[list[RecordedEvent]] = []
        for subject, _, envelopes in appends:
            recorded = []
            for envelope in envelopes:
                rec = RecordedEvent.model_construct(seq=len(self._events) + 1, envelope=envelope)
                self._events.append((subject, rec))
                self._subjects.setdefault(subject, []).append(rec)
                recorded.append(rec)
            out.append(recorded)
        return out
