"""Checking events in stream order: every aggregate's chain head, and each append's parts.

An append stores, for each aggregate, one *part*: ``n`` consecutive events, the last of which
carries the signature (:mod:`.proof`). An event is the ledger's once the events after it in its
part chain up to a signed last event. :class:`PartChecker` is the core, fed events in order
(whole histories, like a processor's load of an aggregate, or a stream read from its start):
it keeps each aggregate's head, the part being read, and refuses the first event that fails.

:class:`StreamChecker` is what the projector, the rebuild, ``verify`` and the audit subscriber
use over batches of a stream. A batch that ends inside a part is completed by reading the
rest of the part ahead (``fetch``: the part is stored all or none, contiguously), so every
event of a batch is checked when :meth:`StreamChecker.check` returns. A reader that did not
see an aggregate's earlier events (it started mid-stream, or the head fell out of its bounded
memory) looks up the aggregate's previous event once (``lookup``), and the part's events before
its first (``fetch``); one that read everything from the first sequence starts every aggregate
at GENESIS. An event at or below a checked sequence of its aggregate (a redelivery, or one read
ahead) is let through: a stream sequence never changes its content.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from voucher_ledger.signing.proof import GENESIS, EventChecker, IntegrityError, Proof, read_proof

Key = tuple[str, str]  # (aggregate, aggregate id)
# (aggregate, aggregate id, the sequence looked below) -> (its previous event's seq, body)
Lookup = Callable[[str, str, int], Awaitable[tuple[int, bytes] | None]]
# (first seq, last seq) -> the stored bodies of those sequences, in order
Fetch = Callable[[int, int], Awaitable[list[tuple[int, bytes]]]]
LOOKUP_RETRIES = 3  # a replica that is behind may answer an older event: look again
LOOKUP_PAUSE = 0.2


class Checked(NamedTuple):
    """One event to check: its stream sequence, its stored body, its aggregate."""

    seq: int
    raw: bytes
    aggregate: str
    aggregate_id: str


@dataclass
class _Part:
    """The part being read: its aggregate, first sequence and size, where it has got to."""

    key: Key
    first: int
    size: int
    last: int  # the sequence of its last event read so far
    link: str  # that event's link
    where: str

    @property
    def end(self) -> int:
        return self.first + self.size - 1


class PartChecker:
    """Events fed in stream order, each with its aggregate and proof."""

    def __init__(self, checker: EventChecker, capacity: int | None = None) -> None:
        self.checker = checker
        self.heads: OrderedDict[Key, tuple[int, str]] = OrderedDict()
        self.part: _Part | None = None  # a part read up to an event that is not its last
        self._capacity = capacity
        self.evicted = False  # a head was dropped (the capacity): it must be looked up again

    def head(self, key: Key) -> tuple[int, str]:
        """The aggregate's last checked event: its sequence and link (0 and GENESIS: none)."""
        return self.heads.get(key, (0, GENESIS))

    def put(self, key: Key, seq: int, link: str, *, touch: bool = True) -> None:
        self.heads[key] = (seq, link)
        if touch:
            self.heads.move_to_end(key)
        capacity = self._capacity
        if capacity is not None and len(self.heads) > capacity:
            while len(self.heads) > capacity:
                self.heads.popitem(last=False)
            self.evicted = True

    def seen(self, key: Key, seq: int) -> bool:
        """The event was checked already (a redelivery, or read ahead)."""
        part = self.part
        if part is not None and part.key == key and seq <= part.last:
            return True
        return seq <= self.head(key)[0]

    def feed(self, seq: int, key: Key, proof: Proof | None, where: str = "") -> None:
        """Check one event (raises :class:`IntegrityError`); its aggregate's head moves on once
        its part's signed last event is checked."""
        part = self.part
        if proof is None:
            if part is not None:
                self._unfinished(part, seq)
            self.checker.unsigned(seq, where)
            return
        if part is None:
            if proof.position != 0:
                raise IntegrityError(
                    seq,
                    "broken_append",
                    f"it is event {proof.position} of {proof.size} of its aggregate's append, "
                    "and the ones before it are not there",
                    where,
                )
            if proof.prev != self.head(key)[1]:
                if proof.last and proof.signature is not None:
                    # A part of one event: a forged one says so (bad_signature) before its
                    # place does; a verbatim replay passes this and breaks the chain below.
                    self.checker.check_signature(seq, proof.signature, proof.link, where)
                raise IntegrityError(
                    seq,
                    "broken_chain",
                    "it does not follow its aggregate's previous event (a replayed, dropped or "
                    "reordered event)",
                    where,
                )
        elif (
            key != part.key
            or seq != part.last + 1
            or proof.size != part.size
            or proof.position != seq - part.first
            or proof.prev != part.link
        ):
            self._unfinished(part, seq)
        link = proof.link
        if proof.last:
            if proof.signature is None:
                raise IntegrityError(
                    seq, "unsigned", "the last event of its append carries no signature", where
                )
            self.checker.check_signature(seq, proof.signature, link, where)
            self.part = None
            self.put(key, seq, link)
            return
        if proof.signature is not None:
            raise IntegrityError(
                seq, "bad_signature", "a signature on an event that is not its append's last", where
            )
        if part is None:
            self.part = _Part(key, seq, proof.size, seq, link, where)
        else:
            part.last, part.link = seq, link

    def finish(self) -> None:
        """The end of a whole history: no part may be left without its signed last event."""
        if self.part is not None:
            self._unfinished(self.part, 0)

    @staticmethod
    def _unfinished(part: _Part, seq: int) -> None:
        after = f" (stream sequence {seq} does not continue it)" if seq else ""
        raise IntegrityError(
            part.first,
            "broken_append",
            f"its append's events do not reach a signed last event{after}",
            part.where,
        )


