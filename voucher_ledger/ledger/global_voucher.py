"""A global voucher at the hub (issue #22): one aggregate per code owns its cap.

The hub never redeems a global code itself: it decides how many of the cap's slots each
Sovereign holds. A Sovereign redeems locally, while cut off too, up to what it received
(``ledger/voucher.py``, ``voucher.share_received``); its events reach the hub's trail by
sourcing, and the hub's allocator reports them here (``ObserveSovereign``). So:

    sum over Sovereigns of redemptions <= sum of allotted - sum of released <= cap

The first inequality holds on each Sovereign (it redeems only slots it received and did not
release); the second here (an allotment comes out of the pool, ``cap - allotted + released``,
and a release is counted only once the Sovereign's own event says it made it).

Allocation policy (:func:`share_of`): at issue, each Sovereign named gets ``share`` slots,
``max(1, cap // (2 * n))`` for n Sovereigns (half the cap; the rest stays in the pool). A
Sovereign *wants* slots once it shows demand down to what the hub knows of its unused slots
(allotted - released - redeemed, from the trail) being at most :func:`low_water` (a quarter of
``share``), and until it is given some. Demand is an observation whose standing redemptions
rose, or whose ``wanted_total`` rose: the Sovereign's demand signal (``voucher.share_wanted``,
recorded by ``WantShare`` when one of its customers was refused for want of slots, once per
exhaustion: at most once between two shares received; the checkout sends it on
``share_exhausted``, and on ``cap_reached`` for a global share used up while the hub's pool was
last seen empty, since the slots may sit unused elsewhere). A Sovereign the hub did not name at
issue wants from its first record of the code on the trail. A Sovereign low only because it
answered a recall does not want: otherwise its own release would be allotted straight back to
it, never to the Sovereign the recall was for; once a customer of it is refused, its signal
makes it want. A signal read while the hub knows of slots on their way to it (unused above the
low-water mark) asks for nothing: they are the answer, and once they arrive the Sovereign may
signal again. Whenever the pool has slots, every wanting Sovereign (those with none left first,
then the observed one) is topped up by ``share`` (or what the pool has), then, while slots
remain, every Sovereign the trail shows low (the lowest first). When someone still wants and
the pool is empty, the hub asks every Sovereign that does not want and has unused slots (by the
trail) to give back half of them, rounded down (its last slot stays: its customers may come),
at most one recall outstanding per Sovereign; when one that wants has none left, the half is
rounded up (the last slot comes back too) and those that want but still hold some are asked as
well. The slots released go to the wanting ones. The want is kept in the state
(``GlobalObserved.wanting``) until it is served, rather than waiting for that Sovereign to ask
again.

So a Sovereign left with no unused slot by a recall, whose customers come only afterwards, gets
slots back: its first refused customer's signal makes it want, and the slots it gave, sitting
unused elsewhere, are recalled for it (``tests/unit/test_global_cap.py``).

Slots never circulate for ever: wants come only from redemptions and demand signals, and
recalls only from wants. A redemption uses a slot (at most ``cap`` of them stand), and a signal
answers a customer refused on that Sovereign, at most one per share it received; a Sovereign
refuses for want of slots only while it holds no unused slot. So every recall answers a
customer who came (one who redeemed, or one who was refused); with no customer coming, the
trail grows only by the answers (releases, shares received), which raise no want, and nothing
moves again. A want that cannot be served now (no slot in the pool, every other Sovereign's
slots used or under a recall not yet answered) asks for nothing more: it stays in the state,
repeated observations of the same ``wanted_total`` are no new demand, and the Sovereign does
not signal again before it receives slots; it is served when a release comes in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import immutables

from voucher_ledger.ledger.commands import (
    GlobalCommandT,
    IssueGlobal,
    ObserveSovereign,
    RecallShare,
    RevokeGlobal,
)
from voucher_ledger.ledger.errors import (
    CommandIdReused,
    DomainError,
    InvalidInput,
    VoucherInactive,
    VoucherNotFound,
)
from voucher_ledger.ledger.events import (
    DiscountTerms,
    Frozen,
    GlobalEventT,
    GlobalIssued,
    GlobalObserved,
    GlobalRecallRequested,
    GlobalRevoked,
    GlobalShareAllotted,
    RecordedEvent,
)
from voucher_ledger.ledger.records import replace
from voucher_ledger.ledger.voucher import Decided, Policy, Refused, Replayed


class GlobalExists(DomainError):
    reason = "already_exists"

    def __init__(self, code: str) -> None:
        super().__init__("a global voucher with this code exists", code=code)


class SovereignShareView(Frozen):
    """One Sovereign's part of a global voucher, as the hub knows it."""

    sovereign: str
    allotted: int  # all slots ever given
    released: int  # all slots it gave back
    redeemed: int  # its standing redemptions, as far as the trail has reached
    requested: int  # all slots the hub asked back
    trail_seq: int  # the hub's trail position these figures were read at
    wanting: bool = False  # waits for slots (the allocation policy)

    @property
    def unused(self) -> int:
        return self.allotted - self.released - self.redeemed


