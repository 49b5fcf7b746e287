"""Request idempotency keys (``Idempotency-Key``), global across vouchers.

A key is claimed in a KV bucket (``<PREFIX>_IDEMPOTENCY``, kept ``ttl`` seconds, 24 h by
default, like Stripe) together with a fingerprint of the request it came with: the same key with
the same request proceeds (its command id makes the ledger replay the original outcome); the same
key with a different request, for any voucher, is refused.
"""

from __future__ import annotations

import hashlib

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.kv import KeyValue


class KeyReused(Exception):
    """The key was already used for a different request."""


class IdempotencyUnavailable(Exception):
    """NATS did not answer: the key could not be checked."""


class IdempotencyKeys:
    def __init__(self, kv: KeyValue, nc: Client) -> None:
        self._kv = kv
        self._nc = nc

    @classmethod
    async def bind(cls, nc: Client, bucket: str) -> IdempotencyKeys:
        return cls(await nc.jetstream().key_value(bucket), nc)

    @staticmethod
    def fingerprint(*parts: str | bytes) -> bytes:
        digest = hashlib.sha256()
        for part in parts:
            data = part.encode() if isinstance(part, str) else part
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)
        return digest.hexdigest().encode()

    async def claim(self, key: str, fingerprint: bytes) -> None:
        """Record ``key`` for this request, or check it was recorded for this same request."""
        slot = "k." + hashlib.sha256(key.encode()).hexdigest()
        if not self._nc.is_connected:  # fail now, not after a buffered request's timeout
            raise IdempotencyUnavailable("not connected to NATS")
        try:
            try:
                await self._kv.create(slot, fingerprint)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                entry = await self._kv.get(slot)
        except (nats.errors.Error, TimeoutError) as exc:
            raise IdempotencyUnavailable(str(exc)) from exc
        if entry.value != fingerprint:
            raise KeyReused(key)
