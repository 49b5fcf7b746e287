"""Domain errors: each invariant has a named error carrying its context and a stable reason."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar


class DomainError(Exception):
    """A command the domain refuses. ``reason`` is machine-readable and stable."""

    reason: ClassVar[str] = "rejected"

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context


class InvalidInput(DomainError):
    reason = "invalid_input"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field=field)
        self.field = field


class VoucherNotFound(DomainError):
    """Unknown and revoked codes are indistinguishable on purpose (anti-enumeration)."""

    reason = "not_found"

    def __init__(self, code: str) -> None:
        super().__init__("voucher not found", code=code)


class VoucherInactive(DomainError):
    reason = "inactive"

    def __init__(self, code: str) -> None:
        super().__init__("voucher is not active", code=code)


class CapReached(DomainError):
    """``share``: on a Sovereign, a global code whose share (that many slots, received less
    released) is used up while the hub's pool was last seen empty (issue #22): its slots may
    sit unused on another Sovereign, so the checkout still says it wants some (``WantShare``);
    not in the customer's answer."""

    reason = "cap_reached"

    def __init__(self, code: str, cap: int, share: int | None = None) -> None:
        context: dict[str, object] = {"code": code, "cap": cap}
        if share is not None:
            context["share"] = share
        super().__init__("voucher has reached its redemption limit", **context)


def _when(at: datetime) -> str:
    text = at.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class VoucherNotStarted(DomainError):
    """Before the voucher's ``starts_at``: it does not redeem yet."""

    reason = "not_started"

    def __init__(self, code: str, starts_at: datetime) -> None:
        super().__init__(
            f"voucher is valid from {_when(starts_at)}", code=code, starts_at=starts_at
        )


class VoucherExpired(DomainError):
    """At or after the voucher's ``expires_at``: it no longer redeems. (Not ``expired``, the
    reason of a command that outlived its deadline.)"""

    reason = "voucher_expired"

    def __init__(self, code: str, expires_at: datetime) -> None:
        super().__init__(
            f"voucher expired on {_when(expires_at)}", code=code, expires_at=expires_at
        )


class NotEligible(DomainError):
    """The checkout does not meet one of the voucher's eligibility rules (``rule``: plans,
    min_order_omr, new_organizations_only)."""

    reason = "not_eligible"

    def __init__(self, code: str, rule: str, message: str) -> None:
        super().__init__(message, code=code, rule=rule)
        self.rule = rule


class AlreadyRedeemed(DomainError):
    """Once per account (the Organization) and once per user per code."""

    reason = "already_redeemed"

    def __init__(self, code: str, customer_id: str, user_id: str | None = None) -> None:
        if user_id is None:
            super().__init__(
                "voucher already redeemed by this customer", code=code, customer_id=customer_id
            )
        else:
            super().__init__(
                "voucher already redeemed by this user (for another Organization)",
                code=code,
                customer_id=customer_id,
                user_id=user_id,
            )


class NotMember(DomainError):
    """The caller is not a member of the Organization it checks out for: its token's claim
    does not name it, or (without the claim) another user owns the account."""

    reason = "not_member"

    def __init__(self, account: str, user_id: str) -> None:
        super().__init__(
            "you are not a member of this organization", account=account, user_id=user_id
        )


class RedemptionNotFound(DomainError):
    reason = "redemption_not_found"

    def __init__(self, code: str, customer_id: str) -> None:
        super().__init__(
            "no active redemption of this voucher by this customer",
            code=code,
            customer_id=customer_id,
        )


class CommandIdReused(DomainError):
    """The same command id arrived with a different payload: never silently merged."""

    reason = "command_id_reused"

    def __init__(self, command_id: str) -> None:
        super().__init__(
            "command_id was already used for a different command", command_id=command_id
        )


class CommandExpired(DomainError):
    """The sender stopped waiting before a processor got to the command: nothing was done."""

    reason = "expired"

    def __init__(self, command_id: str) -> None:
        super().__init__("command expired before it was decided; retry it", command_id=command_id)