class StreamChecker:
    def __init__(
        self,
        checker: EventChecker,
        *,
        lookup: Lookup | None = None,
        fetch: Fetch | None = None,
        start_seq: int = 1,
        capacity: int | None = None,
    ) -> None:
        """``start_seq``: the first sequence this reader reads (from 1, every aggregate it meets
        starts at GENESIS); ``capacity``: at most this many heads kept (None: all). Without
        ``fetch``, a batch that ends inside a part leaves it open: its events are checked only
        once a later batch brings the part's last event (:attr:`pending`)."""
        self.checker = checker
        self.core = PartChecker(checker, capacity)
        self._lookup = lookup
        self._fetch = fetch
        self._complete = start_seq <= 1

    @property
    def pending(self) -> int | None:
        """The first sequence not fully checked yet (a part without its last event), or None."""
        part = self.core.part
        return part.first if part is not None else None

    async def check(self, events: Sequence[Checked]) -> None:
        """Check ``events`` (in stream order); raises :class:`IntegrityError` at the first that
        fails, the heads moved past the ones before it."""
        parsed = [(event, read_proof(event.raw)) for event in events]
        await self._prime(parsed)
        core = self.core
        for event, proof in parsed:
            key = (event.aggregate, event.aggregate_id)
            if core.seen(key, event.seq):
                continue
            where = f"{event.aggregate} {event.aggregate_id}"
            if core.part is None and proof is not None and proof.position > 0:
                await self._behind(event, proof)  # a part begun before this reader's start
            try:
                core.feed(event.seq, key, proof, where)
            except IntegrityError as exc:
                if exc.code != "broken_chain" or not self._looked_up():
                    raise
                await self._again(event, proof, where)
        if core.part is not None and self._fetch is not None:
            await self._ahead(core.part)

    def _looked_up(self) -> bool:
        return self._lookup is not None and not (self._complete and not self.core.evicted)

    async def _again(self, event: Checked, proof: Proof | None, where: str) -> None:
        """A chain that breaks right after a looked-up head: the replica may have been behind;
        look again a few times before calling it broken."""
        assert self._lookup is not None
        key = (event.aggregate, event.aggregate_id)
        error: IntegrityError | None = None
        for _ in range(LOOKUP_RETRIES):
            await asyncio.sleep(LOOKUP_PAUSE)
            below = event.seq - (proof.position if proof is not None else 0)
            seq, head = await self._head_below(event.aggregate, event.aggregate_id, below)
            self.core.put(key, seq, head)
            try:
                self.core.feed(event.seq, key, proof, where)
                return
            except IntegrityError as exc:
                error = exc
                if exc.code != "broken_chain":
                    break
        assert error is not None
        raise error

    async def _prime(self, parsed: Sequence[tuple[Checked, Proof | None]]) -> None:
        """Look up (concurrently) the heads of the aggregates not known yet: below the start of
        the part of the first event met of each."""
        if self._lookup is None or (self._complete and not self.core.evicted):
            return
        first: dict[Key, int] = {}
        for event, proof in parsed:
            key = (event.aggregate, event.aggregate_id)
            if key not in self.core.heads and key not in first:
                first[key] = event.seq - (proof.position if proof is not None else 0)
        if not first:
            return
        heads = await asyncio.gather(*(self._head_below(k[0], k[1], s) for k, s in first.items()))
        for key, (seq, head) in zip(first, heads, strict=True):
            self.core.put(key, seq, head, touch=False)

    async def _head_below(self, aggregate: str, aggregate_id: str, seq: int) -> tuple[int, str]:
        """The aggregate's event just below ``seq``: its sequence and link (its place was
        checked by whoever read it; its proof is read as it is)."""
        assert self._lookup is not None
        found = await self._lookup(aggregate, aggregate_id, seq)
        if found is None:
            return 0, GENESIS
        prev_seq, body = found
        proof = read_proof(body)
        if proof is None:
            self.checker.unsigned(prev_seq, f"{aggregate} {aggregate_id}")
            return prev_seq, GENESIS
        return prev_seq, proof.link

    async def _behind(self, event: Checked, proof: Proof) -> None:
        """The first event read of a part is not its first: a reader that started inside the
        part reads the part's earlier events (stored before its start) and checks them first.
        Events there that are not the part's say the event is out of place (refused at it)."""
        if self._fetch is None or (self._complete and not self.core.evicted):
            return  # everything before it was read: the core refuses it
        key = (event.aggregate, event.aggregate_id)
        where = f"{event.aggregate} {event.aggregate_id}"
        start = event.seq - proof.position
        earlier = []
        for seq, raw in await self._fetch(start, event.seq - 1):
            mate_key, mate = _parse(raw)
            if (
                mate_key != key
                or mate is None
                or mate.size != proof.size
                or mate.position != seq - start
            ):
                break
            earlier.append((seq, mate))
        if len(earlier) != proof.position:
            raise IntegrityError(
                event.seq,
                "broken_append",
                "the events before it are not the rest of its aggregate's append",
                where,
            )
        for seq, mate in earlier:
            self.core.feed(seq, key, mate, where)

    async def _ahead(self, part: _Part) -> None:
        """A batch ended inside a part: read the rest of it (stored with it, all or none) and
        check it, so every event handed over is checked. A replica that is behind may not have
        it yet: look again a few times."""
        assert self._fetch is not None
        for attempt in range(LOOKUP_RETRIES + 1):
            if attempt:
                await asyncio.sleep(LOOKUP_PAUSE)
            for seq, raw in await self._fetch(part.last + 1, part.end):
                if self.core.part is not part or seq <= part.last:
                    continue
                self._feed_raw(seq, raw)
            if self.core.part is not part:
                return
        self.core.finish()

    def _feed_raw(self, seq: int, raw: bytes) -> None:
        key, proof = _parse(raw)
        self.core.feed(seq, key, proof, f"{key[0]} {key[1]}")


def _parse(raw: bytes) -> tuple[Key, Proof | None]:
    """A stored event's aggregate and proof (read ahead or behind, outside the caller's batch)."""
    try:
        doc = json.loads(raw)
        key = (str(doc["aggregate"]), str(doc["aggregate_id"]))
    except (ValueError, KeyError, TypeError):
        key = ("", "")  # not an event of any aggregate: it cannot continue a part
    return key, read_proof(raw)
