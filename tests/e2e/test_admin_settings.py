"""GET/PUT /billing/admin/settings (the seed's E7/E8, issue #23): the Stripe keys an operator
sets from the seed's admin UI. A real ``voucher-ledger serve``, the real ``stripe`` SDK against
the local fake Stripe server.

What is proven: superadmin only; the seed's answer shape; secrets masked (last four), stored
encrypted (the event stream, the service's logs and every row of the database are searched for
them, in clear and hex-encoded), used by checkout and the webhook when no environment variable
is set; environment variables win and the answer says so; a PUT is a patch (the seed's B15:
saving the publishable key alone erased both secrets); bad input is a 400 that repeats no
secret and changes nothing.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from tests.conftest import connect, wait_until
from tests.e2e.api_helpers import assert_json_error
from tests.e2e.checkout_helpers import Shop, new_customer, shop
from tests.fakes.stripe_server import FakeStripe
from voucher_ledger.billing.admin_settings import KEY_FILE, resolve_cipher
from voucher_ledger.config.errors import StartupError
from voucher_ledger.config.settings import Settings

SETTINGS = "/billing/admin/settings"
SECRET_KEY = "sk_test_stored_" + "s" * 20 + "Q7x9"
WEBHOOK_SECRET = "whsec_stored_" + "w" * 20 + "Hk3m"
PUBLIC_KEY = "pk_test_stored_" + "p" * 20
ENV_SECRET_KEY = "sk_test_env_" + "e" * 20 + "EnV1"
SETTINGS_KEYS = {
    "stripe_secret_key_configured",
    "stripe_webhook_secret_configured",
    "stripe_secret_key_last4",
    "stripe_webhook_secret_last4",
    "stripe_public_key",
    "updated_at",
    "stripe_secret_key_source",
    "stripe_webhook_secret_source",
    "stripe_public_key_source",
    "secrets_storable",
}


@pytest.fixture(scope="module")
async def stripe_stored() -> AsyncIterator[FakeStripe]:
    """A fake Stripe that only accepts the key stored through the settings."""
    fake = FakeStripe(api_key=SECRET_KEY)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
async def stripe_env_key() -> AsyncIterator[FakeStripe]:
    """A fake Stripe that only accepts the key from the environment."""
    fake = FakeStripe(api_key=ENV_SECRET_KEY)
    await fake.start()
    yield fake
    await fake.stop()


def _env(fake: FakeStripe, **more: str) -> dict[str, str]:
    return {
        "STRIPE_API_BASE": fake.base,
        "SETTINGS_KEY": Fernet.generate_key().decode(),
        "LOG_LEVEL": "DEBUG",  # the most the logs ever say
        **more,
    }


@pytest.fixture(scope="module")
async def stored(
    tmp_path_factory: pytest.TempPathFactory,
    nats_url: str,
    pg_url: str,
    stripe_stored: FakeStripe,
) -> AsyncIterator[Shop]:
    """No STRIPE_* variable: the keys come from the settings."""
    async with shop(
        tmp_path_factory.mktemp("stored"), nats_url, pg_url, "setstored", **_env(stripe_stored)
    ) as s:
        yield s


async def _get(s: Shop) -> dict[str, Any]:
    reply = await s.request("GET", SETTINGS)
    assert reply.status == 200, reply
    body: dict[str, Any] = reply.json
    assert set(body) == SETTINGS_KEYS
    return body


async def _put(s: Shop, body: dict[str, Any]) -> None:
    reply = await s.request("PUT", SETTINGS, json_body=body)
    assert (reply.status, reply.json) == (200, {"ok": True}), reply


async def _signed_paid_event(s: Shop, fake: FakeStripe, secret: str) -> tuple[str, int]:
    """Check out a 29 OMR plan (no credit), then deliver Stripe's payment event signed with
    ``secret``: (order id, webhook status)."""
    sub = new_customer()
    reply = await s.checkout(sub, "business")
    assert reply.status == 200, reply
    assert reply.json["status"] == "pending"
    session_id = reply.json["session_url"].rsplit("/", 1)[-1]
    event = fake.event("checkout.session.completed", session_id, payment_status="paid")
    hook = await s.webhook(event, secret=secret)
    return reply.json["order_id"], hook.status


async def _completed(s: Shop, order_id: str) -> bool:
    return bool((await s.order(order_id))["status"] == "completed")


async def _stream_bytes(s: Shop) -> bytes:
    """Every message still stored in every stream of the service (events, commands, buckets)."""
    nc = await connect(s.server.nats_url)
    out = []
    try:
        names = json.loads((await nc.request("$JS.API.STREAM.NAMES", b"{}", timeout=5)).data)
        for name in names.get("streams") or []:
            if not name.upper().startswith(
                (s.server.prefix.upper(), f"KV_{s.server.prefix.upper()}")
            ):
                continue
            info = json.loads(
                (await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=5)).data
            )
            first, last = info["state"]["first_seq"], info["state"]["last_seq"]
            for seq in range(first, last + 1):
                msg = await nc.request(
                    f"$JS.API.STREAM.MSG.GET.{name}", json.dumps({"seq": seq}).encode(), timeout=5
                )
                out.append(msg.data)  # base64 of headers and data: decoded below
    finally:
        await nc.close()
    decoded = []
    for raw in out:
        doc = json.loads(raw)
        message = doc.get("message") or {}
        for part in ("data", "hdrs"):
            if message.get(part):
                decoded.append(base64.b64decode(message[part]))
        decoded.append(str(message.get("subject", "")).encode())
    return b"\n".join(decoded)


async def _database_text(s: Shop) -> str:
    """Every row of every table of the service's database, as text: what a backup holds."""
    tables = await s.db(
        """SELECT table_schema, table_name FROM information_schema.tables
            WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
              AND table_type = 'BASE TABLE'"""
    )
    assert any(t["table_name"] == "billing_settings" for t in tables)
    parts = []
    for t in tables:
        name = f'"{t["table_schema"]}"."{t["table_name"]}"'  # from the catalog, not input
        rows = await s.db(f"SELECT t::text AS row FROM {name} t")  # noqa: S608
        parts.extend(r["row"] for r in rows)
    return "\n".join(parts)


