"""The route table is the one source of the router and of /openapi.json: an operation cannot be
served undocumented, nor documented unserved."""

from __future__ import annotations

import json

from aiohttp import web

from voucher_ledger.config.settings import Settings
from voucher_ledger.http.app import create_app
from voucher_ledger.http.keys import OPENAPI_JSON
from voucher_ledger.http.pages import PAGE_ROUTES
from voucher_ledger.http.routes import ROUTES, allowed_methods, build_openapi
from voucher_ledger.ledger.money import BAISA


def _app() -> web.Application:
    return create_app(Settings(JWT_SECRET="t" * 40), components=False)  # type: ignore[call-arg]


def _routed(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def _documented(document: dict[str, object]) -> set[tuple[str, str]]:
    paths = document["paths"]
    assert isinstance(paths, dict)
    return {(method, path) for path, ops in paths.items() for method in ops}


def test_every_routed_operation_is_documented_and_every_documented_one_is_routed() -> None:
    app = _app()
    document = json.loads(app[OPENAPI_JSON])
    routed = _routed(app) - PAGE_ROUTES
    assert routed == _documented(document)
    assert len(routed) == len(ROUTES)  # one declaration per operation, none twice


async def _undeclared(request: web.Request) -> web.Response:
    return web.Response()


def test_a_route_added_beside_the_table_is_caught() -> None:
    app = _app()
    app.router.add_get("/billing/undeclared", _undeclared)
    document = json.loads(app[OPENAPI_JSON])
    assert _routed(app) - PAGE_ROUTES != _documented(document)


def test_the_served_document_is_the_tables_with_the_configured_credit_limit() -> None:
    settings = Settings(JWT_SECRET="t" * 40, MAX_CREDIT_BAISA=7_000)  # type: ignore[call-arg]
    app = create_app(settings, components=False)
    served = json.loads(app[OPENAPI_JSON])
    assert served == build_openapi(max_credit_omr=7_000 // BAISA)
    credit = served["components"]["schemas"]["IssueVoucherBody"]["properties"]["credit_omr"]
    assert credit["maximum"] == 7


def test_the_allow_header_of_a_static_path_names_the_methods_routed_there() -> None:
    allowed = allowed_methods()
    assert allowed["/billing/admin/promos"] == "GET,HEAD,POST"
    assert allowed["/billing/vouchers/issue"] == "POST"
    assert "/billing/vouchers/{code}" not in allowed
