"""A local fake of the Stripe API, enough for Checkout Sessions, for the real ``stripe`` SDK to
talk to (its API base pointed here by STRIPE_API_BASE), plus Stripe's webhook signing scheme.

It records every request (headers and decoded form parameters), honours ``Idempotency-Key``
as Stripe does (same key: the same response, no second session) and can be told to fail.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from voucher_ledger.service.embedded import free_port

_KEY_PART = re.compile(r"[^\[\]]+")


def decode_form(body: str) -> dict[str, Any]:
    """Stripe's nested form encoding (``a[b][0][c]=v``) back into dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = _KEY_PART.findall(key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    if isinstance(node, dict):
        if node and all(k.isdigit() for k in node):
            return [_lists(node[k]) for k in sorted(node, key=int)]
        return {k: _lists(v) for k, v in node.items()}
    return node


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    params: dict[str, Any]


@dataclass
class FakeStripe:
    api_key: str = "sk_test_fake_" + "k" * 24
    requests: list[Recorded] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    _idempotent: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    _failures: list[tuple[int, str]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, status: int, message: str = "fake failure", times: int = 1) -> None:
        self._failures.extend([(status, message)] * times)

    def session_creates(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/v1/checkout/sessions"]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/checkout/sessions", self._create_session)
        app.router.add_post("/v1/billing_portal/sessions", self._create_portal_session)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _unknown(self, request: web.Request) -> web.Response:
        return _error(404, f"Unrecognized request URL ({request.method}: {request.path})")

    async def _create_session(self, request: web.Request) -> web.Response:
        body = await request.text()
        params = decode_form(body)
        self.requests.append(Recorded(request.method, request.path, dict(request.headers), params))
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Invalid API Key provided", "authentication_error")
        key = request.headers.get("Idempotency-Key")
        if key is not None and key in self._idempotent:
            status, payload = self._idempotent[key]
            return web.json_response(
                payload, status=status, headers={"Idempotent-Replayed": "true"}
            )
        if self._failures:
            status, message = self._failures.pop(0)
            return _error(
                status, message, "api_error" if status >= 500 else "invalid_request_error"
            )
        items = params.get("line_items") or []
        total = sum(int(i["price_data"]["unit_amount"]) * int(i.get("quantity", 1)) for i in items)
        session_id = f"cs_test_{uuid.uuid4().hex}"
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": params.get("mode"),
            "status": "open",
            "payment_status": "unpaid",
            "amount_total": total,
            "currency": items[0]["price_data"]["currency"] if items else None,
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata") or {},
            "success_url": params.get("success_url"),
            "cancel_url": params.get("cancel_url"),
            "url": f"https://checkout.stripe.test/c/pay/{session_id}",
            "customer": f"cus_test_{uuid.uuid4().hex[:14]}"
            if params.get("customer_creation") == "always"
            else None,
            "invoice_metadata": (
                (params.get("invoice_creation") or {}).get("invoice_data") or {}
            ).get("metadata"),
            "created": int(time.time()),
            "livemode": False,
        }
        self.sessions[session_id] = session
        if key is not None:
            self._idempotent[key] = (200, session)
        return web.json_response(session)

    def portal_creates(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/v1/billing_portal/sessions"]

    async def _create_portal_session(self, request: web.Request) -> web.Response:
        params = decode_form(await request.text())
        self.requests.append(Recorded(request.method, request.path, dict(request.headers), params))
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Invalid API Key provided", "authentication_error")
        if self._failures:
            status, message = self._failures.pop(0)
            return _error(
                status, message, "api_error" if status >= 500 else "invalid_request_error"
            )
        if not params.get("customer"):
            return _error(400, "Missing required param: customer.")
        portal_id = f"bps_test_{uuid.uuid4().hex}"
        return web.json_response(
            {
                "id": portal_id,
                "object": "billing_portal.session",
                "customer": params["customer"],
                "return_url": params.get("return_url"),
                "url": f"https://billing.stripe.test/p/session/{portal_id}",
                "created": int(time.time()),
                "livemode": False,
            }
        )

    def invoice_event(
        self, etype: str, session_id: str, invoice_id: str | None = None, **changes: Any
    ) -> dict[str, Any]:
        """``invoice.paid`` / ``invoice.payment_failed`` for the invoice Stripe makes of one of
        this fake's sessions (its ``invoice_creation`` metadata, a customer of its own)."""
        session = self.sessions[session_id]
        metadata = dict(session.get("invoice_metadata") or {})
        paid = etype == "invoice.paid"
        invoice = {
            "id": invoice_id or f"in_test_{uuid.uuid4().hex[:16]}",
            "object": "invoice",
            "customer": session["customer"],
            "currency": session["currency"],
            "amount_due": session["amount_total"],
            "amount_paid": session["amount_total"] if paid else 0,
            "status": "paid" if paid else "open",
            "period_start": session["created"],
            "period_end": session["created"],
            "invoice_pdf": f"https://files.stripe.test/{session_id}.pdf",
            "metadata": metadata,
            **changes,
        }
        return {
            "id": f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "api_version": "2026-10-28.endive",
            "created": int(time.time()),
            "type": etype,
            "livemode": False,
            "data": {"object": invoice},
        }

    def event(self, etype: str, session_id: str, **changes: Any) -> dict[str, Any]:
        """A Stripe event about one of this fake's sessions, as Stripe would send it."""
        obj = {**self.sessions[session_id], **changes}
        return {
            "id": f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "api_version": "2026-10-28.endive",
            "created": int(time.time()),
            "type": etype,
            "livemode": False,
            "data": {"object": obj},
        }


def _error(status: int, message: str, etype: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"type": etype, "message": message}}, status=status)


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header: HMAC-SHA256 of ``"<t>.<payload>"`` with the endpoint
    secret, as Stripe computes it."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def encode_event(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()
