"""The hub checks its Sovereigns' signatures on its trail (issue #22, SOVEREIGN_KEYS_DIR): the
allocator counts a Sovereign's events only while they check with that Sovereign's public key,
in the Sovereign's own order (``Nats-Stream-Source``); a Sovereign whose trail fails once gets
nothing more counted, and so no more slots."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from voucher_ledger.jetstream.layout import Layout
from voucher_ledger.ledger.commands import ObserveSovereign
from voucher_ledger.ledger.events import (
    Actor,
    EventEnvelope,
    ShareReceived,
    VoucherRedeemed,
    encode_envelope,
)
from voucher_ledger.service.globals import ShareAllocator
from voucher_ledger.signing.keys import SigningKeyError, public_pem
from voucher_ledger.signing.proof import GENESIS, EventSigner
from voucher_ledger.signing.trail import load_keys, source_sequence

CODE = "WORLD-1"
KEYS = {name: Ed25519PrivateKey.generate() for name in ("north", "south")}


class Sovereign:
    """A Sovereign's stream as its processors write it: one signed append per event."""

    def __init__(self, name: str, key: Ed25519PrivateKey) -> None:
        self.name = name
        self.signer = EventSigner(key)
        self.head = GENESIS
        self.seq = 0

    def append(self, event: Any) -> tuple[str, bytes, dict[str, str]]:
        self.seq += 1
        envelope = EventEnvelope(
            event_id=f"{self.seq:08d}-0000-4000-8000-{abs(hash(self.name)) % 10**12:012d}",
            aggregate="voucher",
            aggregate_id=CODE,
            occurred_at=datetime(2026, 12, 7, tzinfo=UTC),
            actor=Actor(sub="system", role="system"),
            command_id=f"c-{self.name}-{self.seq}",
            event=event,
        )
        [(sealed, self.head)] = self.signer.sign_append([(self.head, [envelope])])
        subject = f"ledger.sovereign.{self.name}.events.voucher.{CODE}"
        headers = {
            "Nats-Stream-Source": f"LEDGER_EVENTS:x1 {self.seq} ledger.events.> "
            f"ledger.sovereign.{self.name}.events.> ledger.events.voucher.{CODE} y2"
        }
        return subject, encode_envelope(sealed[0]), headers


def received(total: int) -> ShareReceived:
    return ShareReceived(
        code=CODE, allotted_total=total, requested_total=0, pool_empty=False, hub_seq=1
    )


def redeemed(i: int) -> VoucherRedeemed:
    return VoucherRedeemed(
        code=CODE,
        customer_id=f"org-{i}",
        redemption_id=f"r-{i}",
        credit_baisa=1000,
        user_id=f"org-{i}",
    )


def allocator() -> ShareAllocator:
    keys = {name: key.public_key() for name, key in KEYS.items()}
    worker = ShareAllocator(None, None, Layout("ledger", 8), keys)  # type: ignore[arg-type]
    worker.reset()  # as its reading of the trail from the start does
    return worker


def observed(worker: ShareAllocator) -> dict[str, int]:
    out = {}
    for _, command in worker.due():
        assert isinstance(command, ObserveSovereign)
        out[command.sovereign] = command.redeemed
    return out


def test_signed_events_of_both_sovereigns_are_counted_interleaved_on_the_trail() -> None:
    worker = allocator()
    north, south = Sovereign("north", KEYS["north"]), Sovereign("south", KEYS["south"])
    trail = [north.append(received(5)), south.append(received(5))]
    trail += [north.append(redeemed(i)) for i in range(3)]
    trail += [south.append(redeemed(10 + i)) for i in range(2)]
    for seq, (subject, data, headers) in enumerate(trail, start=1):
        worker.apply(subject, seq, data, headers)
    assert worker.checker is not None
    assert worker.checker.failed == {}
    assert observed(worker) == {"north": 3, "south": 2}


def test_a_changed_event_fails_its_sovereign_for_good_and_the_other_is_still_counted() -> None:
    worker = allocator()
    north, south = Sovereign("north", KEYS["north"]), Sovereign("south", KEYS["south"])
    seq = 0

    def feed(item: tuple[str, bytes, dict[str, str]]) -> None:
        nonlocal seq
        seq += 1
        subject, data, headers = item
        worker.apply(subject, seq, data, headers)

    feed(north.append(received(5)))
    feed(south.append(received(5)))
    feed(north.append(redeemed(1)))
    subject, data, headers = south.append(redeemed(2))
    forged = data.replace(b'"customer_id":"org-2"', b'"customer_id":"org-9"')
    assert forged != data
    feed((subject, forged, headers))
    feed(south.append(redeemed(3)))  # a good one after it: the chain is broken for good
    feed(north.append(redeemed(4)))
    assert worker.checker is not None
    assert set(worker.checker.failed) == {"south"}
    assert "bad_signature" in worker.checker.failed["south"]
    assert observed(worker) == {"north": 2}  # south: nothing more is reported to the hub


@pytest.mark.parametrize("fault", ["another key", "no source header", "replayed", "dropped"])
def test_what_a_sovereign_did_not_sign_in_that_order_is_refused(fault: str) -> None:
    worker = allocator()
    north = Sovereign("north", KEYS["north"] if fault != "another key" else KEYS["south"])
    items = [north.append(received(5)), north.append(redeemed(1)), north.append(redeemed(2))]
    if fault == "no source header":
        items[1] = (items[1][0], items[1][1], {})
    if fault == "replayed":
        items[2] = items[1]
    if fault == "dropped":
        del items[1]
    for seq, (subject, data, headers) in enumerate(items, start=1):
        worker.apply(subject, seq, data, headers)
    assert worker.checker is not None
    assert "north" in worker.checker.failed, fault


def test_the_source_sequence_and_the_keys_directory(tmp_path: Path) -> None:
    assert source_sequence({"Nats-Stream-Source": "LEDGER_EVENTS:GdAn 42 a b c d"}) == 42
    assert source_sequence({"Nats-Stream-Source": "garbage"}) is None
    assert source_sequence(None) is None
    (tmp_path / "north.pub").write_text(public_pem(KEYS["north"].public_key()))
    assert set(load_keys(tmp_path, ["north"])) == {"north"}
    with pytest.raises(SigningKeyError, match="no public key for Sovereign south"):
        load_keys(tmp_path, ["north", "south"])
    (tmp_path / "south.pub").write_text("not a key")
    with pytest.raises(SigningKeyError, match=r"south\.pub"):
        load_keys(tmp_path, ["south"])
