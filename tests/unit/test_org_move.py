"""An Organization moving between Sovereigns (issue #22): the move in the wallet decider, and the
signed bundle (what a tampered, truncated or foreign one gets)."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.unit.test_wallet import CUSTOMER, Wallet, open_order, place, settle
from voucher_ledger.billing.orgmove import (
    BundleRefused,
    build_bundle,
    read_bundle,
    trusted_keys,
)
from voucher_ledger.ledger.commands import (
    AbandonOrder,
    AttachSession,
    ConfirmPayment,
    Failure,
    MoveAccount,
    QueryOrder,
)
from voucher_ledger.ledger.errors import AccountMovedAway, CheckoutInFlight, InvalidInput
from voucher_ledger.ledger.events import (
    AccountMoved,
    Actor,
    EventEnvelope,
    RecordedEvent,
    VoucherRedeemed,
    encode_envelope,
)
from voucher_ledger.ledger.voucher import Decided, Refused
from voucher_ledger.ledger.wallet import decide_move, evolve, initial_state
from voucher_ledger.signing.keys import describe
from voucher_ledger.signing.proof import EventSigner, key_id

DIGEST = "ab" * 32


def move(wallet: Wallet, destination: str | None = "b.sovereign.example") -> None:
    """Decide the move as ``org export`` does and record its event."""
    (event,) = decide_move(
        wallet.state,
        MoveAccount(
            customer_id=CUSTOMER,
            destination=destination,
            bundle_digest=DIGEST,
            wallet_events=len(wallet.history),
            redemption_events=0,
            trail_upto=len(wallet.history),
        ),
    )
    recorded = RecordedEvent(
        seq=len(wallet.history) + 1,
        envelope=EventEnvelope(
            event_id=str(uuid.uuid4()),
            aggregate="wallet",
            aggregate_id=CUSTOMER,
            occurred_at=datetime(2026, 12, 7, 9, 0, tzinfo=UTC),
            actor=Actor(sub="org-export", role="system"),
            command_id="org-export",
            event=event,
        ),
    )
    wallet.history.append(recorded)
    wallet.state = evolve(wallet.state, recorded)


def shopped() -> Wallet:
    """An account with credit, a completed order and one awaiting a card payment."""
    w = Wallet()
    w.apply(open_order("o1", 9))
    w.apply(settle("o1", grant_omr=50))
    w.apply(open_order("o2", 99))
    w.apply(settle("o2"))
    w.apply(AttachSession(customer_id=CUSTOMER, order_id="o2", session_id="cs_1", session_url="u"))
    assert {o: v.status for o, v in w.state.orders.items()} == {
        "o1": "completed",
        "o2": "awaiting_payment",
    }
    return w


def test_a_moved_account_opens_no_order_and_says_where_it_went() -> None:
    w = shopped()
    move(w)
    moved = w.history[-1].envelope.event
    assert isinstance(moved, AccountMoved)
    assert (moved.last_seq, moved.destination, moved.bundle_digest) == (
        len(w.history) - 1,
        "b.sovereign.example",
        DIGEST,
    )
    outcome = w.apply(open_order("o3", 9))
    assert isinstance(outcome, Refused)
    assert isinstance(outcome.error, AccountMovedAway)
    assert outcome.error.reason == "account_moved"
    assert "moved to b.sovereign.example on 2026-12-07T09:00:00Z" in outcome.error.message
    assert "o3" not in w.state.orders
    # what was under way still finishes here: a payment Stripe reports, an abandoned session
    assert isinstance(w.apply(QueryOrder(customer_id=CUSTOMER, order_id="o2")), Decided)
    paid = w.apply(
        ConfirmPayment(customer_id=CUSTOMER, order_id="o2", session_id="cs_1", amount_paid_baisa=1)
    )
    assert isinstance(paid, Decided)
    assert [e.type for e in paid.events] == ["wallet.credit_captured", "order.completed"]


def test_a_moved_account_places_no_order_but_records_a_lost_one_failed() -> None:
    """The two-decision checkout places orders with PlaceOrder: refused once moved (the
    checkout gives the slot back); recovery's record of a lost order's failure still lands."""
    w = shopped()
    move(w)
    refused = w.apply(place("o3", 9, grant_omr=20))
    assert isinstance(refused, Refused)
    assert refused.error.reason == "account_moved"
    lost = w.apply(place("o4", 9, grant_omr=20, failure=Failure(reason="lost", message="x")))
    assert isinstance(lost, Decided)
    assert [e.type for e in lost.events] == ["order.opened", "order.failed"]
    assert w.state.orders["o4"].status == "failed"
    assert w.state.balance_baisa == shopped().state.balance_baisa  # no credit moved


def test_an_unmoved_account_still_opens_orders() -> None:
    w = shopped()
    assert isinstance(w.apply(open_order("o3", 9)), Decided)
    assert isinstance(w.apply(place("o4", 9, grant_omr=20)), Decided)


def test_a_move_is_refused_for_an_empty_account_twice_and_mid_checkout() -> None:
    command = MoveAccount(
        customer_id=CUSTOMER,
        bundle_digest=DIGEST,
        wallet_events=1,
        redemption_events=0,
        trail_upto=1,
    )
    with pytest.raises(InvalidInput, match="no billing history"):
        decide_move(initial_state(CUSTOMER), command)
    w = Wallet()
    w.apply(open_order("o1", 9))  # opened: the checkout has not settled yet
    with pytest.raises(CheckoutInFlight, match="o1 of alice is being checked out"):
        decide_move(w.state, command)
    w.apply(AbandonOrder(customer_id=CUSTOMER, order_id="o1", reason="x"))  # still opened
    w.apply(settle("o1", grant_omr=10))
    move(w, destination=None)
    with pytest.raises(AccountMovedAway, match="moved to another Sovereign"):
        decide_move(w.state, command)


# ------------------------------------------------------------------------------ the bundle


def recorded(seq: int, aggregate: str, key: str, event: object) -> RecordedEvent:
    env = EventEnvelope(
        event_id=str(uuid.uuid4()),
        aggregate=aggregate,  # type: ignore[arg-type]
        aggregate_id=key,
        occurred_at=datetime(2026, 12, 1, tzinfo=UTC),
        actor=Actor(sub="u", role="member"),
        command_id=f"c{seq}",
        event=event,  # type: ignore[arg-type]
    )
    return RecordedEvent(seq=seq, envelope=env, raw=encode_envelope(env))


def bundle_of(signer: EventSigner) -> tuple[bytes, str, Wallet]:
    w = shopped()
    wallet = [
        recorded(r.seq * 2, "wallet", CUSTOMER, r.envelope.event)
        for r in w.history  # stream sequences with gaps: other aggregates between
    ]
    redemption = recorded(
        1,
        "voucher",
        "PROMO",
        VoucherRedeemed(
            code="PROMO", customer_id=CUSTOMER, redemption_id="r-o1", credit_baisa=50_000
        ),
    )
    data, digest = build_bundle(
        CUSTOMER,
        wallet,
        [redemption],
        signer,
        source="a.sovereign.example",
        stream="VL_EVENTS",
        destination=None,
        trail_upto=99,
    )
    return data, digest, w


def test_a_bundle_reads_back_as_exported_and_is_the_same_bytes_every_time() -> None:
    signer = EventSigner(Ed25519PrivateKey.generate())
    data, digest, w = bundle_of(signer)
    bundle = read_bundle(data, [signer.public_key])
    assert (
        bundle.digest == digest == hashlib.sha256(data[: data.rindex(b'{"signature"')]).hexdigest()
    )
    assert bundle.tenant == CUSTOMER
    assert bundle.header["source"] == "a.sovereign.example"
    assert [e.event for e in bundle.wallet] == [r.envelope.event for r in w.history]
    assert [e.event.type for e in bundle.redemptions] == ["voucher.redeemed"]
    lines = data.splitlines()
    assert json.loads(lines[0])["format"] == "voucher-ledger/org-bundle"
    assert json.loads(lines[1])["seq"] == 2
    # nothing depends on the time: the same history gives the same bytes (so a moved account
    # exported again gives the bundle whose digest its move names)
    assert bundle_of_history(signer, w) == bundle_of_history(signer, w)


def bundle_of_history(signer: EventSigner, w: Wallet) -> bytes:
    wallet = [recorded(r.seq, "wallet", CUSTOMER, r.envelope.event) for r in w.history]
    fixed = [
        RecordedEvent(
            seq=r.seq,
            envelope=r.envelope.model_copy(update={"event_id": f"e{r.seq}"}),
        )
        for r in wallet
    ]
    data, _ = build_bundle(
        CUSTOMER, fixed, [], signer, source=None, stream="S", destination="b.example", trail_upto=99
    )
    return data


def test_one_flipped_byte_anywhere_is_refused() -> None:
    signer = EventSigner(Ed25519PrivateKey.generate())
    data, _, _ = bundle_of(signer)
    refused = 0
    for at in range(0, len(data), 7):
        for bit in (0x01, 0x20):
            forged = bytearray(data)
            forged[at] ^= bit
            with pytest.raises(BundleRefused):
                read_bundle(bytes(forged), [signer.public_key])
            refused += 1
    assert refused > 200


def test_a_foreign_truncated_or_unknown_bundle_is_refused_with_its_reason() -> None:
    signer = EventSigner(Ed25519PrivateKey.generate())
    other = EventSigner(Ed25519PrivateKey.generate())
    data, _, _ = bundle_of(signer)
    with pytest.raises(BundleRefused, match=f"signed by key {signer.key_id}, which this Sovereign"):
        read_bundle(data, [other.public_key])
    with pytest.raises(BundleRefused, match="which this Sovereign does not trust"):
        read_bundle(data, [])
    with pytest.raises(BundleRefused, match="truncated"):
        read_bundle(data[:-1], [signer.public_key])
    with pytest.raises(BundleRefused, match="signature line is not readable"):
        read_bundle(data[: data.rindex(b'{"signature"')] + b"{}\n", [signer.public_key])
    # signed by a trusted key, but not a bundle this build reads: still refused
    body = b'{"format":"voucher-ledger/org-bundle","version":2,"tenant":"alice"}\n{}\n{}\n'
    digest = hashlib.sha256(body).hexdigest()
    sig = {
        "alg": "Ed25519",
        "key": signer.key_id,
        "digest": digest,
        "sig": signer.sign_bundle(digest),
    }
    with pytest.raises(BundleRefused, match="bundle version 2; this build reads version 1"):
        read_bundle(body + json.dumps({"signature": sig}).encode() + b"\n", [signer.public_key])


def test_a_wallet_event_of_another_account_is_refused_even_when_signed() -> None:
    signer = EventSigner(Ed25519PrivateKey.generate())
    w = shopped()
    stranger = [recorded(r.seq, "wallet", "mallory", r.envelope.event) for r in w.history]
    data, _ = build_bundle(
        CUSTOMER, stranger, [], signer, source=None, stream="S", destination=None, trail_upto=99
    )
    with pytest.raises(BundleRefused, match="an event of another account"):
        read_bundle(data, [signer.public_key])


def test_trusted_keys_are_read_as_signing_key_prints_them() -> None:
    keys = [EventSigner(Ed25519PrivateKey.generate()) for _ in range(2)]
    text = "".join(describe(k.public_key) for k in keys).encode()
    assert [key_id(k) for k in trusted_keys(text)] == [k.key_id for k in keys]
    with pytest.raises(Exception, match="no PEM public key"):
        trusted_keys(b"# nothing here\n")


def test_a_signed_bundle_with_a_bad_tenant_or_an_event_twice_is_refused() -> None:
    signer = EventSigner(Ed25519PrivateKey.generate())
    w = shopped()
    events = [recorded(r.seq, "wallet", CUSTOMER, r.envelope.event) for r in w.history]
    twice, _ = build_bundle(
        CUSTOMER,
        [*events, events[0]],
        [],
        signer,
        source=None,
        stream="S",
        destination=None,
        trail_upto=99,
    )
    with pytest.raises(BundleRefused, match="an event id appears twice"):
        read_bundle(twice, [signer.public_key])
    stranger = [recorded(r.seq, "wallet", "a\x00b", r.envelope.event) for r in w.history]
    dotted, _ = build_bundle(
        "a\x00b", stranger, [], signer, source=None, stream="S", destination=None, trail_upto=99
    )
    with pytest.raises(BundleRefused, match="its tenant cannot be an account"):
        read_bundle(dotted, [signer.public_key])
