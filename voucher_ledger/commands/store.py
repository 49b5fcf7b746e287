"""The event store port: what the processor and the readers need of an event store.

One global stream of events, one subject per aggregate; each event gets the stream's next
sequence. An append carries the subject's last sequence it was decided against and is refused
with :class:`ConcurrencyConflict` if the subject moved since. Two implementations, one contract
suite (``tests/integration/test_event_store_contract.py``):

* :class:`voucher_ledger.commands.eventstore.JetStreamEventStore`, the product's (a JetStream
  stream);
* :class:`voucher_ledger.commands.memory_store.MemoryEventStore`, in memory, deterministic, for
  tests of the processor that hold, fail or refuse an append at will.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from voucher_ledger.ledger.events import EventEnvelope, RecordedEvent

MAX_BATCH = 1000  # at most this many events in one append (JetStream's atomic batch limit)


class EventStoreError(Exception):
    pass


class ConcurrencyConflict(EventStoreError):
    """The subject moved since the state was loaded: reload and decide again."""


class TransientAppendError(EventStoreError):
    """The store refused the append for a passing reason (not ready after a leader change, too
    many requests or batches in flight, a batch cut short): nothing was stored; reload and
    decide again after a backoff. Never a :class:`ConcurrencyConflict`: the subject did not
    move. ``code`` is the store's own error code, when it has one."""

    def __init__(self, message: str, *, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class EventStoreUnavailable(EventStoreError):
    """NATS did not answer in time; the outcome of an append is unknown: reload before retrying."""


class CorruptEvent(EventStoreError):
    pass


# One subject's part of an atomic append: (subject, expected last subject sequence, events).
Append = tuple[str, int, Sequence[EventEnvelope]]
# Why one part was refused (nothing of it stored); other errors are raised for the whole call.
PartRefusal = ConcurrencyConflict | TransientAppendError
# What one subject's append came to: its recorded events, or why it was refused.
PartResult = list[RecordedEvent] | PartRefusal


class EventStore(Protocol):
    """The surface of an event store the processor (``append_parts``, ``load``,
    ``sleep_backoff``), the readers (``load``, ``last_sequence``) and the tools use."""

    @property
    def stream(self) -> str:
        """The name of the stream (JetStream's, or the memory store's label)."""
        ...

    async def append(
        self, subject: str, expected_last_seq: int, envelopes: Sequence[EventEnvelope]
    ) -> list[RecordedEvent]:
        """``envelopes`` on ``subject``, all or none, if the subject's last sequence is still
        ``expected_last_seq``; otherwise :class:`ConcurrencyConflict` (or
        :class:`TransientAppendError`) is raised and nothing is stored."""
        ...

    async def append_parts(self, parts: Sequence[Append]) -> list[PartResult]:
        """Each part stored all or none, independently of the other parts: its recorded events,
        or the :class:`ConcurrencyConflict` / :class:`TransientAppendError` that refused it.
        An empty part stores nothing and comes back as ``[]``. Other errors are raised (the
        outcome of the parts is then unknown)."""
        ...

    async def append_many(self, appends: Sequence[Append]) -> list[list[RecordedEvent]]:
        """All the appends (distinct subjects) as one: stored all together, contiguously and in
        order, or none of them (the refusal is raised). At most :data:`MAX_BATCH` events."""
        ...

    async def load(
        self, subject: str, after_seq: int = 0, page: int = 1000, *, consistent: bool = False
    ) -> list[RecordedEvent]:
        """Every event on ``subject`` with a sequence above ``after_seq``, in order.
        ``consistent``: at least every event stored when the load began."""
        ...

    async def last_sequence(self) -> int:
        """The stream's last sequence (0 when empty)."""
        ...

    async def sleep_backoff(self, attempt: int) -> None:
        """Wait before the ``attempt``-th retry after a refusal."""
        ...

    async def close(self) -> None:
        """Release what the store holds (the JetStream store's reply subscription for loads);
        a load after it takes them again."""
        ...