class GlobalView(Frozen):
    code: str
    credit_baisa: int
    description: str
    max_redemptions: int
    revoked: bool
    pool: int  # slots no Sovereign holds
    redeemed: int  # all Sovereigns' standing redemptions known to the hub
    share: int  # the allocation policy's share per Sovereign
    sovereigns: list[SovereignShareView]
    created_at: datetime
    updated_at: datetime
    last_seq: int
    starts_at: datetime | None = None
    expires_at: datetime | None = None
    plans: list[str] | None = None
    min_order_baisa: int = 0
    new_organizations_only: bool = False
    credit_valid_for_seconds: int | None = None
    discount: DiscountTerms | None = None


@dataclass(frozen=True, slots=True)
class Part:
    allotted: int = 0
    released: int = 0
    redeemed: int = 0
    requested: int = 0
    answered: int = 0  # the requested_total the Sovereign has answered
    trail_seq: int = 0
    wanting: bool = False  # waits for slots (``GlobalObserved.wanting``)
    wanted: int = 0  # its latest ``voucher.share_wanted`` (``GlobalObserved.wanted_total``)

    @property
    def unused(self) -> int:
        return self.allotted - self.released - self.redeemed


@dataclass(frozen=True, slots=True)
class GlobalReceipt:
    command_type: str
    fingerprint: str
    seq: int


@dataclass(frozen=True, slots=True)
class GlobalState:
    code: str
    issued: GlobalIssued | None = None
    revoked: bool = False
    parts: immutables.Map[str, Part] = field(default_factory=immutables.Map)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_seq: int = 0
    receipts: immutables.Map[str, GlobalReceipt] = field(default_factory=immutables.Map)

    @property
    def cap(self) -> int:
        return self.issued.max_redemptions if self.issued is not None else 0

    @property
    def pool(self) -> int:
        return self.cap - sum(p.allotted - p.released for p in self.parts.values())

    def part(self, sovereign: str) -> Part:
        return self.parts.get(sovereign, Part())

    def view(self) -> GlobalView:
        d = self.issued
        if d is None or self.created_at is None or self.updated_at is None:
            raise VoucherNotFound(self.code)
        return GlobalView(
            code=self.code,
            credit_baisa=d.credit_baisa,
            description=d.description,
            max_redemptions=d.max_redemptions,
            revoked=self.revoked,
            pool=self.pool,
            redeemed=sum(p.redeemed for p in self.parts.values()),
            share=share_of(d.max_redemptions, len(d.sovereigns)),
            sovereigns=[
                SovereignShareView(
                    sovereign=name,
                    allotted=p.allotted,
                    released=p.released,
                    redeemed=p.redeemed,
                    requested=p.requested,
                    trail_seq=p.trail_seq,
                    wanting=p.wanting,
                )
                for name, p in sorted(self.parts.items())
            ],
            created_at=self.created_at,
            updated_at=self.updated_at,
            last_seq=self.last_seq,
            starts_at=d.starts_at,
            expires_at=d.expires_at,
            plans=d.plans,
            min_order_baisa=d.min_order_baisa,
            new_organizations_only=d.new_organizations_only,
            credit_valid_for_seconds=d.credit_valid_for_seconds,
            discount=d.discount,
        )


def _allot(
    code: str,
    events: list[GlobalEventT],
    parts: immutables.Map[str, Part],
    name: str,
    give: int,
    pool: int,
) -> tuple[int, immutables.Map[str, Part]]:
    """Allot ``give`` slots of the pool to ``name`` (appended to ``events``; it wants no more
    once given some): the pool and the parts after it."""
    part = parts[name]
    pool -= give
    events.append(
        GlobalShareAllotted(
            code=code,
            sovereign=name,
            slots=give,
            allotted_total=part.allotted + give,
            pool=pool,
        )
    )
    return pool, parts.set(name, replace(part, allotted=part.allotted + give, wanting=False))


