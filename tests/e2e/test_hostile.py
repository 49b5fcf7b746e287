"""Hostile input against a real ``voucher-ledger serve`` (LOG_LEVEL=DEBUG, JWKS and Stripe
configured): subject injection, JWT attacks, hostile bodies, malformed HTTP, preview
enumeration past the rate limit, forged and replayed Stripe webhooks.

Every attack is answered with a JSON 4xx and changes nothing: the event and command streams'
last sequences and a checksum of every read-model table are the same before and after each
family. The last test reads the servers' whole logs: no JWT secret, bearer token, Stripe key,
webhook secret or Stripe-Signature value in any line.

Figures (attack counts per family and their statuses) are printed with ``pytest -s``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import json
import re
import socket
import time
import urllib.parse
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import connect, stream_state, wait_until
from tests.e2e.api_helpers import SECRET, ApiServer, Reply, assert_json_error, call, running_server
from tests.e2e.checkout_helpers import (
    WEBHOOK_SECRET,
    Shop,
    expired_timestamp,
    new_code,
    start_stripe_checkout,
    stripe_env,
)
from tests.e2e.helpers import leaks
from tests.fakes.stripe_server import FakeStripe, encode_event, sign
from tests.integration.test_jwks import Jwks, Key, b64, hs256_with
from voucher_ledger.http.auth import mint_token
from voucher_ledger.http.server import MALFORMED
from voucher_ledger.service.embedded import free_port

ISSUE = "/billing/vouchers/issue"
LEGACY = "/billing/admin/promos"
PREVIEW = "/billing/vouchers/redeem-preview"
CHECKOUT = "/billing/checkout"
WEBHOOK = "/billing/webhook"
PATH_ROUTES = [
    ("GET", "/billing/vouchers/{code}"),
    ("GET", "/billing/vouchers/{code}/history"),
    ("GET", "/billing/vouchers/{code}/redemptions"),
    ("DELETE", "/billing/vouchers/revoke/{code}"),
    ("DELETE", "/billing/admin/promos/{code}"),
]
TABLES = (
    "vouchers",
    "redemptions",
    "audit_log",
    "wallets",
    "credit_entries",
    "orders",
    "subscription_orders",
    "subscriptions",
    "invoices",
    "billing_settings",
    "projection_checkpoints",
)
JSON = {"Content-Type": "application/json"}
CHECKSUM = (  # table names are ours (TABLES), never input
    "SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) AS h"
    " FROM {table} t"
)


@dataclass
class Hostile:
    """A server under attack, a client, and every secret-bearing value sent to it."""

    server: ApiServer
    session: aiohttp.ClientSession
    stripe: FakeStripe | None = None
    secrets_sent: set[str] = field(default_factory=set)
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)

    def bearer(self, token: str) -> dict[str, str]:
        self.secrets_sent.add(token)
        return {"Authorization": f"Bearer {token}"}

    def issuer(self) -> dict[str, str]:
        return self.bearer(self.server.token())

    def member(self, sub: str = "member-1") -> dict[str, str]:
        return self.bearer(self.server.token(role="member", sub=sub))

    async def send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        return await call(
            self.session,
            method,
            self.server.url(path),
            json_body=json_body,
            data=data,
            headers=headers,
        )

    def record(self, family: str, reply: Reply) -> None:
        self.outcomes[f"{family} {reply.status}"] += 1

    def report(self, family: str) -> str:
        found = {k.split()[1]: n for k, n in self.outcomes.items() if k.split()[0] == family}
        return f"{family}: {sum(found.values())} attacks, statuses {dict(sorted(found.items()))}"


async def snapshot(server: ApiServer, *, commands: bool = True) -> dict[str, Any]:
    """The streams' last sequences and a checksum of every read-model table."""
    state: dict[str, Any] = {}
    nc = await connect(server.nats_url)
    try:
        prefix = server.prefix.upper()
        events = await stream_state(nc, f"{prefix}_EVENTS")
        state["events"] = (events["messages"], events["last_seq"])
        if commands:
            state["commands.last_seq"] = (await stream_state(nc, f"{prefix}_COMMANDS"))["last_seq"]
    finally:
        await nc.close()
    conn = await asyncpg.connect(server.database_url)
    try:
        for table in TABLES:
            row = await conn.fetchrow(CHECKSUM.format(table=table))
            assert row is not None
            state[table] = (row["n"], row["h"])
    finally:
        await conn.close()
    return state


