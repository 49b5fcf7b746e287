"""The application's typed keys: what a handler may take from ``request.app``."""

from __future__ import annotations

from aiohttp import web

from voucher_ledger.http.metrics import Metrics
from voucher_ledger.http.ratelimit import RateLimiter
from voucher_ledger.service.stack import Stack

STACK = web.AppKey("stack", Stack)
METRICS = web.AppKey("metrics", Metrics)
LIMITER = web.AppKey("preview_limiter", RateLimiter)