def share_of(cap: int, sovereigns: int) -> int:
    """The policy's share: half the cap split among the Sovereigns named at issue."""
    return max(1, cap // (2 * max(1, sovereigns)))


def low_water(share: int) -> int:
    return max(1, share // 4)


def initial_state(code: str) -> GlobalState:
    return GlobalState(code=code)


def decide(state: GlobalState, command: GlobalCommandT, policy: Policy) -> list[GlobalEventT]:
    match command:
        case IssueGlobal():
            if state.issued is not None:
                raise GlobalExists(state.code)
            terms = command.terms
            if terms.credit_baisa > policy.max_credit_baisa:
                raise InvalidInput(
                    "credit", f"credit exceeds the maximum of {policy.max_credit_baisa} baisa"
                )
            if (
                terms.starts_at is not None
                and terms.expires_at is not None
                and terms.expires_at <= terms.starts_at
            ):
                raise InvalidInput("expires_at", "expires_at must be after starts_at")
            names = list(dict.fromkeys(command.sovereigns))
            cap = terms.max_redemptions or 0
            issued = GlobalIssued(
                code=state.code,
                credit_baisa=terms.credit_baisa,
                description=terms.description or "",
                max_redemptions=cap,
                sovereigns=names,
                starts_at=terms.starts_at,
                expires_at=terms.expires_at,
                plans=list(dict.fromkeys(terms.plans)) if terms.plans is not None else None,
                min_order_baisa=terms.min_order_baisa or 0,
                new_organizations_only=bool(terms.new_organizations_only),
                credit_valid_for_seconds=terms.credit_valid_for_seconds,
                discount=terms.discount,
            )
            events: list[GlobalEventT] = [issued]
            share, pool = share_of(cap, len(names)), cap
            for name in names:
                give = min(share, pool)
                if give <= 0:
                    break
                pool -= give
                events.append(
                    GlobalShareAllotted(
                        code=state.code, sovereign=name, slots=give, allotted_total=give, pool=pool
                    )
                )
            return events
        case ObserveSovereign():
            if state.issued is None:
                raise VoucherNotFound(state.code)
            part = state.part(command.sovereign)
            if command.trail_seq <= part.trail_seq:
                return []  # already known (a replay of the trail, or a late duplicate)
            if command.released_total > part.allotted:
                raise InvalidInput(
                    "released_total", "a Sovereign cannot release more than it was given"
                )
            released = max(part.released, command.released_total)
            wanted = max(part.wanted, command.wanted_total)
            pool = state.pool + (released - part.released)
            share = share_of(state.cap, len(state.issued.sovereigns))
            unused = part.allotted - released - command.redeemed
            # Demand: it redeemed again, or said it wants slots (a customer of it was refused
            # for want of them: its wanted_total rose), or is heard of for the first time. A
            # Sovereign low only because it answered a recall does not want slots: given back
            # to it, they would never reach the Sovereign the recall was for.
            demand = command.redeemed > part.redeemed or wanted > part.wanted or part.trail_seq == 0
            wanting = not state.revoked and (part.wanting or demand) and unused <= low_water(share)
            observed = GlobalObserved(
                code=state.code,
                sovereign=command.sovereign,
                trail_seq=command.trail_seq,
                redeemed=command.redeemed,
                released_total=released,
                answered_total=max(part.answered, command.answered_total),
                pool=pool,
                wanting=wanting,
                wanted_total=wanted,
            )
            events = [observed]
            if state.revoked:
                return events
            parts = state.parts.set(
                command.sovereign,
                replace(
                    part,
                    redeemed=command.redeemed,
                    released=released,
                    answered=observed.answered_total,
                    wanting=wanting,
                    wanted=wanted,
                ),
            )
            # The Sovereigns waiting for slots, those with none left first, then this one: the
            # pool's slots go to them.
            waiting = sorted(
                (p.unused > 0, name != command.sovereign, name)
                for name, p in parts.items()
                if p.wanting
            )
            for *_, name in waiting:
                if pool <= 0:
                    break
                pool, parts = _allot(state.code, events, parts, name, min(share, pool), pool)
            if pool > 0:
                # Nobody waits any more: the rest to the Sovereigns the trail shows low, the
                # lowest first (one left at nought by a recall redeems no more, so asks no more).
                lows = sorted(
                    (p.unused, name) for name, p in parts.items() if p.unused <= low_water(share)
                )
                for _, name in lows:
                    if pool <= 0:
                        break
                    pool, parts = _allot(state.code, events, parts, name, min(share, pool), pool)
                return events
            if not any(p.wanting for p in parts.values()):
                return events
            # Someone still waits and the pool is empty: every Sovereign that does not want
            # and has unused slots (as far as the trail shows) is asked for half of them,
            # unless a recall to it is still unanswered. Rounded down (a Sovereign keeps its
            # last slot, its customers may come yet), but when one that wants has none left at
            # all, rounded up (the last one comes back too) and those that want but still
            # hold some are asked as well (their customers may be done).
            exhausted = any(p.wanting and p.unused <= 0 for p in parts.values())
            for name, other in sorted(parts.items()):
                spare = other.unused
                if (
                    spare <= 0
                    or (other.wanting and not exhausted)
                    or other.requested > other.answered
                ):
                    continue
                slots = (spare + 1) // 2 if exhausted else spare // 2
                if slots <= 0:
                    continue
                events.append(
                    GlobalRecallRequested(
                        code=state.code,
                        sovereign=name,
                        slots=slots,
                        requested_total=other.requested + slots,
                    )
                )
            return events
        case RecallShare():
            if state.issued is None:
                raise VoucherNotFound(state.code)
            if state.revoked:
                raise VoucherInactive(state.code)
            part = state.part(command.sovereign)
            if part.allotted == 0:
                raise InvalidInput("sovereign", "this Sovereign holds no share of the code")
            return [
                GlobalRecallRequested(
                    code=state.code,
                    sovereign=command.sovereign,
                    slots=command.slots,
                    requested_total=part.requested + command.slots,
                )
            ]
        case RevokeGlobal():
            if state.issued is None:
                raise VoucherNotFound(state.code)
            return [] if state.revoked else [GlobalRevoked(code=state.code)]


Outcome = Replayed[GlobalReceipt] | Decided[GlobalEventT] | Refused


def handle(state: GlobalState, command: GlobalCommandT, command_id: str, policy: Policy) -> Outcome:
    known = state.receipts.get(command_id)
    if known is not None:
        if known.fingerprint != command.fingerprint():
            return Refused(CommandIdReused(command_id))
        return Replayed(known)
    try:
        return Decided(decide(state, command, policy))
    except DomainError as err:
        return Refused(err.with_traceback(None))


_COMMAND_OF_EVENT = {
    "global.issued": "issue_global",
    "global.share_allotted": "observe_sovereign",
    "global.observed": "observe_sovereign",
    "global.recall_requested": "recall_share",
    "global.revoked": "revoke_global",
}


def evolve(state: GlobalState, recorded: RecordedEvent, fingerprint: str = "") -> GlobalState:
    env = recorded.envelope
    event = env.event
    parts = state.parts
    changes: dict[str, object] = {}
    match event:
        case GlobalIssued():
            changes = {"issued": event, "created_at": env.occurred_at}
        case GlobalShareAllotted():
            part = state.part(event.sovereign)
            parts = parts.set(
                event.sovereign, replace(part, allotted=event.allotted_total, wanting=False)
            )
        case GlobalObserved():
            part = state.part(event.sovereign)
            parts = parts.set(
                event.sovereign,
                replace(
                    part,
                    redeemed=event.redeemed,
                    released=event.released_total,
                    answered=event.answered_total,
                    trail_seq=event.trail_seq,
                    wanting=event.wanting,
                    wanted=event.wanted_total,
                ),
            )
        case GlobalRecallRequested():
            part = state.part(event.sovereign)
            parts = parts.set(event.sovereign, replace(part, requested=event.requested_total))
        case GlobalRevoked():
            changes = {"revoked": True}
        case _:
            raise TypeError(f"{event.type} is not a global voucher event")
    if state.issued is None and not isinstance(event, GlobalIssued):
        raise VoucherNotFound(state.code)
    receipt = state.receipts.get(env.command_id)
    if receipt is None or receipt.seq < recorded.seq or recorded.seq == 0:
        receipt = GlobalReceipt(
            command_type=_COMMAND_OF_EVENT[event.type],
            fingerprint=fingerprint or env.command_fingerprint,
            seq=recorded.seq,
        )
    return replace(
        state,
        parts=parts,
        updated_at=env.occurred_at,
        last_seq=recorded.seq,
        receipts=state.receipts.set(env.command_id, receipt),
        **changes,
    )


def fold(code: str, history: list[RecordedEvent]) -> GlobalState:
    state = initial_state(code)
    for recorded in history:
        state = evolve(state, recorded, recorded.envelope.command_fingerprint)
    return state