@contextlib.asynccontextmanager
async def nothing_changes(server: ApiServer, *, commands: bool = True) -> AsyncIterator[None]:
    before = await snapshot(server, commands=commands)
    assert before["events"][1] > 0, "the stream has history, so a change would show"
    yield
    assert await snapshot(server, commands=commands) == before


# ------------------------------------------------------------------------------------ servers


@pytest.fixture(scope="module")
def rsa_key() -> Key:
    return Key("kid-1", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def attacker_key() -> Key:
    """Another RSA key that claims the real key's ``kid``."""
    return Key("kid-1", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
async def jwks_url(rsa_key: Key) -> AsyncIterator[str]:
    state = Jwks(keys=[rsa_key])
    app = web.Application()
    app.router.add_get("/certs", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/certs"
    await runner.cleanup()


# NATS credentials as an external NATS takes them (the session's test server has no
# authorization and ignores them): none may reach a log line.
NATS_SECRETS = {
    "NATS_USER": "hostile-service",
    "NATS_PASSWORD": "nats-password-" + "p" * 24,
    "NATS_TOKEN": "nats-token-" + "t" * 24,
}


@pytest.fixture(scope="module")
async def hostile(
    tmp_path_factory: pytest.TempPathFactory,
    nats_url: str,
    pg_url: str,
    jwks_url: str,
    fake_stripe: FakeStripe,
) -> AsyncIterator[Hostile]:
    async with (
        running_server(
            tmp_path_factory.mktemp("hostile"),
            nats_url,
            pg_url,
            "ho",
            LOG_LEVEL="DEBUG",
            JWKS_URL=jwks_url,
            **stripe_env(fake_stripe),
            **NATS_SECRETS,
        ) as server,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
    ):
        h = Hostile(server, session, fake_stripe)
        # history, so that "nothing changed" compares something
        reply = await h.send(
            "POST", ISSUE, json_body={"code": "HOSTILE-1", "credit_omr": 5}, headers=h.issuer()
        )
        assert reply.status == 200, reply
        yield h


@pytest.fixture(scope="module")
async def limited(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str
) -> AsyncIterator[Hostile]:
    """The shipped preview limit (burst 10, 30 per minute), DEBUG logs."""
    async with (
        running_server(
            tmp_path_factory.mktemp("enum"),
            nats_url,
            pg_url,
            "en",
            LOG_LEVEL="DEBUG",
            PREVIEW_BURST="10",
            PREVIEW_RATE_PER_MINUTE="30",
        ) as server,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
    ):
        yield Hostile(server, session)


# --------------------------------------------------------------------------- subject injection

INJECTION_CODES = [
    "a.b",
    "A.B.C",
    "*",
    ">",
    "ABC.>",
    "ABC*",
    "a b",
    "$JS.API.STREAM.DELETE.X",
    "$KV.X.Y",
    "_INBOX.ABC",
    "..",
    "...",
    "ABC.",
    ".ABC",
    "A" * 65,
    "A" * 5000,
    "АВС-123",  # Cyrillic look-alikes
    "ＡＢＣ-123",  # full-width
    "ß" * 3,  # upper-cases to SSSSSS
    "ǅAB",  # title-case digraph
    "ABC\x00",
    "\x00ABC",
    "AB\nC",
    "ABC\r\nX-Injected: 1",
    "AB\tC",
    "ABC\u200b",  # zero-width space
    "ABC\u2028",
    "-ABC",
    "_ABC",
    "AB",
    "ledger.events.voucher.HOSTILE-1",
]


ORDER = {"plan_id": "free", "tenant_id": "t"}


def _quoted(code: str) -> str:
    return urllib.parse.quote(code, safe="")


async def test_codes_aimed_at_subjects_are_refused_on_every_route_and_reach_no_subject(
    hostile: Hostile,
) -> None:
    h = hostile
    async with nothing_changes(h.server):
        for code in INJECTION_CODES:
            bodies = [
                ("POST", ISSUE, {"code": code, "credit_omr": 1}, h.issuer()),
                ("POST", LEGACY, {"code": code, "credit_omr": 1}, h.issuer()),
                ("POST", PREVIEW, {"code": code}, {}),
                (
                    "POST",
                    CHECKOUT,
                    {"plan_id": "free", "tenant_id": "t", "promo_code": code},
                    h.member(),
                ),
            ]
            for method, path, body, headers in bodies:
                reply = await h.send(method, path, json_body=body, headers=headers)
                h.record("injection", reply)
                if path == PREVIEW:  # a code that cannot exist: the unknown code's 404 (#23)
                    assert (reply.status, reply.json) == (404, {"error": "voucher not valid"})
                else:
                    assert_json_error(reply, 400)
            for method, template in PATH_ROUTES:
                path = template.replace("{code}", _quoted(code))
                reply = await h.send(method, path, headers=h.issuer())
                h.record("injection", reply)
                # 404: a segment the router resolves away ("..") is no route at all
                assert reply.status in (400, 404), (code, reply)
                assert_json_error(reply)
                assert code not in reply.text or len(code) < 3
    print(h.report("injection"))


async def event_subjects(server: ApiServer) -> set[str]:
    nc = await connect(server.nats_url)
    try:
        request = json.dumps({"subjects_filter": ">"}).encode()
        stream = f"{server.prefix.upper()}_EVENTS"
        msg = await nc.request(f"$JS.API.STREAM.INFO.{stream}", request, timeout=5)
        return set(json.loads(msg.data)["state"].get("subjects") or {})
    finally:
        await nc.close()


HOSTILE_SUBS = ["a.b", "*", ">", "$JS.API.>", "..", "a b", "ü.ñ", "x" * 256, "_INBOX.x"]


async def test_hostile_ids_in_valid_tokens_and_keys_become_safe_subject_tokens(
    hostile: Hostile,
) -> None:
    """A signed-in customer's ``sub`` and its Organization (``tenant_id``, which names the
    wallet) and an Idempotency-Key (which names a request) hold anything valid:
    whatever they hold, every subject on the event stream is made of safe tokens."""
    h = hostile
    for sub in HOSTILE_SUBS:
        # since issue #20 the wallet is the Organization's: each names its own, as hostile
        order = {**ORDER, "tenant_id": sub[:200]}
        reply = await h.send("POST", CHECKOUT, json_body=order, headers=h.member(sub))
        h.record("ids", reply)
        assert reply.status == 200, (sub, reply)
        assert reply.json["status"] == "completed"
    for sub in ("x" * 257, "a\tb"):
        reply = await h.send("POST", CHECKOUT, json_body=ORDER, headers=h.member(sub))
        h.record("ids", reply)
        assert_json_error(reply, 400)
    code = new_code("IDEM")
    async with nothing_changes(h.server):
        for key in ("a b", "*", ">", "$JS.API", "a/b", "-a", "k" * 129, "ä", ""):
            headers = {**h.issuer(), "Idempotency-Key": key}
            body = {"code": code, "credit_omr": 1}
            reply = await h.send("POST", ISSUE, json_body=body, headers=headers)
            h.record("ids", reply)
            assert_json_error(reply, 400)
    for key in ("a..b", "a.", "a:b.>"[:-1]):  # allowed characters, hashed before any subject
        headers = {**h.issuer(), "Idempotency-Key": key}
        body = {"code": code, "credit_omr": 1}
        first = await h.send("POST", ISSUE, json_body=body, headers=headers)
        again = await h.send("POST", ISSUE, json_body=body, headers=headers)
        assert first.status == again.status == 200, (key, first, again)
        assert first.json == again.json
    safe = re.compile(rf"^{h.server.prefix}\.events\.(voucher|wallet)\.[A-Za-z0-9_-]+$")
    subjects = await event_subjects(h.server)
    assert len(subjects) >= len(HOSTILE_SUBS)
    assert [s for s in subjects if not safe.fullmatch(s)] == []
    print(h.report("ids"), f"| {len(subjects)} event subjects, all safe tokens")


# ------------------------------------------------------------------------------------------ JWT


def _unsigned(payload: dict[str, Any], alg: str = "none") -> str:
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(payload).encode())}."


def _tampered(token: str, **changes: Any) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims.update(changes)
    return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"


def jwt_attacks(rsa_key: Key, attacker: Key) -> dict[str, str]:
    now = int(time.time())
    issuer = {"sub": "mallory", "role": "superadmin", "iat": now, "exp": now + 600}
    secret = SECRET.encode()
    member = mint_token(secret, "mallory", "member")
    kid = {"kid": rsa_key.kid}
    return {
        "alg none": _unsigned(issuer),
        "alg None": _unsigned(issuer, "None"),
        "alg NONE": _unsigned(issuer, "NONE"),
        "HS256 keyed with the RSA public key": hs256_with(rsa_key.public_pem, issuer, kid="kid-1"),
        "HS256 keyed with the JWKS document": hs256_with(
            json.dumps({"keys": [rsa_key.jwk]}).encode(), issuer
        ),
        "expired": mint_token(secret, "mallory", "superadmin", ttl=-3600),
        "missing exp": jwt.encode({"sub": "mallory", "role": "superadmin"}, secret, "HS256"),
        "missing sub": jwt.encode({"role": "superadmin", "exp": now + 600}, secret, "HS256"),
        "blank sub": mint_token(secret, "   ", "superadmin"),
        "non-string sub": jwt.encode(
            {"sub": 42, "role": "superadmin", "exp": now + 600}, secret, "HS256"
        ),
        "tampered role": _tampered(member, role="superadmin"),
        "tampered sub": _tampered(mint_token(secret, "admin", "superadmin"), sub="other"),
        "tampered exp": _tampered(
            mint_token(secret, "admin", "superadmin", ttl=-3600), exp=now + 600
        ),
        "wrong HS256 secret": mint_token(b"w" * 48, "mallory", "superadmin"),
        "HS512 with the right secret": jwt.encode(issuer, secret, "HS512"),
        "HS384 with the right secret": jwt.encode(issuer, secret, "HS384"),
        "RS256 by another key with the known kid": attacker.sign(issuer),
        "RS256 with a jku to the attacker's keys": attacker.sign(
            issuer, jku="http://127.0.0.1:1/certs", x5u="http://127.0.0.1:1/x5"
        ),
        "RS256 with a path-traversal kid": Key("../../../../dev/null", attacker.private).sign(
            issuer
        ),
        "RS256 expired": rsa_key.sign({**issuer, "exp": now - 3600}),
        "RS512 by the real key": jwt.encode(issuer, rsa_key.private, "RS512", headers=kid),
        "PS256 by the real key": jwt.encode(issuer, rsa_key.private, "PS256", headers=kid),
        "nbf in the future": mint_token(secret, "mallory", "superadmin", extra={"nbf": now + 3600}),
        "huge token": "eyJhbGciOiJIUzI1NiJ9." + "A" * 8100 + ".sig",
        "garbage": "not-a-jwt",
        "three dots": "...",
        "empty segments": "..x",
        "base64 noise": b64(uuid.uuid4().bytes * 8),
        "JSON instead of a JWT": '{"alg":"none"}',
    }


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
async def test_jwt_attacks_are_401_and_change_nothing(
    hostile: Hostile, rsa_key: Key, attacker_key: Key, scheme: str
) -> None:
    h = hostile
    genuine_rs256 = rsa_key.sign(
        {"sub": "kc-user", "role": "superadmin", "exp": int(time.time()) + 600}
    )
    listed = await h.send("GET", "/billing/vouchers/list", headers=h.bearer(genuine_rs256))
    assert listed.status == 200, "JWKS is configured: the HS/RS confusion attacks are meaningful"
    attacks = jwt_attacks(rsa_key, attacker_key)
    async with nothing_changes(h.server):
        for name, token in attacks.items():
            h.secrets_sent.add(token)
            headers = {"Authorization": f"{scheme} {token}"}
            code = new_code("JWT")
            for method, path, body in [
                ("POST", ISSUE, {"code": code, "credit_omr": 1}),
                ("DELETE", "/billing/vouchers/revoke/HOSTILE-1", None),
                ("GET", "/billing/vouchers/list", None),
                ("POST", CHECKOUT, {"plan_id": "free", "tenant_id": "t"}),
            ]:
                reply = await h.send(method, path, json_body=body, headers=headers)
                h.record("jwt", reply)
                message = assert_json_error(reply, 401)
                assert reply.headers.get("WWW-Authenticate") == "Bearer", name
                assert token not in reply.text, name
                assert message in {"invalid token", "token expired"} or "authorization" in message
    print(h.report("jwt"))


# -------------------------------------------------------------------------------------- bodies


def _nested(depth: int) -> bytes:
    return b'{"code":"DEEP-1","credit_omr":1,"x":' + b"[" * depth + b"]" * depth + b"}"


def body_attacks() -> list[tuple[str, dict[str, str], bytes, int]]:
    valid = b'{"code":"BODY-OK","credit_omr":1}'
    bomb = gzip.compress(b'{"code":"BOMB-1","credit_omr":1,"x":"' + b"0" * 20_000_000 + b'"}')
    return [
        (
            "over the 64 KiB limit",
            JSON,
            b'{"code":"BIG-1","credit_omr":1,"x":"' + b"x" * 70_000 + b'"}',
            413,
        ),
        ("10,000 levels of nesting", JSON, _nested(10_000), 400),
        ("100,000 levels of nesting", JSON, b"[" * 60_000, 400),
        ("text/plain", {"Content-Type": "text/plain"}, valid, 415),
        ("form encoded", {"Content-Type": "application/x-www-form-urlencoded"}, valid, 415),
        ("multipart", {"Content-Type": "multipart/form-data; boundary=x"}, valid, 415),
        ("no content type", {}, valid, 415),
        ("invalid UTF-8", JSON, b'{"code":"\xff\xfeAB","credit_omr":1}', 400),
        ("UTF-16", JSON, valid.decode().encode("utf-16"), 400),
        ("duplicate keys", JSON, b'{"code":"DUP-1","credit_omr":1,"credit_omr":9999}', 400),
        ("duplicate code keys", JSON, b'{"code":"DUP-2","code":"DUP-3","credit_omr":1}', 400),
        ("huge integer", JSON, b'{"code":"NUM-1","credit_omr":' + b"9" * 5000 + b"}", 400),
        ("1e400", JSON, b'{"code":"NUM-2","credit_omr":1e400}', 400),
        ("NaN", JSON, b'{"code":"NAN-1","credit_omr":NaN}', 400),
        (
            "Infinity in an ignored field",
            JSON,
            b'{"code":"NAN-2","credit_omr":1,"x":Infinity}',
            400,
        ),
        ("-Infinity", JSON, b'{"code":"NAN-3","credit_omr":-Infinity}', 400),
        ("array", JSON, b'[{"code":"ARR-1","credit_omr":1}]', 400),
        ("string", JSON, b'"ARR-2"', 400),
        ("null", JSON, b"null", 400),
        ("trailing garbage", JSON, valid + b"x", 400),
        ("two documents", JSON, valid + valid, 400),
        ("BOM", JSON, b"\xef\xbb\xbf" + valid, 400),
        ("gzip bomb (20 MB inflated)", {**JSON, "Content-Encoding": "gzip"}, bomb, 413),
        ("broken gzip", {**JSON, "Content-Encoding": "gzip"}, b"\x1f\x8b" + b"junk" * 10, 400),
        ("broken deflate", {**JSON, "Content-Encoding": "deflate"}, b"junk" * 10, 400),
        (
            "truncated deflate",
            {**JSON, "Content-Encoding": "deflate"},
            zlib.compress(valid)[:-6],
            400,
        ),
    ]


async def test_hostile_bodies_are_4xx_json_and_change_nothing(hostile: Hostile) -> None:
    h = hostile
    attacks = body_attacks()
    async with nothing_changes(h.server):
        for name, headers, body, status in attacks:
            for path, auth in [(ISSUE, h.issuer()), (PREVIEW, {}), (CHECKOUT, h.member())]:
                # a connection of its own: the server closes one whose body it refused
                sent = {**headers, **auth, "Connection": "close"}
                reply = await h.send("POST", path, data=body, headers=sent)
                h.record("body", reply)
                assert_json_error(reply, status)
                assert reply.status == status, (name, path, reply)
    print(h.report("body"))


# ----------------------------------------------------------------------------- malformed HTTP

MARKER = "Bearer eyJzZWNyZXQtbWFya2Vy"  # what a leaked token would look like


def malformed_requests() -> dict[str, bytes]:
    marker = MARKER.encode()
    token = marker.replace(b" ", b"")
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    post = b"POST /billing/vouchers/issue HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    return {
        "control character in Authorization": head + b"Authorization: " + marker + b"\x01\r\n\r\n",
        "DEL in Authorization": head + b"Authorization: " + marker + b"\x7f\r\n\r\n",
        "NUL in a header value": head + b"X-Token: " + marker + b"\x00\r\n\r\n",
        "bare LF line ending": b"GET /healthz HTTP/1.1\nAuthorization: " + marker + b"\x02\n\n",
        "space before colon": head + b"Authorization : " + marker + b"\r\n\r\n",
        "header without colon": head + marker + b"\r\n\r\n",
        "obsolete line folding": head + b"X-A: 1\r\n " + marker + b"\r\n\r\n",
        "invalid method": token + b" / HTTP/1.1\r\n\r\n",
        "binary garbage": b"\x16\x03\x01\x00\xa5" + marker + b"\r\n\r\n",
        "NUL in the path": b"GET /billing/vouchers/"
        + marker.replace(b" ", b"")
        + b"\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        "bad HTTP version": b"GET /healthz?t="
        + marker.replace(b" ", b"")
        + b" HTTP/9.9\r\nHost: x\r\n\r\n",
        "request line over 8 KiB": b"GET /"
        + marker.replace(b" ", b"")
        + b"a" * 9000
        + b" HTTP/1.1\r\n\r\n",
        "header over 8 KiB": head + b"Authorization: " + marker + b"A" * 9000 + b"\r\n\r\n",
        "negative Content-Length": post
        + b"Authorization: "
        + marker
        + b"\r\nContent-Length: -1\r\n\r\n",
        "two Content-Lengths": post
        + b"Content-Length: 2\r\nContent-Length: 3\r\nX-T: "
        + marker
        + b"\r\n\r\n{}",
        "Content-Length with Transfer-Encoding": post
        + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\nX-T: "
        + marker
        + b"\r\n\r\n0\r\n\r\n",
        "bad chunk size": post
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + marker.replace(b" ", b"")
        + b"\r\n{}\r\n0\r\n\r\n",
        "unknown Content-Encoding": post
        + b"Content-Encoding: br\r\nContent-Length: 2\r\nX-T: "
        + marker
        + b"\r\n\r\n{}",
    }


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


