"""The reports' figures folded from the stream's models (``verify``), independently of the
``reports`` read model's applier (``projections/reports.py``, which reads plain dicts and
keeps its state in tables): every report line's totals over the whole stream, by the rules
the applier's docstring states (the README's "Campaign reports" too)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from voucher_ledger.ledger.campaign_codes import campaign_of
from voucher_ledger.ledger.events import (
    CampaignCodeRedeemed,
    CampaignCodesGenerated,
    CampaignRedemptionReversed,
    CreditCaptured,
    CreditExpired,
    CreditGranted,
    CreditReleased,
    CreditReserved,
    GrantRevoked,
    OrderCompleted,
    OrderOpened,
    OrderPlaced,
    RecordedEvent,
    RedemptionReversed,
    VoucherIssued,
    VoucherRedeemed,
)

FIGURES = (
    "codes_issued",
    "redemptions",
    "granted_baisa",
    "spent_baisa",
    "expired_baisa",
    "discount_baisa",
    "orders",
    "revenue_baisa",
)


def line_of(code: str | None) -> str:
    if not code:
        return "none"
    return campaign_of(code) or "vouchers"


@dataclass
class _Lasting:
    """A grant that never expires: its line and what is left of it."""

    redemption_id: str
    line: str
    left: int


@dataclass
class _Account:
    lasting: list[_Lasting] = field(default_factory=list)  # in grant order (oldest first)
    expiring: dict[str, str] = field(default_factory=dict)  # redemption id -> line

    def take(self, amount: int, first: str | None = None) -> list[tuple[str, str | None, int]]:
        """Take from credit that never expires (grant ``first`` first, then oldest first):
        ``(line, redemption id, amount)`` per grant."""
        order = list(self.lasting)
        if first is not None:
            order.sort(key=lambda g: g.redemption_id != first)  # stable: the rest keep theirs
        out: list[tuple[str, str | None, int]] = []
        for grant in order:
            if amount == 0:
                break
            part = min(amount, grant.left)
            if part:
                grant.left -= part
                amount -= part
                out.append((grant.line, grant.redemption_id, part))
        if amount:
            out.append(("vouchers", None, amount))
        return out


@dataclass
class _Hold:
    """Credit an order holds: ``(line, redemption id, amount, expiring)`` per grant."""

    takes: list[list[object]] = field(default_factory=list)


def report_fold(
    by_aggregate: dict[tuple[str, str], list[RecordedEvent]], upto: int
) -> dict[str, dict[str, int]]:
    """Each report line's totals (:data:`FIGURES`) of the events up to ``upto``."""
    events = sorted(
        (r for history in by_aggregate.values() for r in history if r.seq <= upto),
        key=lambda r: r.seq,
    )
    return fold_records(events)


def fold_records(events: Iterable[RecordedEvent]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    accounts: dict[str, _Account] = {}
    holds: dict[str, _Hold] = {}
    orders: dict[str, tuple[str, str | None, int]] = {}  # order -> line, discount line, amount

    def add(line: str, figure: str, amount: int) -> None:
        totals.setdefault(line, dict.fromkeys(FIGURES, 0))[figure] += amount

    for record in events:
        env = record.envelope
        event = env.event
        if isinstance(event, OrderPlaced):
            discount = _discount(getattr(event, "discount", None))
            parts: list[object] = list(event.parts())
        else:
            discount, parts = None, [event]
        account = accounts.setdefault(env.aggregate_id, _Account())
        for part in parts:
            if isinstance(part, VoucherIssued):
                if part.change == "created":
                    add("vouchers", "codes_issued", 1)
            elif isinstance(part, CampaignCodesGenerated):
                add(part.campaign_id, "codes_issued", len(part.codes))
            elif isinstance(part, VoucherRedeemed | CampaignCodeRedeemed):
                add(line_of(part.code), "redemptions", 1)
            elif isinstance(part, RedemptionReversed | CampaignRedemptionReversed):
                add(line_of(part.code), "redemptions", -1)
            elif isinstance(part, CreditGranted):
                line = line_of(part.code)
                add(line, "granted_baisa", part.amount_baisa)
                known = part.redemption_id in account.expiring or any(
                    g.redemption_id == part.redemption_id for g in account.lasting
                )
                if known:
                    continue
                if part.expires_at is None:
                    account.lasting.append(_Lasting(part.redemption_id, line, part.amount_baisa))
                else:
                    account.expiring[part.redemption_id] = line
            elif isinstance(part, GrantRevoked):
                add(line_of(part.code), "granted_baisa", -part.amount_baisa)
                rest = part.amount_baisa - sum(s.amount_baisa for s in part.lots)
                if rest > 0:
                    account.take(rest, first=part.redemption_id)
            elif isinstance(part, CreditReserved):
                hold = holds.setdefault(part.order_id, _Hold())
                for share in part.lots:
                    line = account.expiring.get(share.redemption_id, "vouchers")
                    hold.takes.append([line, share.redemption_id, share.amount_baisa, True])
                rest = part.amount_baisa - sum(s.amount_baisa for s in part.lots)
                if rest > 0:
                    hold.takes.extend([ln, rid, n, False] for ln, rid, n in account.take(rest))
            elif isinstance(part, CreditReleased):
                hold = holds.setdefault(part.order_id, _Hold())
                for share in part.lots:
                    _release(hold, account, share.redemption_id, share.amount_baisa, True)
                rest = part.amount_baisa - sum(s.amount_baisa for s in part.lots)
                if rest > 0:
                    _release(hold, account, None, rest, False)
            elif isinstance(part, CreditCaptured):
                hold = holds.setdefault(part.order_id, _Hold())
                left = part.amount_baisa
                spent: dict[str, int] = {}
                for take in hold.takes:
                    n = min(left, int(str(take[2])))
                    if n > 0:
                        spent[str(take[0])] = spent.get(str(take[0]), 0) + n
                        take[2] = int(str(take[2])) - n
                        left -= n
                if left > 0:
                    spent["vouchers"] = spent.get("vouchers", 0) + left
                for line, n in spent.items():
                    add(line, "spent_baisa", n)
            elif isinstance(part, CreditExpired):
                add(line_of(part.code), "expired_baisa", part.amount_baisa)
            elif isinstance(part, OrderOpened):
                if part.order_id not in orders:
                    orders[part.order_id] = (
                        line_of(part.promo_code),
                        line_of(discount[0]) if discount else None,
                        discount[1] if discount else 0,
                    )
            elif isinstance(part, OrderCompleted):
                line, discount_line, discounted = orders.get(part.order_id, ("none", None, 0))
                add(line, "orders", 1)
                add(line, "revenue_baisa", 0 if part.paid_by_credit else part.amount_paid_baisa)
                if discount_line is not None:
                    add(discount_line, "discount_baisa", discounted)
    return totals


def _discount(value: Any) -> tuple[str, int] | None:
    """``order.placed``'s discount (its code and amount), a model or a plain dict; None."""
    if value is None:
        return None
    if isinstance(value, dict):
        return str(value["code"]), int(value["amount_baisa"])
    return str(value.code), int(value.amount_baisa)


def _release(
    hold: _Hold, account: _Account, redemption_id: str | None, amount: int, expiring: bool
) -> None:
    for take in hold.takes:
        if amount == 0:
            return
        if take[3] is not expiring or (redemption_id is not None and take[1] != redemption_id):
            continue
        n = min(amount, int(str(take[2])))
        take[2] = int(str(take[2])) - n
        amount -= n
        if not expiring:
            for grant in account.lasting:
                if grant.redemption_id == take[1]:
                    grant.left += n
