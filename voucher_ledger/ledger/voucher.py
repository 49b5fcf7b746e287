"""The voucher aggregate: state, ``decide`` and ``evolve`` as plain functions.

``decide(state, command, policy)`` returns the events a command causes or raises a named
:class:`~voucher_ledger.ledger.errors.DomainError`. ``evolve(state, recorded)`` folds one stored
event into the state. ``handle`` adds command-id idempotency on top: a command id seen before
returns its original receipt instead of deciding again.

State maps (redemptions per customer, receipts per command id) are persistent hash maps
(``immutables.Map``), so ``evolve`` returns a new state without copying a hot code's history.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

import immutables

from voucher_ledger.ledger.commands import (
    IssueVoucher,
    ReceiveGlobal,
    RedeemVoucher,
    ReverseRedemption,
    RevokeVoucher,
    WantShare,
)
from voucher_ledger.ledger.errors import (
    AlreadyRedeemed,
    CapReached,
    CommandIdReused,
    DomainError,
    InvalidInput,
    NotEligible,
    RedemptionNotFound,
    ShareExhausted,
    VoucherExpired,
    VoucherInactive,
    VoucherNotFound,
    VoucherNotStarted,
)
from voucher_ledger.ledger.events import (
    DiscountTerms,
    Frozen,
    RecordedEvent,
    RedemptionReversed,
    ShareReceived,
    ShareReleased,
    ShareWanted,
    VoucherIssued,
    VoucherRedeemed,
    VoucherRevoked,
)
from voucher_ledger.ledger.ids import uuid5_text
from voucher_ledger.ledger.records import replace

VoucherCommandT = (
    IssueVoucher | RevokeVoucher | RedeemVoucher | ReverseRedemption | ReceiveGlobal | WantShare
)
VoucherEventT = (
    VoucherIssued
    | VoucherRevoked
    | VoucherRedeemed
    | RedemptionReversed
    | ShareReceived
    | ShareReleased
    | ShareWanted
)

_T = TypeVar("_T")
_REDEMPTION_NS = uuid.UUID("6f1c2a4e-2d3b-4c55-9a57-5f0d3f7b9e11")


@dataclass(frozen=True, slots=True)
class Policy:
    """Limits configured by the operator, passed to the decider."""

    max_credit_baisa: int = 10_000_000  # 10,000 OMR


def window_refusal(
    starts_at: datetime | None, expires_at: datetime | None, now: datetime
) -> str | None:
    """``not_started`` before ``starts_at``, ``expired`` from ``expires_at`` on, else None."""
    if starts_at is not None and now < starts_at:
        return "not_started"
    if expires_at is not None and now >= expires_at:
        return "expired"
    return None


def refusal(
    *,
    active: bool,
    revoked: bool,
    max_redemptions: int,
    times_redeemed: int,
    starts_at: datetime | None,
    expires_at: datetime | None,
    now: datetime,
) -> str | None:
    """Why a live voucher takes no redemption at ``now`` (the preview's 410 ``reason``):
    ``inactive``, ``not_started``, ``expired`` or ``capped``, in that order; None when it
    takes them (eligibility rules aside). A revoked voucher is ``inactive``."""
    if revoked or not active:
        return "inactive"
    window = window_refusal(starts_at, expires_at, now)
    if window is not None:
        return window
    if max_redemptions and times_redeemed >= max_redemptions:
        return "capped"
    return None


class VoucherView(Frozen):
    """The public state of a voucher at one stream position."""

    code: str
    credit_baisa: int
    description: str
    active: bool
    revoked: bool
    max_redemptions: int
    times_redeemed: int
    created_at: datetime
    updated_at: datetime
    last_seq: int
    starts_at: datetime | None = None
    expires_at: datetime | None = None
    plans: list[str] | None = None
    min_order_baisa: int = 0
    new_organizations_only: bool = False
    credit_valid_for_seconds: int | None = None
    discount: DiscountTerms | None = None  # a discount voucher's terms (issue #21)

    def refusal_at(self, now: datetime) -> str | None:
        return refusal(
            active=self.active,
            revoked=self.revoked,
            max_redemptions=self.max_redemptions,
            times_redeemed=self.times_redeemed,
            starts_at=self.starts_at,
            expires_at=self.expires_at,
            now=now,
        )

    def accepting_at(self, now: datetime) -> bool:
        return self.refusal_at(now) is None

    @property
    def accepting_redemptions(self) -> bool:
        """Now (the wall clock); ``accepting_at`` for another moment."""
        return self.accepting_at(datetime.now(UTC))


class RedemptionView(Frozen):
    customer_id: str
    redemption_id: str
    credit_baisa: int
    seq: int
    credit_expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class VoucherFacts:
    """The parts of a voucher that only an issue or a revocation changes: one object shared by
    the state and by every receipt taken while it held (a hot code's 10,000 redemptions keep
    one of these, not 10,000 copies)."""

    code: str
    credit_baisa: int
    description: str
    active: bool
    revoked: bool
    max_redemptions: int
    created_at: datetime
    rules: Rules


@dataclass(frozen=True, slots=True)
class Rules:
    """When a voucher redeems and for whom (``VoucherIssued`` v2): what only an issue changes."""

    starts_at: datetime | None = None
    expires_at: datetime | None = None
    plans: tuple[str, ...] | None = None
    min_order_baisa: int = 0
    new_organizations_only: bool = False
    credit_valid_for_seconds: int | None = None
    discount: DiscountTerms | None = None

    @property
    def plan_list(self) -> list[str] | None:
        return list(self.plans) if self.plans is not None else None


NO_RULES = Rules()


@dataclass(frozen=True, slots=True)
class GlobalShare:
    """On a Sovereign, a global code's share (issue #22): the hub's cumulative figures as
    received, and what this Sovereign released. It redeems while ``received - released`` is
    more than its standing redemptions."""

    received: int = 0
    requested: int = 0  # the largest requested_total seen (each answered once)
    released: int = 0
    pool_empty: bool = False
    hub_seq: int = 0
    wanted: int = 0  # the latest ``voucher.share_wanted``'s ``wanted_total`` (0: none)
    # said so (``voucher.share_wanted``) since the last ``voucher.share_received``
    wanting: bool = False

    def unused(self, times_redeemed: int) -> int:
        return self.received - self.released - times_redeemed


@dataclass(frozen=True, slots=True)
class Receipt:
    """What an accepted command produced; replayed verbatim for a retried command id.

    Compact (it is kept per accepted command in the cached state): the voucher view and the
    redemption view are built when a reply asks for them."""

    command_id: str
    command_type: str
    fingerprint: str
    seq: int
    facts: VoucherFacts
    times_redeemed: int
    updated_at: datetime
    held: Redemption | None = None

    @property
    def voucher(self) -> VoucherView:
        """The voucher as this command left it."""
        f = self.facts
        return VoucherView.model_construct(
            code=f.code,
            credit_baisa=f.credit_baisa,
            description=f.description,
            active=f.active,
            revoked=f.revoked,
            max_redemptions=f.max_redemptions,
            times_redeemed=self.times_redeemed,
            created_at=f.created_at,
            updated_at=self.updated_at,
            last_seq=self.seq,
            starts_at=f.rules.starts_at,
            expires_at=f.rules.expires_at,
            plans=f.rules.plan_list,
            min_order_baisa=f.rules.min_order_baisa,
            new_organizations_only=f.rules.new_organizations_only,
            credit_valid_for_seconds=f.rules.credit_valid_for_seconds,
            discount=f.rules.discount,
        )

    @property
    def redemption(self) -> RedemptionView | None:
        held = self.held
        if held is None:
            return None
        return RedemptionView.model_construct(
            customer_id=held.customer_id,
            redemption_id=held.redemption_id,
            credit_baisa=held.credit_baisa,
            seq=held.seq,
            credit_expires_at=held.credit_expires_at,
        )


@dataclass(frozen=True, slots=True)
class Redemption:
    customer_id: str
    redemption_id: str
    credit_baisa: int
    seq: int
    command_id: str
    user_id: str = ""
    credit_expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class VoucherState:
    code: str
    issued: bool = False
    credit_baisa: int = 0
    description: str = ""
    active: bool = False
    revoked: bool = False
    max_redemptions: int = 0
    times_redeemed: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_seq: int = 0
    redemptions: immutables.Map[str, Redemption] = field(default_factory=immutables.Map)
    # user -> the account it redeemed for (active redemptions): once per user per code
    users: immutables.Map[str, str] = field(default_factory=immutables.Map)
    receipts: immutables.Map[str, Receipt] = field(default_factory=immutables.Map)
    facts: VoucherFacts | None = None  # set by the first issue, renewed by issue and revoke
    rules: Rules = NO_RULES
    share: GlobalShare | None = None  # a global code's share on this Sovereign (issue #22)

    @property
    def live(self) -> bool:
        return self.issued and not self.revoked

    def view(self) -> VoucherView:
        if self.created_at is None or self.updated_at is None:
            raise VoucherNotFound(self.code)
        return VoucherView(
            code=self.code,
            credit_baisa=self.credit_baisa,
            description=self.description,
            active=self.active,
            revoked=self.revoked,
            max_redemptions=self.max_redemptions,
            times_redeemed=self.times_redeemed,
            created_at=self.created_at,
            updated_at=self.updated_at,
            last_seq=self.last_seq,
            starts_at=self.rules.starts_at,
            expires_at=self.rules.expires_at,
            plans=self.rules.plan_list,
            min_order_baisa=self.rules.min_order_baisa,
            new_organizations_only=self.rules.new_organizations_only,
            credit_valid_for_seconds=self.rules.credit_valid_for_seconds,
            discount=self.rules.discount,
        )


def initial_state(code: str) -> VoucherState:
    return VoucherState(code=code)


def redemption_id_for(code: str, customer_id: str, command_id: str) -> str:
    """Deterministic, so deciding twice (after a conflict) yields the same id."""
    return uuid5_text(_REDEMPTION_NS, f"{code}\x00{customer_id}\x00{command_id}")


# ---------------------------------------------------------------------------------------- decide


def decide(
    state: VoucherState,
    command: VoucherCommandT,
    command_id: str,
    policy: Policy,
    now: datetime | None = None,
) -> list[VoucherEventT]:
    """``now``: the moment of the decision (the processor's clock), against which a voucher's
    window is checked; the wall clock when not given."""
    match command:
        case IssueVoucher() | RevokeVoucher() if state.share is not None:
            raise InvalidInput("code", "this is a global voucher: it is managed at the hub")
        case ReceiveGlobal():
            return _receive_global(state, command)
        case WantShare():
            return _want_share(state)
        case IssueVoucher():
            if command.credit_baisa > policy.max_credit_baisa:
                raise InvalidInput(
                    "credit", f"credit exceeds the maximum of {policy.max_credit_baisa} baisa"
                )
            change = "created" if not state.issued else ("restored" if state.revoked else "updated")
            keep = state.issued
            rules = _rules_after(state.rules if keep else NO_RULES, command)
            return [
                VoucherIssued(
                    code=state.code,
                    credit_baisa=command.credit_baisa,
                    description=_pick(command.description, state.description, keep, ""),
                    # A restored code was deactivated by its revocation: default to active.
                    active=_pick(command.active, state.active, change == "updated", True),
                    max_redemptions=_pick(command.max_redemptions, state.max_redemptions, keep, 0),
                    change=change,
                    starts_at=rules.starts_at,
                    expires_at=rules.expires_at,
                    plans=rules.plan_list,
                    min_order_baisa=rules.min_order_baisa,
                    new_organizations_only=rules.new_organizations_only,
                    credit_valid_for_seconds=rules.credit_valid_for_seconds,
                    discount=command.discount,
                )
            ]
        case RevokeVoucher():
            if not state.live:
                raise VoucherNotFound(state.code)
            return [VoucherRevoked(code=state.code)]
        case RedeemVoucher():
            if not state.live:
                raise VoucherNotFound(state.code)
            if not state.active:
                raise VoucherInactive(state.code)
            rules = state.rules
            at = now if now is not None else datetime.now(UTC)
            if rules.starts_at is not None and at < rules.starts_at:
                raise VoucherNotStarted(state.code, rules.starts_at)
            if rules.expires_at is not None and at >= rules.expires_at:
                raise VoucherExpired(state.code, rules.expires_at)
            if state.max_redemptions and state.times_redeemed >= state.max_redemptions:
                raise CapReached(state.code, state.max_redemptions)
            share = state.share
            if share is not None and share.unused(state.times_redeemed) <= 0:
                if share.pool_empty:
                    raise CapReached(
                        state.code, state.max_redemptions, share=share.received - share.released
                    )
                raise ShareExhausted(state.code, share.received - share.released)
            if command.customer_id in state.redemptions:
                raise AlreadyRedeemed(state.code, command.customer_id)
            user = command.user
            if user in state.users:
                raise AlreadyRedeemed(state.code, command.customer_id, user)
            _check_eligible(state.code, rules, command)
            valid_for = rules.credit_valid_for_seconds
            return [
                VoucherRedeemed(
                    code=state.code,
                    customer_id=command.customer_id,
                    redemption_id=redemption_id_for(state.code, command.customer_id, command_id),
                    credit_baisa=state.credit_baisa,
                    user_id=user,
                    credit_expires_at=at + timedelta(seconds=valid_for) if valid_for else None,
                    order=command.order,
                )
            ]
        case ReverseRedemption():
            held = state.redemptions.get(command.customer_id)
            if held is None or (
                command.redemption_id is not None and command.redemption_id != held.redemption_id
            ):
                raise RedemptionNotFound(state.code, command.customer_id)
            return [
                RedemptionReversed(
                    code=state.code,
                    customer_id=command.customer_id,
                    redemption_id=held.redemption_id,
                    reason=command.reason,
                )
            ]


def _receive_global(state: VoucherState, command: ReceiveGlobal) -> list[VoucherEventT]:
    """The hub's figures for this Sovereign's share, as they arrived: record what is new,
    answer a new recall with what is unused, and give every unused slot back once revoked."""
    if state.issued and state.share is None:
        raise InvalidInput(
            "code", "a voucher of this Sovereign has this code: the global one is not taken here"
        )
    d = command.definition
    events: list[VoucherEventT] = []
    if not state.issued:
        events.append(
            VoucherIssued(
                code=state.code,
                credit_baisa=d.credit_baisa,
                description=d.description,
                active=True,
                max_redemptions=d.max_redemptions,
                change="created",
                starts_at=d.starts_at,
                expires_at=d.expires_at,
                plans=d.plans,
                min_order_baisa=d.min_order_baisa,
                new_organizations_only=d.new_organizations_only,
                credit_valid_for_seconds=d.credit_valid_for_seconds,
                discount=d.discount,
            )
        )
    share = state.share or GlobalShare()
    if command.hub_seq <= share.hub_seq and state.share is not None:
        return events  # older than what is recorded
    received = max(share.received, command.allotted_total)
    requested = max(share.requested, command.requested_total)
    if state.share is None or (received, requested, command.pool_empty) != (
        share.received,
        share.requested,
        share.pool_empty,
    ):
        events.append(
            ShareReceived(
                code=state.code,
                allotted_total=received,
                requested_total=requested,
                pool_empty=command.pool_empty,
                hub_seq=command.hub_seq,
            )
        )
    revoked = state.revoked or command.revoked
    if command.revoked and not state.revoked:
        events.append(VoucherRevoked(code=state.code))
    unused = max(0, received - share.released - state.times_redeemed)
    give = unused if revoked else min(requested - share.requested, unused)
    if requested > share.requested or give > 0:
        events.append(
            ShareReleased(
                code=state.code,
                slots=give,
                released_total=share.released + give,
                answered_total=requested,
            )
        )
    return events


def _want_share(state: VoucherState) -> list[VoucherEventT]:
    """A customer was refused for want of slots: say so to the hub, once per exhaustion (only
    while the share is used up, the code not revoked, and not said since the last share
    received); else nothing."""
    share = state.share
    if share is None:
        if not state.issued:
            raise VoucherNotFound(state.code)
        raise InvalidInput("code", "this is not a global voucher: it has no share to want")
    if state.revoked or share.wanting or share.unused(state.times_redeemed) > 0:
        return []
    return [ShareWanted(code=state.code, wanted_total=share.wanted + 1)]


def _rules_after(current: Rules, command: IssueVoucher) -> Rules:
    """The window and eligibility after an issue: a field given replaces, one named in
    ``clear`` goes back to none, one left out keeps ``current`` (NO_RULES on a create)."""
    cleared = set(command.clear)

    def pick(name: str, given: _T | None, now: _T, none: _T) -> _T:
        if name in cleared:
            return none
        return given if given is not None else now

    rules = Rules(
        starts_at=pick("starts_at", command.starts_at, current.starts_at, None),
        expires_at=pick("expires_at", command.expires_at, current.expires_at, None),
        plans=pick(
            "plans",
            tuple(dict.fromkeys(command.plans)) if command.plans is not None else None,
            current.plans,
            None,
        ),
        min_order_baisa=pick(
            "min_order_baisa", command.min_order_baisa, current.min_order_baisa, 0
        ),
        new_organizations_only=pick(
            "new_organizations_only",
            command.new_organizations_only,
            current.new_organizations_only,
            False,
        ),
        credit_valid_for_seconds=pick(
            "credit_valid_for_seconds",
            command.credit_valid_for_seconds,
            current.credit_valid_for_seconds,
            None,
        ),
    )
    if (
        rules.starts_at is not None
        and rules.expires_at is not None
        and rules.expires_at <= rules.starts_at
    ):
        raise InvalidInput("expires_at", "expires_at must be after starts_at")
    return rules


def _check_eligible(code: str, rules: Rules, command: RedeemVoucher) -> None:
    if rules.plans is not None and command.plan_id not in rules.plans:
        raise NotEligible(
            code, "plans", f"this code is only for the plans {', '.join(rules.plans)}"
        )
    if rules.min_order_baisa and (
        command.order_total_baisa is None or command.order_total_baisa < rules.min_order_baisa
    ):
        raise NotEligible(
            code,
            "min_order_omr",
            f"this code needs an order of at least {_omr_text(rules.min_order_baisa)} OMR",
        )
    # A checkout's redemption (it carries its order) may leave this rule to the wallet, which
    # places the order next and knows whether the Organization completed one (first_order_only).
    deferred = command.order is not None and command.new_organization is None
    if rules.new_organizations_only and command.new_organization is not True and not deferred:
        raise NotEligible(
            code,
            "new_organizations_only",
            "this code is only for an Organization's first order",
        )


def check_eligible(code: str, rules: Rules, command: RedeemVoucher) -> None:
    """Refuse (``NotEligible``) a redemption that does not meet ``rules`` (a campaign's codes
    share the single vouchers' rules)."""
    _check_eligible(code, rules, command)


def _omr_text(baisa: int) -> str:
    whole, rest = divmod(baisa, 1000)
    return f"{whole}.{rest:03d}" if rest else str(whole)


def _pick(given: _T | None, current: _T, keep_current: bool, default: _T) -> _T:
    if given is not None:
        return given
    return current if keep_current else default


_R = TypeVar("_R")
_E = TypeVar("_E")


@dataclass(frozen=True, slots=True)
class Replayed(Generic[_R]):
    receipt: _R


@dataclass(frozen=True, slots=True)
class Decided(Generic[_E]):
    events: list[_E]


@dataclass(frozen=True, slots=True)
class Refused:
    error: DomainError


Outcome = Replayed[Receipt] | Decided[VoucherEventT] | Refused


def handle(
    state: VoucherState,
    command: VoucherCommandT,
    command_id: str,
    policy: Policy,
    now: datetime | None = None,
) -> Outcome:
    """Idempotent decide: a known command id replays its receipt; a reused one is refused."""
    known = state.receipts.get(command_id)
    if known is not None:
        if known.fingerprint != command.fingerprint():
            return Refused(CommandIdReused(command_id))
        return Replayed(known)
    try:
        return Decided(decide(state, command, command_id, policy, now))
    except DomainError as err:
        # Without its traceback: the frames it holds (the processor's, through f_back) would
        # make every refusal a reference cycle for the cyclic GC (~15 % of a processor's CPU
        # in a hot code's storm, half of whose attempts are refused at the cap).
        return Refused(err.with_traceback(None))


# ---------------------------------------------------------------------------------------- evolve


def evolve(state: VoucherState, recorded: RecordedEvent, fingerprint: str = "") -> VoucherState:
    """Fold one stored event. ``fingerprint`` is the causing command's payload digest when known
    (live processing); on replay from the stream the digest is recomputed by the caller.

    The hot path of the processors (twice per new event): plain dataclasses only, one new
    state object per event."""
    env = recorded.envelope
    event = env.event
    at = env.occurred_at
    seq = recorded.seq
    held: Redemption | None = None
    match event:
        case VoucherRedeemed():
            held = Redemption(
                customer_id=event.customer_id,
                redemption_id=event.redemption_id,
                credit_baisa=event.credit_baisa,
                seq=seq,
                command_id=env.command_id,
                user_id=event.user_id,
                credit_expires_at=event.credit_expires_at,
            )
            facts = state.facts
            if facts is None:  # a redemption before the code was issued: not a valid history
                raise VoucherNotFound(state.code)
            times_redeemed = state.times_redeemed + 1
            changes: dict[str, object] = {
                "times_redeemed": times_redeemed,
                "redemptions": state.redemptions.set(event.customer_id, held),
                "users": state.users.set(event.user_id, event.customer_id),
            }
        case RedemptionReversed():
            held = Redemption(
                customer_id=event.customer_id,
                redemption_id=event.redemption_id,
                credit_baisa=0,
                seq=seq,
                command_id=env.command_id,
            )
            facts = state.facts
            if facts is None:
                raise VoucherNotFound(state.code)
            times_redeemed = max(0, state.times_redeemed - 1)
            undone = state.redemptions.get(event.customer_id)
            changes = {
                "times_redeemed": times_redeemed,
                "redemptions": state.redemptions.delete(event.customer_id)
                if undone is not None
                else state.redemptions,
                "users": state.users.delete(undone.user_id)
                if undone is not None and undone.user_id in state.users
                else state.users,
            }
        case VoucherIssued():
            created_at = state.created_at or at
            times_redeemed = state.times_redeemed
            rules = Rules(
                starts_at=event.starts_at,
                expires_at=event.expires_at,
                plans=tuple(event.plans) if event.plans is not None else None,
                min_order_baisa=event.min_order_baisa,
                new_organizations_only=event.new_organizations_only,
                credit_valid_for_seconds=event.credit_valid_for_seconds,
                discount=event.discount,
            )
            facts = VoucherFacts(
                code=state.code,
                credit_baisa=event.credit_baisa,
                description=event.description,
                active=event.active,
                revoked=False,
                max_redemptions=event.max_redemptions,
                created_at=created_at,
                rules=rules if rules != NO_RULES else NO_RULES,  # one shared object when none
            )
            changes = {
                "issued": True,
                "revoked": False,
                "credit_baisa": event.credit_baisa,
                "description": event.description,
                "active": event.active,
                "max_redemptions": event.max_redemptions,
                "created_at": created_at,
                "rules": facts.rules,
            }
        case ShareReceived() | ShareReleased() | ShareWanted():
            facts = state.facts
            if facts is None:
                raise VoucherNotFound(state.code)
            times_redeemed = state.times_redeemed
            share = state.share or GlobalShare()
            if isinstance(event, ShareReceived):
                share = replace(
                    share,
                    received=event.allotted_total,
                    requested=event.requested_total,
                    pool_empty=event.pool_empty,
                    hub_seq=event.hub_seq,
                    wanting=False,
                )
            elif isinstance(event, ShareWanted):
                share = replace(share, wanted=event.wanted_total, wanting=True)
            else:
                share = replace(share, released=event.released_total)
            changes = {"share": share}
        case VoucherRevoked():
            if state.created_at is None:
                raise VoucherNotFound(state.code)
            times_redeemed = state.times_redeemed
            facts = VoucherFacts(
                code=state.code,
                credit_baisa=state.credit_baisa,
                description=state.description,
                active=False,
                revoked=True,
                max_redemptions=state.max_redemptions,
                created_at=state.created_at,
                rules=state.rules,
            )
            changes = {"revoked": True, "active": False}
        case _:
            raise TypeError(f"{event.type} is not a voucher event")
    receipt = Receipt(
        command_id=env.command_id,
        command_type=_COMMAND_OF_EVENT[event.type],
        fingerprint=fingerprint,
        seq=seq,
        facts=facts,
        times_redeemed=times_redeemed,
        updated_at=at,
        held=held,
    )
    return replace(
        state,
        updated_at=at,
        last_seq=seq,
        facts=facts,
        receipts=state.receipts.set(env.command_id, receipt),
        **changes,
    )


_COMMAND_OF_EVENT = {
    "voucher.issued": "issue_voucher",
    "voucher.revoked": "revoke_voucher",
    "voucher.redeemed": "redeem_voucher",
    "voucher.redemption_reversed": "reverse_redemption",
    "voucher.share_received": "receive_global",
    "voucher.share_released": "receive_global",
    "voucher.share_wanted": "want_share",
}


def fold(
    code: str, history: list[RecordedEvent], start: VoucherState | None = None
) -> VoucherState:
    state = start if start is not None else initial_state(code)
    for recorded in history:
        fingerprint = recorded.envelope.command_fingerprint or fingerprint_of_event(recorded)
        state = evolve(state, recorded, fingerprint)
    return state


def fingerprint_of_event(recorded: RecordedEvent) -> str:
    """Rebuild the causing command's fingerprint from the event it produced.

    Every voucher event carries the full payload of its command, so the digest computed on
    replay equals the one computed when the command was first decided.
    """
    event = recorded.envelope.event
    command: VoucherCommandT
    if isinstance(event, ShareReceived | ShareReleased):
        return "receive_global"  # ReceiveGlobal.fingerprint(): its figures are cumulative
    if isinstance(event, ShareWanted):
        return "want_share"  # WantShare.fingerprint(): nothing but the code
    match event:
        case VoucherIssued():
            command = IssueVoucher(
                code=event.code,
                credit_baisa=event.credit_baisa,
                description=event.description,
                active=event.active,
                max_redemptions=event.max_redemptions,
                starts_at=event.starts_at,
                expires_at=event.expires_at,
                plans=event.plans,
                min_order_baisa=event.min_order_baisa or None,
                new_organizations_only=event.new_organizations_only or None,
                credit_valid_for_seconds=event.credit_valid_for_seconds,
                discount=event.discount,
            )
        case VoucherRevoked():
            command = RevokeVoucher(code=event.code)
        case VoucherRedeemed():
            command = RedeemVoucher(
                code=event.code,
                customer_id=event.customer_id,
                user_id=None if event.user_id == event.customer_id else event.user_id,
            )
        case RedemptionReversed():
            # The command may or may not have named the redemption id; accept both forms by
            # storing the digest of the form without it and comparing leniently (see handle).
            command = ReverseRedemption(
                code=event.code, customer_id=event.customer_id, reason=event.reason
            )
        case _:
            raise TypeError(f"{event.type} is not a voucher event")
    return command.fingerprint()
