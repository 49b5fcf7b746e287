"""The catalog: the seed's catalog service shapes over HTTP, and YAML files; pricing fails
closed (B7: the seed priced unknown addons, and all addons during an outage, at 0)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from voucher_ledger.billing.catalog import (
    CatalogError,
    CatalogUnavailable,
    FileCatalog,
    HttpCatalog,
    sample_catalog_path,
)
from voucher_ledger.config.errors import StartupError
from voucher_ledger.config.settings import Settings
from voucher_ledger.service.embedded import free_port
from voucher_ledger.service.stack import make_catalog

PLANS = [
    {"id": "starter", "stripe_price_id": "price_1", "price_omr": 9},
    {"id": "pro", "stripe_price_id": "", "price_omr": 29, "name": "Pro"},
]
ADDONS = [{"id": "backup", "price_omr": 3}]


class CatalogService:
    def __init__(self) -> None:
        self.plans: Any = PLANS
        self.addons: Any = ADDONS
        self.status = 200
        self.hits = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        body = self.plans if request.path.endswith("plans") else self.addons
        return web.json_response(body, status=self.status)


@pytest.fixture
async def catalog_service() -> AsyncIterator[tuple[CatalogService, str]]:
    service = CatalogService()
    app = web.Application()
    app.router.add_get("/catalog/plans", service.handle)
    app.router.add_get("/catalog/addons", service.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield service, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_http_catalog_prices_with_the_seed_shapes(
    catalog_service: tuple[CatalogService, str],
) -> None:
    service, url = catalog_service
    source = HttpCatalog(url, ttl=60)
    try:
        catalog = await source.get()
        lines = catalog.price("pro", ["backup"])
        assert [(line.kind, line.id, line.name, line.amount_baisa) for line in lines] == [
            ("plan", "pro", "Pro", 29_000),
            ("addon", "backup", "backup", 3_000),
        ]
        with pytest.raises(CatalogError, match="unknown addon"):
            catalog.price("starter", ["backup", "ghost"])
        with pytest.raises(CatalogError, match="unknown plan"):
            catalog.price("ghost", [])
        hits = service.hits
        await source.get()
        assert service.hits == hits  # cached within the ttl
    finally:
        await source.close()


@pytest.mark.parametrize(
    ("status", "plans", "addons"),
    [
        (500, PLANS, ADDONS),
        (200, {"not": "a list"}, ADDONS),
        (200, PLANS, [{"id": "backup", "price_omr": -1}]),
        (200, PLANS, [{"id": "backup", "price_omr": "3"}]),
        (200, [*PLANS, PLANS[0]], ADDONS),
    ],
)
async def test_a_catalog_outage_or_bad_data_is_unavailable_never_free(
    catalog_service: tuple[CatalogService, str], status: int, plans: Any, addons: Any
) -> None:
    service, url = catalog_service
    service.status, service.plans, service.addons = status, plans, addons
    source = HttpCatalog(url, ttl=0)
    try:
        with pytest.raises(CatalogUnavailable):
            await source.get()
    finally:
        await source.close()


async def test_an_unreachable_catalog_is_unavailable() -> None:
    source = HttpCatalog(f"http://127.0.0.1:{free_port()}", timeout=1)
    try:
        with pytest.raises(CatalogUnavailable):
            await source.get()
    finally:
        await source.close()


async def test_the_sample_catalog_ships_and_has_a_free_plan() -> None:
    catalog = await FileCatalog(sample_catalog_path()).get()
    assert catalog.plans["free"].price_omr == 0
    assert catalog.price("starter", ["backup"])[1].amount_baisa == 3_000


@pytest.mark.parametrize(
    "text",
    [
        "plans: [{id: a, price_omr: 1.5}]",
        "plans: [{id: 'a b', price_omr: 1}]",
        "- just a list",
        "plans: [{id: a, price_omr: 1}, {id: a, price_omr: 2}]",
        "{{{",
    ],
)
def test_a_bad_catalog_file_stops_the_service_with_a_clear_message(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    with pytest.raises(StartupError, match="catalog"):
        make_catalog(Settings(CATALOG_FILE=path))  # type: ignore[call-arg]


def test_catalog_url_and_file_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="not both"):
        make_catalog(
            Settings(CATALOG_FILE=sample_catalog_path(), CATALOG_URL="http://x")  # type: ignore[call-arg]
        )
