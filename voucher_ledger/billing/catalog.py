"""The catalog: plans and addons with whole-OMR prices, from a YAML file or the seed's catalog
service (``GET {CATALOG_URL}/catalog/plans`` and ``/catalog/addons``).

Pricing fails closed: an unknown plan or addon is an error (the seed priced unknown addons, and
every addon during a catalog outage, at 0: B7).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from voucher_ledger.ledger.events import OrderLine
from voucher_ledger.ledger.money import BAISA

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"


class CatalogError(Exception):
    """The request names something the catalog does not sell (a 400)."""


class CatalogUnavailable(Exception):
    """The catalog could not be read (a 503: nothing was written)."""


class _Item(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: StrictStr = Field(pattern=_ID)
    name: StrictStr = ""
    price_omr: StrictInt = Field(ge=0, le=1_000_000)


class Plan(_Item):
    stripe_price_id: StrictStr | None = None


class Addon(_Item):
    pass


@dataclass(frozen=True)
class Catalog:
    plans: dict[str, Plan]
    addons: dict[str, Addon]

    @classmethod
    def build(cls, plans: Sequence[Any], addons: Sequence[Any]) -> Catalog:
        try:
            parsed_plans = [Plan.model_validate(p) for p in plans]
            parsed_addons = [Addon.model_validate(a) for a in addons]
        except ValidationError as exc:
            raise ValueError(f"invalid catalog: {exc.errors(include_url=False)[0]}") from exc
        for kind, items in (("plan", parsed_plans), ("addon", parsed_addons)):
            ids = [i.id for i in items]
            if len(ids) != len(set(ids)):
                raise ValueError(f"invalid catalog: a {kind} id appears twice")
        return cls({p.id: p for p in parsed_plans}, {a.id: a for a in parsed_addons})

    def price(self, plan_id: str, addons: Sequence[str]) -> list[OrderLine]:
        """The order lines (plan first, addons in request order), or CatalogError."""
        plan = self.plans.get(plan_id)
        if plan is None:
            raise CatalogError(f"unknown plan {plan_id!r}")
        lines = [
            OrderLine(
                kind="plan",
                id=plan.id,
                name=plan.name or plan.id,
                amount_baisa=plan.price_omr * BAISA,
            )
        ]
        if len(set(addons)) != len(addons):
            raise CatalogError("an addon is listed twice")
        for addon_id in addons:
            addon = self.addons.get(addon_id)
            if addon is None:
                raise CatalogError(f"unknown addon {addon_id!r}")
            lines.append(
                OrderLine(
                    kind="addon",
                    id=addon.id,
                    name=addon.name or addon.id,
                    amount_baisa=addon.price_omr * BAISA,
                )
            )
        return lines


class CatalogSource(Protocol):
    async def get(self) -> Catalog: ...

    async def close(self) -> None: ...


def sample_catalog_path() -> Path:
    return Path(str(resources.files("voucher_ledger.billing") / "catalog.yaml"))


class FileCatalog:
    """A YAML file ``{plans: [...], addons: [...]}``, read once at start (a bad file stops it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read catalog {path}: {exc}") from exc
        if not isinstance(doc, dict):
            raise ValueError(f"catalog {path}: expected a mapping with plans and addons")
        self._catalog = Catalog.build(doc.get("plans") or [], doc.get("addons") or [])

    async def get(self) -> Catalog:
        return self._catalog

    async def close(self) -> None:
        return None


class HttpCatalog:
    """The seed's catalog service, cached for ``ttl`` seconds; a failed fetch is an outage (503),
    never an empty or zero-priced catalog."""

    def __init__(self, base_url: str, *, timeout: float = 3.0, ttl: float = 30.0) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ttl = ttl
        self._cached: tuple[float, Catalog] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    async def _fetch(self, path: str) -> list[Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(f"{self._base}{path}") as resp:
                if resp.status != 200:
                    raise CatalogUnavailable(f"catalog returned {resp.status} for {path}")
                doc = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise CatalogUnavailable(f"catalog request failed for {path}: {exc!r}") from exc
        if not isinstance(doc, list):
            raise CatalogUnavailable(f"catalog {path}: expected a JSON array")
        return doc

    async def get(self) -> Catalog:
        async with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self._ttl:
                return self._cached[1]
            plans = await self._fetch("/catalog/plans")
            addons = await self._fetch("/catalog/addons")
            try:
                catalog = Catalog.build(plans, addons)
            except ValueError as exc:
                raise CatalogUnavailable(str(exc)) from exc
            self._cached = (now, catalog)
            return catalog

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