def _assert_nowhere(secret: str, *, stream: bytes, logs: str, database: str) -> None:
    hexed = secret.encode().hex()
    assert secret.encode() not in stream
    assert secret not in logs
    assert hexed not in logs
    assert secret not in database
    assert hexed not in database


# ------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_settings_are_for_the_superadmin_only(stored: Shop, method: str) -> None:
    body = {"stripe_public_key": "pk_test_x"} if method == "PUT" else None
    anonymous = await stored.request(method, SETTINGS, sub=None, json_body=body)
    assert_json_error(anonymous, 401)
    for role in ("member", "sovereign-admin"):
        reply = await stored.request(method, SETTINGS, role=role, json_body=body)
        assert assert_json_error(reply, 403) == "superadmin role required"
    assert (await _get(stored))["stripe_public_key"] != "pk_test_x"


async def test_stored_keys_are_masked_encrypted_and_used_by_checkout_and_the_webhook(
    stored: Shop, stripe_stored: FakeStripe
) -> None:
    before = await _get(stored)
    assert before["secrets_storable"] is True
    # Nothing configured: a checkout with an amount due is the seed's 503.
    if not before["stripe_secret_key_configured"]:
        unpaid = await stored.checkout(new_customer(), "business")
        assert_json_error(unpaid, 503)

    await _put(
        stored,
        {
            "stripe_secret_key": SECRET_KEY,
            "stripe_webhook_secret": WEBHOOK_SECRET,
            "stripe_public_key": PUBLIC_KEY,
        },
    )
    shown = await _get(stored)
    assert shown == {
        "stripe_secret_key_configured": True,
        "stripe_webhook_secret_configured": True,
        "stripe_secret_key_last4": "Q7x9",
        "stripe_webhook_secret_last4": "Hk3m",
        "stripe_public_key": PUBLIC_KEY,
        "updated_at": shown["updated_at"],
        "stripe_secret_key_source": "stored",
        "stripe_webhook_secret_source": "stored",
        "stripe_public_key_source": "stored",
        "secrets_storable": True,
    }
    assert shown["updated_at"] is not None

    # The seed's admin UI saves the publishable key alone: the secrets stay (B15).
    await _put(stored, {"stripe_public_key": PUBLIC_KEY + "2"})
    kept = await _get(stored)
    assert (kept["stripe_secret_key_last4"], kept["stripe_webhook_secret_last4"]) == (
        "Q7x9",
        "Hk3m",
    )
    assert kept["stripe_public_key"] == PUBLIC_KEY + "2"

    # Checkout asks Stripe with the stored key; the webhook checks the stored secret.
    sent = len(stripe_stored.session_creates())
    order_id, status = await _signed_paid_event(stored, stripe_stored, WEBHOOK_SECRET)
    assert status == 200
    [create] = stripe_stored.session_creates()[sent:]
    assert create.headers["Authorization"] == f"Bearer {SECRET_KEY}"
    await wait_until(lambda: _completed(stored, order_id), what="the stored-key payment")
    _, forged = await _signed_paid_event(stored, stripe_stored, "whsec_not_the_stored_one")
    assert forged == 400

    # Never on the stream, in a log line or in the database in clear.
    stream = await _stream_bytes(stored)
    logs = stored.server.process.output()
    database = await _database_text(stored)
    # (the three are read in full: the order is in each of them)
    assert order_id.encode() in stream
    assert order_id in logs
    assert order_id in database
    for secret in (SECRET_KEY, WEBHOOK_SECRET):
        _assert_nowhere(secret, stream=stream, logs=logs, database=database)
    assert "billing settings changed" in logs  # the change is logged, without its values
    [row] = await stored.db("SELECT stripe_secret_key, stripe_webhook_secret FROM billing_settings")
    assert row["stripe_secret_key"] is not None
    assert row["stripe_webhook_secret"] is not None

    # "" clears: the webhook is then not configured (503), as the seed answered.
    await _put(stored, {"stripe_webhook_secret": ""})
    cleared = await _get(stored)
    assert (
        cleared["stripe_webhook_secret_configured"],
        cleared["stripe_webhook_secret_source"],
    ) == (
        False,
        "unset",
    )
    assert cleared["stripe_secret_key_configured"] is True
    _, unconfigured = await _signed_paid_event(stored, stripe_stored, WEBHOOK_SECRET)
    assert unconfigured == 503
    await _put(stored, {"stripe_webhook_secret": WEBHOOK_SECRET})


