"""The campaign aggregate (issue #21): many generated codes under one cap and one budget.

Every command for a campaign's code (``[PREFIX-]CAMPAIGN_ID-RANDOM``, ``campaign_codes``) is a
command of the campaign: it lands on the campaign's partition and is decided against the
campaign's state, one after another, exactly as a single code's commands are (the same
processor, expectation and idempotency). So the campaign's ``max_redemptions`` and
``budget_baisa`` hold across all its codes whatever the concurrency, the number of processor
instances, crashes or failover: it is the one aggregate that decides them.

A code answers the voucher commands as a single voucher does (``RedeemVoucher`` with the same
reply, ``ReverseRedemption`` giving the slot and the budget back), so the checkout treats it
like any code. Issuing or revoking a single code of a campaign's shape is refused: such codes
are the campaign's (revoke the campaign).

Loading: a campaign's history is one ``campaign.codes_generated`` per 5,000 codes plus one
event per redemption and reversal (a cold load of a 100,000-code campaign with 500 redemptions
folds 520 events); the processor keeps the state cached after that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import immutables

from voucher_ledger.ledger.campaign_codes import RandomBytes, generate_codes
from voucher_ledger.ledger.commands import (
    CampaignCommandT,
    CreateCampaign,
    GenerateCampaignCodes,
    IssueVoucher,
    RedeemVoucher,
    ReverseRedemption,
    RevokeCampaign,
    RevokeVoucher,
)
from voucher_ledger.ledger.errors import (
    AlreadyRedeemed,
    BudgetExhausted,
    CampaignCapReached,
    CampaignCode,
    CampaignExists,
    CampaignNotFound,
    CapReached,
    CommandIdReused,
    DomainError,
    InvalidInput,
    RedemptionNotFound,
    VoucherExpired,
    VoucherInactive,
    VoucherNotFound,
    VoucherNotStarted,
)
from voucher_ledger.ledger.events import (
    CampaignCodeRedeemed,
    CampaignCodesGenerated,
    CampaignCreated,
    CampaignEventT,
    CampaignRedemptionReversed,
    CampaignRevoked,
    DiscountTerms,
    Frozen,
    RecordedEvent,
)
from voucher_ledger.ledger.records import replace
from voucher_ledger.ledger.voucher import (
    NO_RULES,
    Decided,
    Policy,
    Redemption,
    RedemptionView,
    Refused,
    Replayed,
    Rules,
    VoucherView,
    check_eligible,
    redemption_id_for,
)

CampaignCommandAnyT = (
    CampaignCommandT | IssueVoucher | RevokeVoucher | RedeemVoucher | ReverseRedemption
)
CODES_PER_EVENT = 5_000  # ~45 bytes a code in JSON: ~225 kB a message (NATS's limit: 1 MB)
MAX_CODES_PER_CAMPAIGN = 1_000_000


class CampaignView(Frozen):
    """A campaign and its figures at one stream position."""

    campaign_id: str
    name: str
    description: str
    kind: str
    credit_baisa: int
    max_redemptions: int
    budget_baisa: int | None
    code_max_redemptions: int
    active: bool
    revoked: bool
    codes_issued: int
    times_redeemed: int
    granted_baisa: int
    created_at: datetime
    updated_at: datetime
    last_seq: int
    starts_at: datetime | None = None
    expires_at: datetime | None = None
    plans: list[str] | None = None
    min_order_baisa: int = 0
    new_organizations_only: bool = False
    credit_valid_for_seconds: int | None = None
    discount: DiscountTerms | None = None  # a discount campaign's terms (issue #21)
    # In the reply to a generation: how many codes it generated (its codes: the read model).
    generated: int | None = None


@dataclass(frozen=True, slots=True)
class CampaignFacts:
    """What only a creation or a revocation changes (shared by the state and its receipts)."""

    campaign_id: str
    name: str
    description: str
    kind: str
    credit_baisa: int
    max_redemptions: int
    budget_baisa: int | None
    code_max_redemptions: int
    active: bool
    revoked: bool
    created_at: datetime
    rules: Rules


@dataclass(frozen=True, slots=True)
class CodeState:
    """One code's redemptions (by account); a code never redeemed shares :data:`UNUSED`."""

    times_redeemed: int = 0
    redemptions: immutables.Map[str, Redemption] = field(default_factory=immutables.Map)