class OrderNotFound(DomainError):
    reason = "order_not_found"

    def __init__(self, order_id: str) -> None:
        super().__init__("order not found", order_id=order_id)


class OrderClosed(DomainError):
    """The order is past the step the command wants (completed, failed or abandoned)."""

    reason = "order_closed"

    def __init__(self, order_id: str, status: str) -> None:
        super().__init__(f"order is {status}", order_id=order_id, status=status)


class PaymentUnavailable(DomainError):
    """Credit does not cover the total and no payment processor is configured."""

    reason = "payment_unavailable"

    def __init__(self, order_id: str, amount_due_baisa: int) -> None:
        super().__init__(
            "payment processor is not configured; the credit does not cover the order total",
            order_id=order_id,
            amount_due_baisa=amount_due_baisa,
        )


class AccountMovedAway(DomainError):
    """The Organization moved to another Sovereign (``wallet.account_moved``): this one opens
    no new order for it."""

    reason = "account_moved"

    def __init__(self, account: str, destination: str | None, moved_at: datetime) -> None:
        where = f"to {destination}" if destination else "to another Sovereign"
        super().__init__(
            f"organization {account} moved {where} on {_when(moved_at)}; its billing is there now",
            account=account,
            destination=destination or "",
        )


class CheckoutInFlight(DomainError):
    """An account cannot move while one of its checkouts is half-way (its order ``opened``):
    the rest of that checkout would land after the move, outside the bundle."""

    reason = "checkout_in_flight"

    def __init__(self, account: str, order_id: str) -> None:
        super().__init__(
            f"order {order_id} of {account} is being checked out; move the organization once "
            "it has settled (or recovery has rolled it back)",
            account=account,
            order_id=order_id,
        )


# ---------------------------------------------------------------------- campaigns (issue #21)


class CampaignNotFound(DomainError):
    reason = "not_found"

    def __init__(self, campaign_id: str) -> None:
        super().__init__("campaign not found", campaign_id=campaign_id)


class CampaignExists(DomainError):
    """A campaign is created once (its id is taken)."""

    reason = "already_exists"

    def __init__(self, campaign_id: str) -> None:
        super().__init__("a campaign with this id already exists", campaign_id=campaign_id)


class CampaignCode(DomainError):
    """A single voucher of a campaign's code shape: such codes are the campaign's (generated,
    and revoked with it)."""

    reason = "campaign_code"

    def __init__(self, code: str, campaign_id: str) -> None:
        super().__init__(
            f"codes of the form [PREFIX-]{campaign_id}-XXXXXXXXXX are campaign {campaign_id}'s: "
            "they are generated, and revoked with their campaign",
            code=code,
            campaign_id=campaign_id,
        )


class CampaignCapReached(DomainError):
    """The campaign's ``max_redemptions`` across all its codes is taken."""

    reason = "cap_reached"

    def __init__(self, code: str, campaign_id: str, cap: int) -> None:
        super().__init__(
            "the campaign has reached its redemption limit",
            code=code,
            campaign_id=campaign_id,
            cap=cap,
        )


class BudgetExhausted(DomainError):
    """What one more redemption would grant exceeds what is left of the campaign's budget."""

    reason = "budget_exhausted"

    def __init__(self, code: str, campaign_id: str, budget_baisa: int, left_baisa: int) -> None:
        super().__init__(
            "the campaign has spent its budget",
            code=code,
            campaign_id=campaign_id,
            budget_baisa=budget_baisa,
            left_baisa=left_baisa,
        )


class ShareExhausted(DomainError):
    """A Sovereign's share of a global voucher is used up for now (issue #22): the global cap
    may not be; the hub tops the share up once it hears of it (410, retry later)."""

    reason = "share_exhausted"

    def __init__(self, code: str, share: int) -> None:
        super().__init__(
            "this code's allowance on this Sovereign is used up for now; try again later",
            code=code,
            share=share,
        )