async def test_malformed_http_is_a_json_400_that_echoes_nothing(hostile: Hostile) -> None:
    h = hostile
    h.secrets_sent.add(MARKER)
    async with nothing_changes(h.server):
        for name, data in malformed_requests().items():
            raw = await asyncio.to_thread(raw_request, h.server.port, data)
            head, _, body = raw.partition(b"\r\n\r\n")
            status_line = head.split(b"\r\n")[0]
            assert status_line.split()[1:2] == [b"400"], (name, raw[:300])
            assert b"content-type: application/json" in head.lower(), (name, head)
            assert json.loads(body) == {"error": MALFORMED}, (name, body)
            assert b"eyJzZWNyZXQtbWFya2Vy" not in raw, name
            h.outcomes["malformed 400"] += 1
    print(h.report("malformed"))


# ------------------------------------------------------------------------ preview enumeration


async def test_preview_enumeration_is_cut_off_and_leaks_nothing_past_the_limit(
    limited: Hostile,
) -> None:
    h = limited
    live, gone = new_code("LIVE"), new_code("GONE")
    for code in (live, gone):
        reply = await h.send(
            "POST", ISSUE, json_body={"code": code, "credit_omr": 7}, headers=h.issuer()
        )
        assert reply.status == 200, reply
    reply = await h.send("DELETE", f"/billing/vouchers/revoke/{gone}", headers=h.issuer())
    assert reply.status == 200, reply
    async with nothing_changes(h.server):
        # inside the burst: revoked and unknown are the same 404, byte for byte
        revoked = await h.send("POST", PREVIEW, json_body={"code": gone})
        unknown = await h.send("POST", PREVIEW, json_body={"code": new_code("NONE")})
        assert (
            (revoked.status, revoked.text)
            == (unknown.status, unknown.text)
            == (
                404,
                '{"error": "voucher not valid"}',
            )
        )
        started = time.monotonic()
        statuses = []
        for i in range(200):
            forged = {
                "X-Forwarded-For": f"10.{i % 250}.{i // 250}.1",
                "X-Real-IP": f"10.9.9.{i % 250}",
            }
            reply = await h.send(
                "POST", PREVIEW, json_body={"code": new_code("ENUM")}, headers=forged
            )
            h.record("enumeration", reply)
            statuses.append(reply.status)
            if reply.status == 429:
                assert reply.headers.get("Retry-After", "").isdigit(), reply.headers
                assert reply.json == {
                    "error": "too many requests",
                    "retry_after": int(reply.headers["Retry-After"]),
                }
        elapsed = time.monotonic() - started
        refilled = int(elapsed * 30 / 60) + 1
        assert statuses.count(404) <= 8 + refilled, statuses  # 10 minus the two above
        assert statuses.count(429) >= 200 - 8 - refilled
        assert set(statuses) <= {404, 429}
        # past the limit a live code tells nothing either: the same 429 as an unknown one
        for code in (live, gone, "NO-SUCH-CODE"):
            reply = await h.send("POST", PREVIEW, json_body={"code": code})
            assert reply.status == 429, reply
            assert "credit" not in reply.text
        # the limit is per client: another address has its own burst
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as other:
            reply = await call(other, "POST", h.server.url(PREVIEW), json_body={"code": live})
            assert reply.status == 200, reply
    print(h.report("enumeration"))


