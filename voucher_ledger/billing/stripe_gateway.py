"""Stripe, through the official SDK: one client per gateway (never the SDK's global key, B16),
a pinned API version, the order id as the idempotency key of every session it creates, and the
SDK's own webhook signature check.

The API base comes from settings (STRIPE_API_BASE), which is how the tests point the real SDK
at a local fake Stripe server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import stripe

from voucher_ledger.ledger.events import OrderLine
from voucher_ledger.ledger.money import BAISA

log = logging.getLogger(__name__)

STRIPE_API_VERSION = "2026-10-28.endive"


class PaymentError(Exception):
    """Stripe refused or could not be reached. ``retryable``: a network or 5xx failure, where
    the session may or may not exist (the idempotency key makes a retry safe)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class WebhookSignatureError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    id: str
    url: str


def with_query(url: str, **params: str) -> str:
    """Add query parameters to a URL that may already have some (the seed broke those, B22)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def charge_lines(lines: Sequence[OrderLine], credit_baisa: int) -> list[tuple[OrderLine, int]]:
    """Spread the applied credit over the lines, plan first: each line with what is left to pay
    for it. Lines the credit covers entirely are dropped, so the sum is exactly the amount due."""
    left = credit_baisa
    out = []
    for line in lines:
        covered = min(left, line.amount_baisa)
        left -= covered
        if line.amount_baisa - covered > 0:
            out.append((line, line.amount_baisa - covered))
    return out


class StripeGateway:
    def __init__(
        self,
        secret_key: str,
        *,
        webhook_secret: str | None,
        api_base: str | None,
        currency: str,
        success_url: str,
        cancel_url: str,
        sovereign: str,
        timeout: float = 20.0,
    ) -> None:
        self._http = stripe.AIOHTTPClient(timeout=timeout)
        base: dict[str, str | None] = {"api": api_base} if api_base else {}
        self._client = stripe.StripeClient(
            secret_key,
            stripe_version=STRIPE_API_VERSION,
            base_addresses=base,  # type: ignore[arg-type]
            http_client=self._http,
            max_network_retries=2,
        )
        self._webhook_secret = webhook_secret
        self.currency = currency
        self._success_url = success_url
        self._cancel_url = cancel_url
        self._sovereign = sovereign

    @property
    def webhooks_enabled(self) -> bool:
        return bool(self._webhook_secret)

    def session_params(
        self,
        *,
        order_id: str,
        customer_id: str,
        tenant_id: str,
        lines: Sequence[OrderLine],
        credit_applied_baisa: int,
    ) -> dict[str, Any]:
        metadata = {"order_id": order_id, "tenant_id": tenant_id, "sovereign": self._sovereign}
        items = []
        for line, amount in charge_lines(lines, credit_applied_baisa):
            name = line.name
            if amount < line.amount_baisa:
                name += f" (credit applied: {(line.amount_baisa - amount) / BAISA:g} OMR)"
            items.append(
                {
                    "price_data": {
                        "currency": self.currency,
                        "unit_amount": amount,
                        "product_data": {
                            "name": name,
                            "metadata": {"kind": line.kind, "id": line.id},
                        },
                    },
                    "quantity": 1,
                }
            )
        params: dict[str, Any] = {
            "mode": "payment",
            "line_items": items,
            "success_url": with_query(self._success_url, order_id=order_id),
            "cancel_url": with_query(self._cancel_url, order_id=order_id),
            "metadata": metadata,
            # The charge carries the same metadata (the franchise model's `sovereign` tag).
            "payment_intent_data": {"metadata": metadata},
            # A Stripe customer for the Organization (what the billing portal opens) and an
            # invoice whose metadata names the Organization and the customer: its invoice.paid
            # and invoice.payment_failed events are recorded on the customer's wallet.
            "customer_creation": "always",
            "invoice_creation": {
                "enabled": True,
                "invoice_data": {"metadata": {**metadata, "customer_id": customer_id}},
            },
        }
        if len(customer_id) <= 200:
            params["client_reference_id"] = customer_id
        return params

    async def create_session(self, params: dict[str, Any], *, order_id: str) -> CheckoutSession:
        try:
            session = await self._client.v1.checkout.sessions.create_async(
                params,  # type: ignore[arg-type]
                options={"idempotency_key": order_id},
            )
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            raise PaymentError(
                f"payment processor unreachable: {exc.user_message or exc}", retryable=True
            ) from exc
        except stripe.StripeError as exc:
            status = exc.http_status or 0
            message = exc.user_message or str(exc) or type(exc).__name__
            raise PaymentError(
                f"payment processor rejected the request: {message}", retryable=status >= 500
            ) from exc
        if not session.id or not session.url:
            raise PaymentError("payment processor returned a session without a URL", retryable=True)
        return CheckoutSession(id=str(session.id), url=str(session.url))

    async def create_portal_session(self, stripe_customer_id: str, *, key: str) -> str:
        """A Stripe billing-portal session for the customer; returns its URL. ``key``: the
        Idempotency-Key (a retried request gets the same session)."""
        try:
            session = await self._client.v1.billing_portal.sessions.create_async(
                {"customer": stripe_customer_id, "return_url": self._success_url},
                options={"idempotency_key": key},
            )
        except stripe.StripeError as exc:
            status = exc.http_status or 0
            message = exc.user_message or str(exc) or type(exc).__name__
            raise PaymentError(
                f"failed to create portal session: {message}",
                retryable=status >= 500 or status == 0,
            ) from exc
        if not session.url:
            raise PaymentError(
                "payment processor returned a portal session without a URL", retryable=True
            )
        return str(session.url)

    def verify_webhook(self, payload: bytes, signature: str | None, tolerance: int = 300) -> None:
        if not self._webhook_secret:
            raise WebhookSignatureError("webhook secret not configured")
        if not signature:
            raise WebhookSignatureError("missing Stripe-Signature header")
        # The SDK refuses an old timestamp only; one far ahead would keep a captured event
        # replayable for as long, so the tolerance applies both ways.
        stamps = [p[2:] for p in signature.split(",") if p.startswith("t=")]
        if not stamps or not stamps[0].isascii() or not stamps[0].isdigit():
            raise WebhookSignatureError("invalid webhook signature")
        if int(stamps[0][:20]) > time.time() + tolerance:
            raise WebhookSignatureError("webhook timestamp is in the future")
        try:
            stripe.WebhookSignature.verify_header(
                payload.decode("utf-8"), signature, self._webhook_secret, tolerance
            )
        except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError) as exc:
            raise WebhookSignatureError("invalid webhook signature") from exc

    async def close(self) -> None:
        try:
            await self._http.close_async()  # type: ignore[no-untyped-call]
        except Exception:  # closing an unused client
            log.debug("stripe http client close failed", exc_info=True)