UNUSED = CodeState()


@dataclass(frozen=True, slots=True)
class Figures:
    codes_issued: int = 0
    times_redeemed: int = 0
    granted_baisa: int = 0


@dataclass(frozen=True, slots=True)
class CampaignReceipt:
    """What an accepted command produced, replayed verbatim for a retried command id."""

    command_id: str
    command_type: str
    fingerprint: str
    seq: int
    facts: CampaignFacts
    figures: Figures
    updated_at: datetime
    code: str | None = None  # a code's command: the code, its count, its redemption
    code_times: int = 0
    held: Redemption | None = None
    generated: int = 0

    @property
    def campaign(self) -> CampaignView:
        return campaign_view(
            self.facts,
            self.figures,
            self.updated_at,
            self.seq,
            generated=self.generated if self.command_type == "generate_campaign_codes" else None,
        )

    @property
    def voucher(self) -> VoucherView | None:
        """A code's command: the code as a voucher, as this command left it."""
        if self.code is None:
            return None
        return code_view(self.facts, self.code, self.code_times, self.updated_at, self.seq)

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


def campaign_view(
    facts: CampaignFacts,
    figures: Figures,
    updated_at: datetime,
    seq: int,
    *,
    generated: int | None = None,
) -> CampaignView:
    r = facts.rules
    return CampaignView(
        campaign_id=facts.campaign_id,
        name=facts.name,
        description=facts.description,
        kind=facts.kind,
        credit_baisa=facts.credit_baisa,
        max_redemptions=facts.max_redemptions,
        budget_baisa=facts.budget_baisa,
        code_max_redemptions=facts.code_max_redemptions,
        active=facts.active,
        revoked=facts.revoked,
        codes_issued=figures.codes_issued,
        times_redeemed=figures.times_redeemed,
        granted_baisa=figures.granted_baisa,
        created_at=facts.created_at,
        updated_at=updated_at,
        last_seq=seq,
        starts_at=r.starts_at,
        expires_at=r.expires_at,
        plans=r.plan_list,
        min_order_baisa=r.min_order_baisa,
        new_organizations_only=r.new_organizations_only,
        credit_valid_for_seconds=r.credit_valid_for_seconds,
        discount=r.discount,
        generated=generated,
    )


def code_view(
    facts: CampaignFacts, code: str, times: int, updated_at: datetime, seq: int
) -> VoucherView:
    """A campaign's code shown as a voucher: the campaign's credit, description and rules,
    the code's own cap (``code_max_redemptions``) and count."""
    r = facts.rules
    return VoucherView(
        code=code,
        credit_baisa=facts.credit_baisa,
        description=facts.description,
        active=facts.active,
        revoked=facts.revoked,
        max_redemptions=facts.code_max_redemptions,
        times_redeemed=times,
        created_at=facts.created_at,
        updated_at=updated_at,
        last_seq=seq,
        starts_at=r.starts_at,
        expires_at=r.expires_at,
        plans=r.plan_list,
        min_order_baisa=r.min_order_baisa,
        new_organizations_only=r.new_organizations_only,
        credit_valid_for_seconds=r.credit_valid_for_seconds,
        discount=r.discount,
    )


@dataclass(frozen=True, slots=True)
class CampaignState:
    campaign_id: str
    facts: CampaignFacts | None = None
    figures: Figures = Figures()
    codes: immutables.Map[str, CodeState] = field(default_factory=immutables.Map)
    # account -> the code of its active redemption (one per account per campaign)
    accounts: immutables.Map[str, str] = field(default_factory=immutables.Map)
    # user -> the account it redeemed for (one per user per campaign)
    users: immutables.Map[str, str] = field(default_factory=immutables.Map)
    receipts: immutables.Map[str, CampaignReceipt] = field(default_factory=immutables.Map)
    updated_at: datetime | None = None
    last_seq: int = 0

    @property
    def live(self) -> bool:
        return self.facts is not None and not self.facts.revoked

    def view(self) -> CampaignView:
        if self.facts is None or self.updated_at is None:
            raise CampaignNotFound(self.campaign_id)
        return campaign_view(self.facts, self.figures, self.updated_at, self.last_seq)

    def budget_left(self) -> int | None:
        if self.facts is None or self.facts.budget_baisa is None:
            return None
        return self.facts.budget_baisa - self.figures.granted_baisa