# ----------------------------------------------------------------------------------- webhooks


async def test_forged_stale_oversized_and_replayed_webhooks_change_nothing(
    hostile: Hostile,
) -> None:
    h = hostile
    assert h.stripe is not None
    shop = Shop(h.server, h.session)
    _, _, order_id, session_id = await start_stripe_checkout(shop, h.stripe, 3)
    event = h.stripe.event("checkout.session.completed", session_id, payment_status="paid")
    body = encode_event(event)
    now = int(time.time())
    good = sign(body, WEBHOOK_SECRET)
    _, good_mac = good.split(",v1=")
    big = encode_event({**event, "padding": "x" * (1024 * 1024)})
    attacks: list[tuple[str, bytes, str | None, int]] = [
        ("no signature header", body, None, 400),
        ("empty signature", body, "", 400),
        ("forged MAC", body, f"t={now},v1={'0' * 64}", 400),
        ("wrong secret", body, sign(body, "whsec_attacker_" + "a" * 32), 400),
        ("stale timestamp (301 s)", body, sign(body, WEBHOOK_SECRET, expired_timestamp()), 400),
        # `now` is truncated to the second and the request goes out later: + 302 stays more
        # than the 300 s tolerance ahead of the server's clock for a second after `now`.
        ("timestamp over 300 s ahead", body, sign(body, WEBHOOK_SECRET, now + 302), 400),
        ("right MAC, other timestamp", body, f"t={now - 1},v1={good_mac}", 400),
        ("v0 scheme only", body, good.replace("v1=", "v0="), 400),
        ("no timestamp", body, f"v1={good_mac}", 400),
        ("tampered body", body.replace(b'"paid"', b'"free"'), good, 400),
        ("event id swapped", body.replace(event["id"].encode(), b"evt_other"), good, 400),
        ("over 1 MiB, signed", big, sign(big, WEBHOOK_SECRET), 413),
        ("not JSON, signed", b"not json", sign(b"not json", WEBHOOK_SECRET), 400),
        ("JSON array, signed", b"[1]", sign(b"[1]", WEBHOOK_SECRET), 400),
        (
            "NUL in the event id, signed",
            b'{"id":"evt_\\u0000"}',
            sign(b'{"id":"evt_\\u0000"}', WEBHOOK_SECRET),
            400,
        ),
        ("invalid UTF-8, signed", b"\xff\xfe", sign(b"\xff\xfe", WEBHOOK_SECRET), 400),
    ]
    async with nothing_changes(h.server):
        for name, payload, header, status in attacks:
            headers = {"Content-Type": "application/json"}
            if header is not None:
                headers["Stripe-Signature"] = header
                h.secrets_sent.add(header)
            reply = await h.send("POST", WEBHOOK, data=payload, headers=headers)
            h.record("webhook", reply)
            assert_json_error(reply, status)
            assert reply.status == status, (name, reply)
    h.secrets_sent.add(good)
    first = await h.send("POST", WEBHOOK, data=body, headers={**JSON, "Stripe-Signature": good})
    assert first.status == 200, first

    async def completed() -> bool:
        return bool(
            await shop.db(
                "SELECT 1 FROM orders WHERE order_id = $1 AND status = 'completed'", order_id
            )
        )

    await wait_until(completed, what="the genuine event completes the order")
    await wait_until(lambda: _projected(h.server), what="projections caught up")
    # A captured genuine event replayed, ten times at once, within the tolerance: one effect.
    async with nothing_changes(h.server, commands=False):
        replies = await asyncio.gather(
            *(
                h.send("POST", WEBHOOK, data=body, headers={**JSON, "Stripe-Signature": good})
                for _ in range(10)
            )
        )
        for reply in replies:
            h.record("webhook-replay", reply)
            assert reply.status == 200, reply
    print(h.report("webhook"), "|", h.report("webhook-replay"))


