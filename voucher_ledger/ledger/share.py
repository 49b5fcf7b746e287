"""Global vouchers: shares of one cap allotted to Sovereigns (issue #22, deliverable 2).

Pure domain, like ``voucher.py``: state, ``decide`` and ``evolve``, no I/O. NOT wired yet: no
processor routes these commands and their events are not on any stream (README "Hub and
Sovereigns" says what wiring remains). The module fixes the protocol and its invariant so the
wiring cannot get them wrong.

Two sides, each deciding only about what it owns:

* **The hub** (:class:`HubShares`, one per global code) owns the pool. It allots slots to a
  Sovereign (``ShareAllotted``, refused past the pool), asks a Sovereign to give unused slots
  back (``RecallRequested``), records what a Sovereign released (``ReleaseRecorded``, read from
  the Sovereign's events on the hub's trail) and revokes the code (``GlobalRevoked``).
* **A Sovereign** (:class:`SovereignShare`, one per global code) owns its slots. It receives the
  hub's allotments and recall requests and revocation (as they arrive: late while its link is
  down), redeems locally while ``unused > 0`` (so it keeps redeeming while cut off), and
  answers a recall by releasing ``min(requested, unused)`` (``ShareReleased``): a slot is
  given back only by the one side that could have spent it.

Every figure that crosses a link is cumulative (``allotted_total``, ``requested_total``,
``released_total``), so a message delivered twice, or a later one overtaking an earlier one,
changes nothing: each side keeps the largest it has seen.

Invariant (tested with cut, delayed and re-ordered links in ``tests/unit/test_share.py``)::

    sum over Sovereigns of redeemed <= sum of allotted_total - sum of released_total <= cap

The first inequality holds on each Sovereign (``redeemed + released_total <= received``), the
second at the hub (it counts a release only after the Sovereign made it, and allots only from
``cap - allotted + released``).

Allocation policy (:class:`AllocationPolicy`): at issue, half of the cap is allotted in equal
shares to the known Sovereigns and half stays in the pool; the hub tops a Sovereign up (by its
initial share, or what the pool has) whenever what it knows of that Sovereign's unused slots
falls to a quarter of that share. A Sovereign with no share left while its link is down refuses
a global code with :class:`ShareExhausted` (HTTP 410, reason ``share_exhausted``: "this code's
allowance on this Sovereign is used up for now; try again later"); once the link is back the
top-up arrives and the code redeems again, up to the global cap.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import immutables

from voucher_ledger.ledger.errors import (
    AlreadyRedeemed,
    CapReached,
    DomainError,
    InvalidInput,
    VoucherInactive,
)

# ------------------------------------------------------------------------------------- errors


class ShareExhausted(DomainError):
    """This Sovereign's share of a global voucher is used up (the global cap may not be)."""

    reason = "share_exhausted"

    def __init__(self, code: str, sovereign: str, share: int) -> None:
        super().__init__(
            "this code's allowance on this Sovereign is used up for now; try again later",
            code=code,
            sovereign=sovereign,
            share=share,
        )


class PoolExhausted(DomainError):
    """The hub has no unallotted slot left for the allotment asked."""

    reason = "pool_exhausted"

    def __init__(self, code: str, pool: int, asked: int) -> None:
        super().__init__("the global voucher's pool has too few slots", code=code, pool=pool)
        self.asked = asked


# ------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ShareAllotted:
    code: str
    sovereign: str
    slots: int
    allotted_total: int  # all slots ever allotted to this Sovereign for this code


@dataclass(frozen=True, slots=True)
class RecallRequested:
    code: str
    sovereign: str
    slots: int
    requested_total: int


@dataclass(frozen=True, slots=True)
class ReleaseRecorded:
    """At the hub: the Sovereign's ``released_total`` as read from its events."""

    code: str
    sovereign: str
    released_total: int


@dataclass(frozen=True, slots=True)
class GlobalRevoked:
    code: str


@dataclass(frozen=True, slots=True)
class ShareReceived:
    """On a Sovereign: the hub's cumulative allotment (and recall and revocation) as it arrived."""

    code: str
    allotted_total: int
    requested_total: int
    revoked: bool


@dataclass(frozen=True, slots=True)
class ShareRedeemed:
    code: str
    customer_id: str


@dataclass(frozen=True, slots=True)
class ShareReleased:
    code: str
    slots: int
    released_total: int


HubEvent = ShareAllotted | RecallRequested | ReleaseRecorded | GlobalRevoked
SovereignEvent = ShareReceived | ShareRedeemed | ShareReleased


# -------------------------------------------------------------------------------------- hub


@dataclass(frozen=True, slots=True)
class HubShares:
    code: str
    cap: int
    allotted: immutables.Map[str, int] = field(default_factory=immutables.Map)
    requested: immutables.Map[str, int] = field(default_factory=immutables.Map)
    released: immutables.Map[str, int] = field(default_factory=immutables.Map)
    revoked: bool = False

    @property
    def pool(self) -> int:
        return self.cap - sum(self.allotted.values()) + sum(self.released.values())

    def outstanding(self, sovereign: str) -> int:
        """Slots the hub knows the Sovereign holds (spent or not)."""
        return self.allotted.get(sovereign, 0) - self.released.get(sovereign, 0)