def initial_state(campaign_id: str) -> CampaignState:
    return CampaignState(campaign_id=campaign_id)


# ---------------------------------------------------------------------------------------- decide


def decide(
    state: CampaignState,
    command: CampaignCommandAnyT,
    command_id: str,
    policy: Policy,
    now: datetime | None = None,
    random: RandomBytes = os.urandom,
) -> list[CampaignEventT]:
    """``now``: the moment of the decision (windows); ``random``: where generated codes'
    randomness comes from (the processor: ``os.urandom``)."""
    cid = state.campaign_id
    facts = state.facts
    match command:
        case CreateCampaign():
            if facts is not None:
                raise CampaignExists(cid)
            if command.credit_baisa > policy.max_credit_baisa:
                raise InvalidInput(
                    "credit", f"credit exceeds the maximum of {policy.max_credit_baisa} baisa"
                )
            if command.budget_baisa is not None and command.budget_baisa < command.credit_baisa:
                raise InvalidInput("budget", "the budget must cover at least one code's credit")
            if (
                command.starts_at is not None
                and command.expires_at is not None
                and command.expires_at <= command.starts_at
            ):
                raise InvalidInput("expires_at", "expires_at must be after starts_at")
            return [
                CampaignCreated(
                    campaign_id=cid,
                    name=command.name,
                    description=command.description,
                    kind=command.kind,
                    credit_baisa=command.credit_baisa,
                    max_redemptions=command.max_redemptions,
                    budget_baisa=command.budget_baisa,
                    code_max_redemptions=command.code_max_redemptions,
                    active=command.active,
                    starts_at=command.starts_at,
                    expires_at=command.expires_at,
                    plans=list(dict.fromkeys(command.plans)) if command.plans else None,
                    min_order_baisa=command.min_order_baisa,
                    new_organizations_only=command.new_organizations_only,
                    credit_valid_for_seconds=command.credit_valid_for_seconds,
                    discount=command.discount,
                )
            ]
        case GenerateCampaignCodes():
            if facts is None or facts.revoked:
                raise CampaignNotFound(cid)
            if state.figures.codes_issued + command.count > MAX_CODES_PER_CAMPAIGN:
                raise InvalidInput(
                    "count", f"a campaign has at most {MAX_CODES_PER_CAMPAIGN} codes"
                )
            codes = generate_codes(
                cid, command.prefix, command.count, random, state.codes.__contains__
            )
            return [
                CampaignCodesGenerated(
                    campaign_id=cid,
                    prefix=command.prefix,
                    part=n,
                    codes=codes[i : i + CODES_PER_EVENT],
                )
                for n, i in enumerate(range(0, len(codes), CODES_PER_EVENT))
            ]
        case RevokeCampaign():
            if facts is None or facts.revoked:
                raise CampaignNotFound(cid)
            return [CampaignRevoked(campaign_id=cid)]
        case RedeemVoucher():
            return [_redeem(state, command, command_id, now)]
        case ReverseRedemption():
            entry = state.codes.get(command.code)
            held = entry.redemptions.get(command.customer_id) if entry is not None else None
            if held is None or (
                command.redemption_id is not None and command.redemption_id != held.redemption_id
            ):
                raise RedemptionNotFound(command.code, command.customer_id)
            return [
                CampaignRedemptionReversed(
                    campaign_id=cid,
                    code=command.code,
                    customer_id=command.customer_id,
                    redemption_id=held.redemption_id,
                    credit_baisa=held.credit_baisa,
                    reason=command.reason,
                )
            ]
        case IssueVoucher() | RevokeVoucher():
            raise CampaignCode(command.code, cid)


