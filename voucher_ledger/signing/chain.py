"""Checking a stream of events in order: every aggregate's chain head, kept as it goes.

:class:`StreamChecker` is what the projector, the rebuild, ``verify`` and the audit subscriber
use: events come in stream order (each reader's own), each is checked against its aggregate's
head (:meth:`~voucher_ledger.signing.proof.EventChecker.check_raw`), and the head moves on. A
reader that did not see an aggregate's earlier events (it started mid-stream, or the head fell
out of its bounded memory) looks up the aggregate's previous event in the stream once
(``lookup``); one that read everything from the first sequence starts every aggregate at
GENESIS. An event at or below the head's own sequence was checked already (a redelivery) and
is let through: a stream sequence never changes its content.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

from voucher_ledger.signing.proof import GENESIS, EventChecker, IntegrityError

Key = tuple[str, str]  # (aggregate, aggregate id)
# (aggregate, aggregate id, the sequence looked below) -> (its previous event's seq, body)
Lookup = Callable[[str, str, int], Awaitable[tuple[int, bytes] | None]]
LOOKUP_RETRIES = 3  # a replica that is behind may answer an older event: look again
LOOKUP_PAUSE = 0.2


class Checked(NamedTuple):
    """One event to check: its stream sequence, its stored body, its aggregate."""

    seq: int
    raw: bytes
    aggregate: str
    aggregate_id: str


class StreamChecker:
    def __init__(
        self,
        checker: EventChecker,
        *,
        lookup: Lookup | None = None,
        start_seq: int = 1,
        capacity: int | None = None,
    ) -> None:
        """``start_seq``: the first sequence this reader reads (from 1, every aggregate it meets
        starts at GENESIS); ``capacity``: at most this many heads kept (None: all)."""
        self.checker = checker
        self._lookup = lookup
        self._heads: OrderedDict[Key, tuple[int, str]] = OrderedDict()
        self._complete = start_seq <= 1
        self._capacity = capacity

    async def check(self, events: Sequence[Checked]) -> None:
        """Check ``events`` (in stream order); raises :class:`IntegrityError` at the first that
        fails, the heads moved past the ones before it."""
        await self._prime(events)
        for event in events:
            key = (event.aggregate, event.aggregate_id)
            head_seq, head = self._heads.get(key, (0, GENESIS))
            if event.seq <= head_seq:
                continue
            where = f"{event.aggregate} {event.aggregate_id}"
            try:
                link = self.checker.check_raw(event.seq, event.raw, head, where)
            except IntegrityError as exc:
                if exc.code != "broken_chain" or not self._looked_up(key):
                    raise
                link = await self._again(event, where)
            self._put(key, event.seq, link)

    def _looked_up(self, key: Key) -> bool:
        return self._lookup is not None and not self._complete

    async def _again(self, event: Checked, where: str) -> str:
        """A chain that breaks right after a looked-up head: the replica may have been behind;
        look again a few times before calling it broken."""
        assert self._lookup is not None
        error: IntegrityError | None = None
        for _ in range(LOOKUP_RETRIES):
            await asyncio.sleep(LOOKUP_PAUSE)
            head = await self._head_below(event.aggregate, event.aggregate_id, event.seq)
            try:
                return self.checker.check_raw(event.seq, event.raw, head, where)
            except IntegrityError as exc:
                error = exc
                if exc.code != "broken_chain":
                    break
        assert error is not None
        raise error

    async def _prime(self, events: Sequence[Checked]) -> None:
        """Look up (concurrently) the heads of the aggregates not known yet."""
        if self._complete or self._lookup is None:
            return
        first: dict[Key, int] = {}
        for event in events:
            key = (event.aggregate, event.aggregate_id)
            if key not in self._heads and key not in first:
                first[key] = event.seq
        if not first:
            return
        heads = await asyncio.gather(*(self._head_below(k[0], k[1], s) for k, s in first.items()))
        for (key, seq), head in zip(first.items(), heads, strict=True):
            self._put(key, seq - 1, head, touch=False)

    async def _head_below(self, aggregate: str, aggregate_id: str, seq: int) -> str:
        assert self._lookup is not None
        found = await self._lookup(aggregate, aggregate_id, seq)
        if found is None:
            return GENESIS
        prev_seq, body = found
        return self.checker.link(prev_seq, body, f"{aggregate} {aggregate_id}")

    def _put(self, key: Key, seq: int, link: str, *, touch: bool = True) -> None:
        self._heads[key] = (seq, link)
        if touch:
            self._heads.move_to_end(key)
        capacity = self._capacity
        if capacity is not None and len(self._heads) > capacity:
            while len(self._heads) > capacity:
                self._heads.popitem(last=False)
            if self._lookup is not None:
                self._complete = False  # an evicted aggregate is looked up when it comes back