BAD_BODIES: dict[str, Any] = {
    "public key as secret": {"stripe_secret_key": "pk_live_" + "a" * 20},
    "secret as public key": {"stripe_public_key": SECRET_KEY},
    "secret with a space": {"stripe_secret_key": "sk_test_ab cd"},
    "webhook without whsec": {"stripe_webhook_secret": "sk_test_" + "b" * 20},
    "number": {"stripe_secret_key": 12345},
    "unknown field": {"stripe_secret": SECRET_KEY},
    "too long": {"stripe_secret_key": "sk_" + "c" * 600},
    "array": [SECRET_KEY],
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
async def test_a_bad_settings_body_is_a_400_that_repeats_no_secret(stored: Shop, case: str) -> None:
    before = await _get(stored)
    reply = await stored.request("PUT", SETTINGS, json_body=BAD_BODIES[case])
    assert_json_error(reply, 400)
    assert SECRET_KEY not in reply.text
    assert "pk_live_aaaa" not in reply.text
    assert await _get(stored) == before


async def test_environment_variables_win_and_the_answer_says_so(
    tmp_path: Path, nats_url: str, pg_url: str, stripe_env_key: FakeStripe
) -> None:
    env = _env(stripe_env_key, STRIPE_SECRET_KEY=ENV_SECRET_KEY, STRIPE_PUBLIC_KEY="pk_test_env1")
    async with shop(tmp_path, nats_url, pg_url, "setenv", **env) as s:
        await _put(
            s,
            {
                "stripe_secret_key": SECRET_KEY,
                "stripe_webhook_secret": WEBHOOK_SECRET,
                "stripe_public_key": PUBLIC_KEY,
            },
        )
        shown = await _get(s)
        assert (shown["stripe_secret_key_source"], shown["stripe_secret_key_last4"]) == (
            "env",
            "EnV1",
        )
        assert (shown["stripe_public_key_source"], shown["stripe_public_key"]) == (
            "env",
            "pk_test_env1",
        )
        # no STRIPE_WEBHOOK_SECRET: the stored one is in force
        assert (shown["stripe_webhook_secret_source"], shown["stripe_webhook_secret_last4"]) == (
            "stored",
            "Hk3m",
        )
        sent = len(stripe_env_key.session_creates())
        order_id, status = await _signed_paid_event(s, stripe_env_key, WEBHOOK_SECRET)
        assert status == 200
        [create] = stripe_env_key.session_creates()[sent:]
        assert create.headers["Authorization"] == f"Bearer {ENV_SECRET_KEY}"
        await wait_until(lambda: _completed(s, order_id), what="the env-key payment")
        logs = s.server.process.output()
        assert SECRET_KEY not in logs
        assert ENV_SECRET_KEY not in logs


async def test_without_a_settings_key_no_secret_is_stored(
    tmp_path: Path, nats_url: str, pg_url: str, stripe_stored: FakeStripe
) -> None:
    """An external PostgreSQL and no SETTINGS_KEY: a secret cannot be stored encrypted, so it
    is not stored at all (503 naming the setting); the publishable key still can be."""
    env = _env(stripe_stored)
    del env["SETTINGS_KEY"]
    async with shop(tmp_path, nats_url, pg_url, "setnokey", **env) as s:
        assert (await _get(s))["secrets_storable"] is False
        reply = await s.request("PUT", SETTINGS, json_body={"stripe_secret_key": SECRET_KEY})
        assert "SETTINGS_KEY" in assert_json_error(reply, 503)
        assert (
            await s.db("SELECT 1 FROM billing_settings WHERE stripe_secret_key IS NOT NULL") == []
        )
        await _put(s, {"stripe_public_key": PUBLIC_KEY})
        shown = await _get(s)
        assert (shown["stripe_secret_key_configured"], shown["stripe_public_key"]) == (
            False,
            PUBLIC_KEY,
        )
        assert_json_error(await s.checkout(new_customer(), "business"), 503)


def test_the_embedded_default_generates_the_settings_key_once(tmp_path: Path) -> None:
    embedded = Settings(DATA_DIR=str(tmp_path))  # type: ignore[call-arg]
    first = resolve_cipher(embedded)
    assert first is not None
    path = tmp_path / KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    token = first.encrypt(b"secret")
    again = resolve_cipher(embedded)
    assert again is not None
    assert again.decrypt(token) == b"secret"
    external = Settings(DATA_DIR=str(tmp_path), DATABASE_URL="postgresql://x/y")  # type: ignore[call-arg]
    assert resolve_cipher(external) is None
    with pytest.raises(StartupError, match="SETTINGS_KEY"):
        resolve_cipher(Settings(SETTINGS_KEY="not-a-key"))  # type: ignore[call-arg]
