"""Taking a lease whose previous holder's entry expires mid-create."""

from __future__ import annotations

from typing import Any

import nats.js.errors

from voucher_ledger.jetstream.leases import LeaseHost


class _Host(LeaseHost):
    async def tick(self) -> None:
        pass

    async def drop_all(self, *, release: bool) -> None:
        pass


class _KV:
    """nats.py's KeyValue.create as it behaves around an expiring entry: the key is taken
    (wrong last sequence), then its entry is gone when create looks for a delete marker."""

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.calls = 0

    async def create(self, key: str, value: bytes) -> int:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return int(outcome)


def _host(kv: _KV) -> _Host:
    host = _Host(None, "LEASES", 3.0, "me", "test")  # type: ignore[arg-type]
    host._kv = kv  # type: ignore[assignment]
    return host


async def test_a_key_whose_entry_expired_mid_create_is_asked_for_again() -> None:
    kv = _KV([nats.js.errors.KeyNotFoundError(), 7])
    assert await _host(kv).acquire("partition.3") == 7
    assert kv.calls == 2


async def test_a_key_held_by_another_is_not_taken() -> None:
    kv = _KV([nats.js.errors.KeyWrongLastSequenceError(description="wrong last sequence: 11")])
    assert await _host(kv).acquire("partition.3") is None
    assert kv.calls == 1


async def test_a_key_that_keeps_vanishing_is_left_for_the_next_tick() -> None:
    kv = _KV([nats.js.errors.KeyNotFoundError(), nats.js.errors.KeyNotFoundError()])
    assert await _host(kv).acquire("partition.3") is None
    assert kv.calls == 2
