"""What a checkout's placement takes from its redemption (issue #19).

The checkout's redemption carries the order; the placement carries the redemption's terms: the
credit it earned (a :class:`Grant`), whether the voucher is for an Organization's first order
(the wallet decides that), and the discount it gives. The same reading serves the checkout
that sends the placement itself and the processor that places a chained order
(:class:`voucher_ledger.commands.wire.Then`), so the two cannot differ.
"""

from __future__ import annotations

from voucher_ledger.commands.wire import Accepted
from voucher_ledger.ledger.commands import DiscountGrant, Grant, PlaceOrder


def redemption_terms(
    code: str, reply: Accepted
) -> tuple[Grant | None, bool, DiscountGrant | None] | None:
    """The redemption ``reply`` (accepted) of ``code``: its grant, if it earned credit, whether
    it is for an Organization's first order, and its discount, if it is a discount code. None
    when the reply is not a redemption's."""
    redemption = reply.redemption
    if redemption is None:
        return None
    rules = reply.voucher or reply.campaign  # a campaign's code: its campaign's rules
    first_only = rules.new_organizations_only if rules is not None else False
    terms = rules.discount if rules is not None else None
    discount = (
        DiscountGrant(redemption_id=redemption.redemption_id, code=code, terms=terms)
        if terms is not None
        else None
    )
    grant = (
        Grant(
            redemption_id=redemption.redemption_id,
            code=code,
            amount_baisa=redemption.credit_baisa,
            expires_at=redemption.credit_expires_at,
        )
        if redemption.credit_baisa
        else None
    )
    return grant, first_only, discount


def placement_after(place: PlaceOrder, reply: Accepted) -> PlaceOrder | None:
    """``place`` (its promo code redeemed, ``reply`` the redemption's answer) with the
    redemption's terms; None when ``reply`` is not a redemption of ``place``'s code."""
    if place.promo_code is None:
        return None
    found = redemption_terms(place.promo_code, reply)
    if found is None:
        return None
    grant, first_only, discount = found
    return place.model_copy(
        update={"grant": grant, "first_order_only": first_only, "discount": discount}
    )