def allot(state: HubShares, sovereign: str, slots: int) -> list[HubEvent]:
    if slots < 1:
        raise InvalidInput("slots", "an allotment is at least one slot")
    if state.revoked:
        raise VoucherInactive(state.code)
    if slots > state.pool:
        raise PoolExhausted(state.code, state.pool, slots)
    total = state.allotted.get(sovereign, 0) + slots
    return [ShareAllotted(state.code, sovereign, slots, total)]


def request_recall(state: HubShares, sovereign: str, slots: int) -> list[HubEvent]:
    if slots < 1:
        raise InvalidInput("slots", "a recall is at least one slot")
    total = state.requested.get(sovereign, 0) + slots
    return [RecallRequested(state.code, sovereign, slots, total)]


def record_release(state: HubShares, sovereign: str, released_total: int) -> list[HubEvent]:
    """What the hub's trail shows the Sovereign released; nothing when already counted."""
    if released_total > state.allotted.get(sovereign, 0):
        raise InvalidInput("released_total", "a Sovereign cannot release more than it was given")
    if released_total <= state.released.get(sovereign, 0):
        return []
    return [ReleaseRecorded(state.code, sovereign, released_total)]


def revoke(state: HubShares) -> list[HubEvent]:
    return [] if state.revoked else [GlobalRevoked(state.code)]


def evolve_hub(state: HubShares, event: HubEvent) -> HubShares:
    match event:
        case ShareAllotted():
            return replace(
                state, allotted=state.allotted.set(event.sovereign, event.allotted_total)
            )
        case RecallRequested():
            return replace(
                state, requested=state.requested.set(event.sovereign, event.requested_total)
            )
        case ReleaseRecorded():
            return replace(
                state, released=state.released.set(event.sovereign, event.released_total)
            )
        case GlobalRevoked():
            return replace(state, revoked=True)


@dataclass(frozen=True, slots=True)
class AllocationPolicy:
    """Half the cap up front in equal shares, the rest topped up by the initial share."""

    sovereigns: tuple[str, ...]

    def initial_share(self, cap: int) -> int:
        if not self.sovereigns:
            return 0
        return max(1, cap // (2 * len(self.sovereigns))) if cap > 0 else 0

    def initial(self, state: HubShares) -> list[tuple[str, int]]:
        share = self.initial_share(state.cap)
        out: list[tuple[str, int]] = []
        pool = state.pool
        for name in self.sovereigns:
            if state.allotted.get(name, 0) == 0 and pool > 0:
                give = min(share, pool)
                pool -= give
                out.append((name, give))
        return out

    def top_ups(self, state: HubShares, redeemed: dict[str, int]) -> list[tuple[str, int]]:
        """Allotments due, given what the hub's trail shows each Sovereign redeemed."""
        if state.revoked:
            return []
        share = self.initial_share(state.cap)
        low = max(1, share // 4)
        pool = state.pool
        out: list[tuple[str, int]] = []
        for name in self.sovereigns:
            unused = state.outstanding(name) - redeemed.get(name, 0)
            if unused <= low and pool > 0:
                give = min(share, pool)
                pool -= give
                out.append((name, give))
        return out


# -------------------------------------------------------------------------------- Sovereign


@dataclass(frozen=True, slots=True)
class SovereignShare:
    code: str
    sovereign: str
    received: int = 0  # the largest allotted_total seen
    requested: int = 0  # the largest requested_total seen
    released: int = 0
    redeemed: int = 0
    revoked: bool = False
    customers: frozenset[str] = frozenset()

    @property
    def unused(self) -> int:
        return self.received - self.redeemed - self.released


def receive(
    state: SovereignShare, allotted_total: int, requested_total: int, revoked: bool
) -> list[SovereignEvent]:
    """The hub's figures as they arrived (possibly late, twice or out of order)."""
    if (
        allotted_total <= state.received
        and requested_total <= state.requested
        and (state.revoked or not revoked)
    ):
        return []
    return [
        ShareReceived(
            state.code,
            max(allotted_total, state.received),
            max(requested_total, state.requested),
            revoked or state.revoked,
        )
    ]


def redeem(state: SovereignShare, customer_id: str) -> list[SovereignEvent]:
    if state.revoked:
        raise VoucherInactive(state.code)
    if customer_id in state.customers:
        raise AlreadyRedeemed(state.code, customer_id)
    if state.unused <= 0:
        if state.received == 0:
            raise CapReached(state.code, 0)
        raise ShareExhausted(state.code, state.sovereign, state.received - state.released)
    return [ShareRedeemed(state.code, customer_id)]


def answer_recall(state: SovereignShare) -> list[SovereignEvent]:
    """Release what the hub asked for and this Sovereign has not spent (all unused slots of
    a revoked code: they can never be spent)."""
    owed = state.requested - state.released
    give = state.unused if state.revoked else min(max(owed, 0), state.unused)
    if give <= 0:
        return []
    return [ShareReleased(state.code, give, state.released + give)]


def evolve_sovereign(state: SovereignShare, event: SovereignEvent) -> SovereignShare:
    match event:
        case ShareReceived():
            return replace(
                state,
                received=event.allotted_total,
                requested=event.requested_total,
                revoked=event.revoked,
            )
        case ShareRedeemed():
            return replace(
                state, redeemed=state.redeemed + 1, customers=state.customers | {event.customer_id}
            )
        case ShareReleased():
            return replace(state, released=event.released_total)