async def _projected(server: ApiServer) -> bool:
    state = await snapshot(server, commands=False)
    conn = await asyncpg.connect(server.database_url)
    try:
        low = await conn.fetchval("SELECT min(last_seq) FROM projection_checkpoints")
    finally:
        await conn.close()
    return bool(low is not None and low >= state["events"][1])


# --------------------------------------------------------------------------------------- logs


async def test_no_log_line_holds_a_secret_or_a_bearer_token(
    hostile: Hostile, limited: Hostile
) -> None:
    """Runs last: the DEBUG logs of both servers after every attack above."""
    assert hostile.stripe is not None
    secrets = {
        SECRET,
        hostile.stripe.api_key,
        WEBHOOK_SECRET,
        NATS_SECRETS["NATS_PASSWORD"],
        NATS_SECRETS["NATS_TOKEN"],
        *hostile.secrets_sent,
        *limited.secrets_sent,
        *hostile.server.tokens.values(),
        *limited.server.tokens.values(),
    }
    for h in (hostile, limited):
        log = h.server.process.output()
        assert " DEBUG " in log, "the attacks ran with DEBUG logging"
        assert leaks(log, secrets) == []
        assert "unhandled error" not in log
        assert "Traceback" not in log
    print(f"logs: {len(secrets)} secrets and tokens checked against every log line of 2 servers")