def _redeem(
    state: CampaignState, command: RedeemVoucher, command_id: str, now: datetime | None
) -> CampaignCodeRedeemed:
    code = command.code
    facts = state.facts
    entry = state.codes.get(code)
    if facts is None or facts.revoked or entry is None:
        raise VoucherNotFound(code)
    if not facts.active:
        raise VoucherInactive(code)
    rules = facts.rules
    at = now if now is not None else datetime.now(UTC)
    if rules.starts_at is not None and at < rules.starts_at:
        raise VoucherNotStarted(code, rules.starts_at)
    if rules.expires_at is not None and at >= rules.expires_at:
        raise VoucherExpired(code, rules.expires_at)
    if facts.code_max_redemptions and entry.times_redeemed >= facts.code_max_redemptions:
        raise CapReached(code, facts.code_max_redemptions)
    figures = state.figures
    if facts.max_redemptions and figures.times_redeemed >= facts.max_redemptions:
        raise CampaignCapReached(code, facts.campaign_id, facts.max_redemptions)
    left = state.budget_left()
    if left is not None and facts.credit_baisa > left:
        raise BudgetExhausted(code, facts.campaign_id, facts.budget_baisa or 0, left)
    if command.customer_id in state.accounts:
        raise AlreadyRedeemed(code, command.customer_id)
    user = command.user
    if user in state.users:
        raise AlreadyRedeemed(code, command.customer_id, user)
    check_eligible(code, rules, command)
    valid_for = rules.credit_valid_for_seconds
    order = command.order  # the checkout's priced order, which its wallet places next
    return CampaignCodeRedeemed(
        campaign_id=facts.campaign_id,
        code=code,
        customer_id=command.customer_id,
        user_id=user,
        redemption_id=redemption_id_for(code, command.customer_id, command_id),
        credit_baisa=facts.credit_baisa,
        credit_expires_at=at + timedelta(seconds=valid_for) if valid_for else None,
        order_id=order.order_id if order is not None else None,
        order=order,
    )


Outcome = Replayed[CampaignReceipt] | Decided[CampaignEventT] | Refused


def handle(
    state: CampaignState,
    command: CampaignCommandAnyT,
    command_id: str,
    policy: Policy,
    now: datetime | None = None,
    random: RandomBytes = os.urandom,
) -> Outcome:
    """Idempotent decide: a known command id replays its receipt; a reused one is refused."""
    known = state.receipts.get(command_id)
    if known is not None:
        if known.fingerprint != command.fingerprint():
            return Refused(CommandIdReused(command_id))
        return Replayed(known)
    try:
        return Decided(decide(state, command, command_id, policy, now, random))
    except DomainError as err:
        return Refused(err.with_traceback(None))  # no frames kept (see voucher.handle)


# ---------------------------------------------------------------------------------------- evolve


