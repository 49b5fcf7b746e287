"""The route table: one declaration per API operation, from which both the router
(``add_routes``) and ``/openapi.json`` (``build_openapi``) are built.

Routes are registered in the table's order (a static path before the ``{code}`` pattern that
would also match it). The web pages (``http/pages.py``) are not API operations: they are routed
there and not documented."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from voucher_ledger import __version__
from voucher_ledger.http import (
    admin,
    billing,
    campaigns,
    ops,
    reports,
    sovereign_report,
    subscriptions,
    vouchers,
)
from voucher_ledger.http import campaign_models as cm
from voucher_ledger.http import global_models as gm
from voucher_ledger.http import global_vouchers as gv
from voucher_ledger.http import models as m
from voucher_ledger.http.openapi import (
    AT,
    CODE,
    DETAIL_CODE,
    IDEMPOTENCY_KEY,
    LIST_QUERY,
    ORDERS_QUERY,
    PAGE,
    STRIPE_SIGNATURE,
    TENANT_PATH,
    TENANT_QUERY,
    Route,
    build_document,
)
from voucher_ledger.http.paging import LIST_HEADERS
from voucher_ledger.ledger.campaign_codes import ALPHABET
from voucher_ledger.ledger.codes import CODE_INPUT_PATTERN

# Operations served at two paths (the seed's legacy aliases): one declaration each.


def _issue(path: str) -> Route:
    return Route(
        "POST",
        path,
        vouchers.issue_voucher,
        "issuer",
        "Issue, update or restore a voucher",
        parameters=(IDEMPOTENCY_KEY,),
        body=m.IssueVoucherBody,
        response=m.VoucherOut,
        errors=(400, 401, 403, 409, 413, 415, 503),
    )


def _list(path: str) -> Route:
    return Route(
        "GET",
        path,
        vouchers.list_vouchers,
        "issuer",
        "Live (or revoked) vouchers, newest first",
        parameters=LIST_QUERY,
        response=m.VoucherOut,
        many=True,
        errors=(400, 401, 403, 503),
        headers=vouchers.VOUCHER_LIST_HEADERS,
    )


def _revoke(path: str) -> Route:
    return Route(
        "DELETE",
        path,
        vouchers.revoke_voucher,
        "issuer",
        "Revoke (soft delete) a voucher",
        parameters=(CODE, IDEMPOTENCY_KEY),
        response=m.OkOut,
        errors=(400, 401, 403, 404, 409, 503),
    )


def _checkout(path: str) -> Route:
    return Route(
        "POST",
        path,
        billing.checkout,
        "customer",
        "Check out a plan with addons and an optional promo code for an Organization (its "
        "account pays and is credited); credit first",
        parameters=(IDEMPOTENCY_KEY,),
        body=m.CheckoutBody,
        response=m.CheckoutOut,
        errors=(400, 401, 403, 409, 413, 415, 502, 503),
    )


# Campaigns of generated codes (issue #21).
CAMPAIGN_ID: dict[str, Any] = {
    "name": "campaign_id",
    "in": "path",
    "required": True,
    "description": "the campaign's id (case-insensitive)",
    "schema": {"type": "string", "pattern": f"^[{ALPHABET}{ALPHABET.lower()}]{{6}}$"},
}
REPORT_WINDOW: tuple[dict[str, Any], ...] = tuple(
    {
        "name": name,
        "in": "query",
        "required": False,
        "description": f"the window's {what}: ISO 8601 with a time zone (encode '+' as %2B or "
        "use Z); absent: unbounded",
        "schema": {"type": "string", "format": "date-time"},
    }
    for name, what in (("from", "start (inclusive)"), ("to", "end (exclusive)"))
)
SOVEREIGN_REPORT_QUERY: tuple[dict[str, Any], ...] = (
    {
        "name": "code",
        "in": "query",
        "required": False,
        "description": "only this code (repeatable, at most 1000; normalised like every code)",
        "schema": {"type": "array", "items": {"type": "string", "pattern": CODE_INPUT_PATTERN}},
        "style": "form",
        "explode": True,
    },
    {
        "name": "global",
        "in": "query",
        "required": False,
        "description": "true: only the global vouchers (409 where the hub has no such read "
        "model yet)",
        "schema": {"type": "string", "enum": ["true", "false"]},
    },
    {
        "name": "format",
        "in": "query",
        "required": False,
        "description": "csv: the report as CSV; json (the default)",
        "schema": {"type": "string", "enum": ["json", "csv"]},
    },
)
CAMPAIGN_ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/billing/campaigns",
        campaigns.create_campaign,
        "issuer",
        "Create a campaign of generated codes under one cap and one budget",
        parameters=(IDEMPOTENCY_KEY,),
        body=cm.CreateCampaignBody,
        response=cm.CampaignOut,
        errors=(400, 401, 403, 409, 413, 415, 503),
    ),
    Route(
        "GET",
        "/billing/campaigns",
        campaigns.list_campaigns,
        "issuer",
        "Campaigns with their figures, newest first",
        parameters=(LIST_QUERY[0], LIST_QUERY[1]),
        response=cm.CampaignOut,
        many=True,
        errors=(400, 401, 403, 503),
        headers=LIST_HEADERS,
    ),
    Route(
        "GET",
        "/billing/campaigns/{campaign_id}",
        campaigns.get_campaign,
        "issuer",
        "A campaign, its figures and its redemptions over time",
        parameters=(CAMPAIGN_ID,),
        response=cm.CampaignDetail,
        errors=(400, 401, 403, 404, 503),
    ),
    Route(
        "DELETE",
        "/billing/campaigns/{campaign_id}",
        campaigns.revoke_campaign,
        "issuer",
        "Revoke a campaign and every code of it",
        parameters=(CAMPAIGN_ID, IDEMPOTENCY_KEY),
        response=m.OkOut,
        errors=(400, 401, 403, 404, 409, 503),
    ),
    Route(
        "POST",
        "/billing/campaigns/{campaign_id}/codes",
        campaigns.generate_codes,
        "issuer",
        "Generate up to 100,000 unique codes (idempotent with an Idempotency-Key)",
        parameters=(CAMPAIGN_ID, IDEMPOTENCY_KEY),
        body=cm.GenerateCodesBody,
        response=cm.CodesOut,
        errors=(400, 401, 403, 404, 409, 413, 415, 503),
    ),
    Route(
        "GET",
        "/billing/campaigns/{campaign_id}/codes.csv",
        campaigns.codes_csv,
        "issuer",
        "Every code of the campaign with its state: code, status, redeemed_by, redeemed_at",
        parameters=(CAMPAIGN_ID,),
        ok="text/csv, one row per code in generation order",
        errors=(400, 401, 403, 404, 503),
    ),
    Route(
        "GET",
        "/billing/reports/campaigns",
        reports.campaign_report,
        "issuer",
        "What each campaign (and the single vouchers, and orders without a code) cost and "
        "brought in over [from, to), and this Sovereign's totals; CSV with Accept: text/csv",
        parameters=REPORT_WINDOW,
        response=reports.ReportOut,
        ok="the report; with Accept: text/csv, its rows and then the totals as CSV (a header "
        "line first: sovereign, scope, campaign_id, name and the figures)",
        errors=(400, 401, 403, 503),
        csv=True,
    ),
    Route(
        "GET",
        "/billing/reports/sovereigns",
        sovereign_report.sovereign_report,
        "issuer",
        "The hub only (issue #22): per Sovereign and code, the redemptions standing and "
        "reversed and the credit granted, from the hub's trail of its Sovereigns, then each "
        "Sovereign's totals; CSV with ?format=csv (or Accept: text/csv)",
        parameters=SOVEREIGN_REPORT_QUERY,
        response=sovereign_report.SovereignReportOut,
        ok="the report; as CSV, its rows and then the totals (a header line first: "
        "sovereign, scope, code and the figures)",
        errors=(400, 401, 403, 404, 409, 503),
        csv=True,
    ),
)

# Global vouchers at the hub (issue #22): a 404 on a serve that is not the hub.
GLOBAL_CODE: dict[str, Any] = {
    **CODE,
    "description": "a global voucher's code (" + CODE["description"] + ")",
}
GLOBAL_ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/billing/global-vouchers",
        gv.issue_global,
        "issuer",
        "Issue a global voucher at the hub: one cap across all Sovereigns, a first share "
        "of it allotted to each Sovereign named",
        parameters=(IDEMPOTENCY_KEY,),
        body=gm.IssueGlobalBody,
        response=gm.GlobalOut,
        status=201,
        errors=(400, 401, 403, 404, 409, 413, 415, 503),
    ),
    Route(
        "GET",
        "/billing/global-vouchers",
        gv.list_globals,
        "issuer",
        "Global vouchers with each Sovereign's share, newest first (the hub's read model)",
        parameters=(LIST_QUERY[0], LIST_QUERY[1]),
        response=gm.GlobalOut,
        many=True,
        errors=(400, 401, 403, 404, 503),
        headers=LIST_HEADERS,
    ),
    Route(
        "GET",
        "/billing/global-vouchers/{code}",
        gv.get_global,
        "issuer",
        "A global voucher: its cap, pool and each Sovereign's allotted, released and "
        "redeemed slots",
        parameters=(GLOBAL_CODE,),
        response=gm.GlobalOut,
        errors=(400, 401, 403, 404, 503),
    ),
    Route(
        "POST",
        "/billing/global-vouchers/{code}/revoke",
        gv.revoke_global,
        "issuer",
        "Revoke a global voucher: every Sovereign stops redeeming it once the revocation "
        "reaches it",
        parameters=(GLOBAL_CODE, IDEMPOTENCY_KEY),
        response=m.OkOut,
        errors=(400, 401, 403, 404, 409, 503),
    ),
    Route(
        "POST",
        "/billing/global-vouchers/{code}/recall",
        gv.recall_share,
        "issuer",
        "Ask a Sovereign to give back slots of its share it has not used",
        parameters=(GLOBAL_CODE, IDEMPOTENCY_KEY),
        body=gm.RecallBody,
        response=gm.GlobalOut,
        errors=(400, 401, 403, 404, 409, 413, 415, 503),
    ),
)

ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", ops.healthz, "public", "Liveness", response=m.HealthOut),
    Route(
        "GET",
        "/readyz",
        ops.readyz,
        "public",
        "Readiness: NATS, Postgres, projection lag",
        response=m.ReadyOut,
        described=((503, "not ready"),),
    ),
    Route(
        "GET", "/metrics", ops.metrics, "public", "Prometheus metrics", ok="text/plain exposition"
    ),
    Route("GET", "/openapi.json", ops.openapi, "public", "This document"),
    _issue("/billing/vouchers/issue"),
    _list("/billing/vouchers/list"),
    _revoke("/billing/vouchers/revoke/{code}"),
    Route(
        "POST",
        "/billing/vouchers/redeem-preview",
        vouchers.redeem_preview,
        "public",
        "Public preview of a code (rate-limited per client)",
        body=m.PreviewBody,
        response=m.PreviewOut,
        errors=(400, 404, 413, 415, 429, 503),
        same_body=(
            (
                410,
                "not redeemable now: inactive, at its cap, outside its window, or (a global "
                "code) its share on this Sovereign used up for now (reason)",
            ),
        ),
    ),
    _list("/billing/admin/promos"),
    _issue("/billing/admin/promos"),
    _revoke("/billing/admin/promos/{code}"),
    Route(
        "GET",
        "/billing/vouchers/{code}/history",
        vouchers.voucher_history,
        "issuer",
        "The voucher's audit trail in stream order",
        parameters=(CODE, *PAGE),
        response=m.HistoryOut,
        errors=(400, 401, 403, 404, 503),
    ),
    Route(
        "GET",
        "/billing/vouchers/{code}/redemptions",
        vouchers.voucher_redemptions,
        "issuer",
        "The voucher's redemptions in stream order",
        parameters=(CODE, *PAGE),
        response=m.RedemptionsOut,
        errors=(400, 401, 403, 404, 503),
    ),
    Route(
        "GET",
        "/billing/vouchers/{code}",
        vouchers.get_voucher,
        "issuer",
        "A voucher's full state with counters (now, or ?at= a past time)",
        parameters=(DETAIL_CODE, AT),
        response=m.VoucherDetail,
        errors=(400, 401, 403, 404, 405, 503),
    ),
    *(_checkout(path) for path in billing.CHECKOUT_PATHS),
    Route(
        "POST",
        "/billing/webhook",
        billing.webhook,
        "webhook",
        "Stripe webhook (authenticated by the Stripe-Signature header)",
        parameters=(STRIPE_SIGNATURE,),
        raw_body={"type": "object", "description": "a Stripe event"},
        response=m.WebhookOut,
        errors=(400, 413, 503),
    ),
    Route(
        "GET",
        "/billing/balance",
        billing.balance,
        "customer",
        "An Organization's credit: available, reserved, and the 20 newest movements",
        parameters=(TENANT_QUERY,),
        response=m.BalanceOut,
        errors=(400, 401, 403, 503),
    ),
    Route(
        "GET",
        "/billing/admin/orders",
        billing.admin_orders,
        "issuer",
        "Newest orders with their status",
        parameters=ORDERS_QUERY,
        response=m.OrderOut,
        many=True,
        errors=(400, 401, 403, 503),
        headers=LIST_HEADERS,
    ),
    Route(
        "GET",
        "/billing/admin/settings",
        admin.get_settings,
        "superadmin",
        "The Stripe keys in force, masked (last four characters), and where each comes from",
        response=m.AdminSettingsOut,
        errors=(401, 403, 503),
    ),
    Route(
        "PUT",
        "/billing/admin/settings",
        admin.put_settings,
        "superadmin",
        'Set or clear Stripe keys (absent keeps, "" clears); secrets stored encrypted',
        body=m.AdminSettingsBody,
        response=m.OkOut,
        errors=(400, 401, 403, 413, 415, 503),
    ),
    Route(
        "GET",
        "/billing/admin/revenue",
        admin.revenue,
        "issuer",
        "MRR (each active subscription once, at its price per month), customers, new this "
        "month, active subscriptions",
        response=m.RevenueOut,
        errors=(401, 403, 503),
    ),
    *(
        Route(
            "GET",
            path,
            subscriptions.get_subscription,
            "customer",
            "The Organization's subscription (without a tenant: the caller's latest one)",
            parameters=params,
            response=m.SubscriptionOut,
            errors=(400, 401, 403, 404, 503),
        )
        for path, params in (
            ("/billing/subscription", ()),
            ("/billing/subscription/{tenant_id}", (TENANT_PATH,)),
        )
    ),
    *(
        Route(
            "GET",
            path,
            subscriptions.list_invoices,
            "customer",
            "The Organization's invoices, newest first (without a tenant: every Organization "
            "the caller ordered for)",
            parameters=params,
            response=m.InvoiceOut,
            many=True,
            errors=(400, 401, 403, 503),
        )
        for path, params in (
            ("/billing/invoices", ()),
            ("/billing/invoices/{tenant_id}", (TENANT_PATH,)),
        )
    ),
    Route(
        "POST",
        "/billing/portal/{tenant_id}",
        subscriptions.create_portal,
        "customer",
        "A Stripe billing-portal session for the Organization's Stripe customer",
        parameters=(TENANT_PATH,),
        response=m.PortalOut,
        errors=(400, 401, 403, 404, 502, 503),
    ),
    *CAMPAIGN_ROUTES,
    *GLOBAL_ROUTES,
    Route(
        "GET",
        "/billing/catalog",
        billing.catalog,
        "public",
        "The plans and addons a checkout may name, with their prices (what a marketplace "
        "shows before sign-in)",
        response=m.CatalogOut,
        errors=(503,),
    ),
)


def add_routes(router: web.UrlDispatcher, routes: tuple[Route, ...] = ROUTES) -> None:
    for route in routes:
        if route.method == "GET":
            router.add_get(route.path, route.handler)  # and HEAD, as aiohttp does
        else:
            router.add_route(route.method, route.path, route.handler)


def build_openapi(max_credit_omr: int | None = None) -> dict[str, Any]:
    """The OpenAPI document of ``ROUTES``; ``max_credit_omr`` bounds ``credit_omr``."""
    return build_document(ROUTES, __version__, max_credit_omr)


def allowed_methods(routes: tuple[Route, ...] = ROUTES) -> dict[str, str]:
    """Static path -> the Allow header of the methods served there (GET implies HEAD)."""
    methods: dict[str, set[str]] = {}
    for route in routes:
        if "{" not in route.path:
            methods.setdefault(route.path, set()).add(route.method)
    out = {}
    for path, served in methods.items():
        if "GET" in served:
            served.add("HEAD")
        out[path] = ",".join(sorted(served))
    return out