def evolve(state: CampaignState, recorded: RecordedEvent, fingerprint: str = "") -> CampaignState:
    """Fold one stored event (``fingerprint``: the causing command's digest)."""
    env = recorded.envelope
    event = env.event
    at = env.occurred_at
    seq = recorded.seq
    facts = state.facts
    figures = state.figures
    changes: dict[str, object] = {}
    code: str | None = None
    code_times = 0
    held: Redemption | None = None
    generated = 0
    match event:
        case CampaignCodeRedeemed():
            if facts is None:
                raise CampaignNotFound(state.campaign_id)
            code = event.code
            held = Redemption(
                customer_id=event.customer_id,
                redemption_id=event.redemption_id,
                credit_baisa=event.credit_baisa,
                seq=seq,
                command_id=env.command_id,
                user_id=event.user_id,
                credit_expires_at=event.credit_expires_at,
            )
            entry = state.codes.get(code, UNUSED)
            code_times = entry.times_redeemed + 1
            figures = Figures(
                figures.codes_issued,
                figures.times_redeemed + 1,
                figures.granted_baisa + event.credit_baisa,
            )
            changes = {
                "codes": state.codes.set(
                    code, CodeState(code_times, entry.redemptions.set(event.customer_id, held))
                ),
                "accounts": state.accounts.set(event.customer_id, code),
                "users": state.users.set(event.user_id, event.customer_id),
            }
        case CampaignRedemptionReversed():
            if facts is None:
                raise CampaignNotFound(state.campaign_id)
            code = event.code
            held = Redemption(
                customer_id=event.customer_id,
                redemption_id=event.redemption_id,
                credit_baisa=0,
                seq=seq,
                command_id=env.command_id,
            )
            entry = state.codes.get(code, UNUSED)
            undone = entry.redemptions.get(event.customer_id)
            code_times = max(0, entry.times_redeemed - 1)
            figures = Figures(
                figures.codes_issued,
                max(0, figures.times_redeemed - 1),
                figures.granted_baisa - event.credit_baisa,
            )
            changes = {
                "codes": state.codes.set(
                    code,
                    CodeState(
                        code_times,
                        entry.redemptions.delete(event.customer_id)
                        if undone is not None
                        else entry.redemptions,
                    ),
                ),
                "accounts": state.accounts.delete(event.customer_id)
                if event.customer_id in state.accounts
                else state.accounts,
                "users": state.users.delete(undone.user_id)
                if undone is not None and undone.user_id in state.users
                else state.users,
            }
        case CampaignCodesGenerated():
            if facts is None:
                raise CampaignNotFound(state.campaign_id)
            with state.codes.mutate() as codes:
                for c in event.codes:
                    codes[c] = UNUSED
                changes = {"codes": codes.finish()}
            earlier = state.receipts.get(env.command_id)
            generated = len(event.codes) + (earlier.generated if earlier is not None else 0)
            figures = Figures(
                figures.codes_issued + len(event.codes),
                figures.times_redeemed,
                figures.granted_baisa,
            )
        case CampaignCreated():
            facts = CampaignFacts(
                campaign_id=state.campaign_id,
                name=event.name,
                description=event.description,
                kind=event.kind,
                credit_baisa=event.credit_baisa,
                max_redemptions=event.max_redemptions,
                budget_baisa=event.budget_baisa,
                code_max_redemptions=event.code_max_redemptions,
                active=event.active,
                revoked=False,
                created_at=at,
                rules=_rules_of(event),
            )
        case CampaignRevoked():
            if facts is None:
                raise CampaignNotFound(state.campaign_id)
            facts = replace(facts, revoked=True, active=False)
        case _:
            raise TypeError(f"{event.type} is not a campaign event")
    receipt = CampaignReceipt(
        command_id=env.command_id,
        command_type=_COMMAND_OF_EVENT[event.type],
        fingerprint=fingerprint,
        seq=seq,
        facts=facts,
        figures=figures,
        updated_at=at,
        code=code,
        code_times=code_times,
        held=held,
        generated=generated,
    )
    return replace(
        state,
        facts=facts,
        figures=figures,
        updated_at=at,
        last_seq=seq,
        receipts=state.receipts.set(env.command_id, receipt),
        **changes,
    )


def _rules_of(event: CampaignCreated) -> Rules:
    rules = Rules(
        starts_at=event.starts_at,
        expires_at=event.expires_at,
        plans=tuple(event.plans) if event.plans is not None else None,
        min_order_baisa=event.min_order_baisa,
        new_organizations_only=event.new_organizations_only,
        credit_valid_for_seconds=event.credit_valid_for_seconds,
        discount=event.discount,
    )
    return NO_RULES if rules == NO_RULES else rules


_COMMAND_OF_EVENT = {
    "campaign.created": "create_campaign",
    "campaign.codes_generated": "generate_campaign_codes",
    "campaign.code_redeemed": "redeem_voucher",
    "campaign.redemption_reversed": "reverse_redemption",
    "campaign.revoked": "revoke_campaign",
}


def fold(
    campaign_id: str, history: list[RecordedEvent], start: CampaignState | None = None
) -> CampaignState:
    """The campaign's state from its events (each carries its command's fingerprint: campaign
    events are written by the processors only)."""
    state = start if start is not None else initial_state(campaign_id)
    for recorded in history:
        state = evolve(state, recorded, recorded.envelope.command_fingerprint)
    return state
