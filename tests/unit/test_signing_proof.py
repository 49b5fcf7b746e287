"""The event proof (``voucher_ledger.signing.proof``): one signature per append, a Merkle path
per event, a hash chain per aggregate. Every event of an append of any size checks on its own,
in any order and with a fresh checker; any change to an event, its path, its place or the
signature fails it."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from voucher_ledger.ledger.events import (
    Actor,
    EventEnvelope,
    VoucherRedeemed,
    encode_envelope,
)
from voucher_ledger.signing.proof import (
    GENESIS,
    EventChecker,
    EventSigner,
    IntegrityError,
    merkle,
    read_proof,
)

SIGNER = EventSigner(Ed25519PrivateKey.generate())


def envelope(i: int, code: str = "HOT") -> EventEnvelope:
    return EventEnvelope(
        event_id=f"{i:08d}-0000-4000-8000-000000000000",
        aggregate="voucher",
        aggregate_id=code,
        occurred_at=datetime(2026, 12, 7, tzinfo=UTC),
        actor=Actor(sub=f"cust-{i}", role="member"),
        command_id=f"c{i:031d}",
        event=VoucherRedeemed(
            code=code, customer_id=f"cust-{i}", redemption_id=f"r-{i}", credit_baisa=5000
        ),
    )


def sealed_append(count: int, code: str = "HOT", head: str = GENESIS) -> list[bytes]:
    """One append of ``count`` events of one aggregate, as stored."""
    links = []
    plain = [envelope(i, code) for i in range(count)]
    for env in plain:
        link = SIGNER.chain(env, head)
        links.append(link)
        head = link.head
    proofs = SIGNER.seal(links)
    return [
        encode_envelope(env.model_copy(update={"proof": proof}))
        for env, proof in zip(plain, proofs, strict=True)
    ]


def heads(bodies: list[bytes]) -> list[str]:
    """Each event's ``prev`` (the head it must be checked against)."""
    out = []
    for body in bodies:
        proof = read_proof(body)
        assert proof is not None
        out.append(proof.prev)
    return out


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 8, 9, 16, 31, 45, 100])
def test_every_event_of_an_append_checks_alone_with_a_fresh_checker(count: int) -> None:
    bodies = sealed_append(count)
    prevs = heads(bodies)
    for i, body in enumerate(bodies):
        checker = EventChecker(SIGNER.public_key, cutover=1)
        link = checker.check_raw(10 + i, body, prevs[i])
        proof = read_proof(body)
        assert proof is not None
        assert (proof.position, proof.size) == (i, count)
        assert link == proof.leaf.hex()
        if i + 1 < count:
            assert link == prevs[i + 1]  # the next event of the aggregate chains to it


@pytest.mark.parametrize("count", [3, 8, 45])
def test_one_checker_reads_an_append_in_any_order(count: int) -> None:
    bodies = sealed_append(count)
    prevs = heads(bodies)
    order = list(range(count))
    random.Random(count).shuffle(order)
    checker = EventChecker(SIGNER.public_key, cutover=1)
    for i in order:
        checker.check_raw(i + 1, bodies[i], prevs[i])


def test_the_chain_runs_through_the_append_in_order() -> None:
    bodies = sealed_append(5)
    checker = EventChecker(SIGNER.public_key, cutover=1)
    head = GENESIS
    for seq, body in enumerate(bodies, 1):
        head = checker.check_raw(seq, body, head)
    # A second append of the same aggregate chains to the head the first one left.
    again = sealed_append(3, head=head)
    for seq, body in enumerate(again, 6):
        head = checker.check_raw(seq, body, head)


def tampered(body: bytes, change: str) -> bytes:
    doc = json.loads(body)
    proof = doc["proof"]
    if change == "amount":
        doc["event"]["credit_baisa"] = 9_000_000
    elif change == "index":
        proof["i"] = (proof["i"] + 1) % proof["n"]
    elif change == "count":
        proof["n"] = proof["n"] + 1
    elif change == "path":
        path = proof["path"]
        proof["path"] = ("A" if path[0] != "A" else "B") + path[1:]
    elif change == "short_path":
        proof["path"] = proof["path"][:-43]
    elif change == "sig":
        sig = proof["sig"]
        proof["sig"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    elif change == "aggregate":
        doc["aggregate_id"] = "OTHER"
    return json.dumps(doc, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "change", ["amount", "index", "count", "path", "short_path", "sig", "aggregate"]
)
def test_any_change_fails_even_after_the_rest_of_its_append_was_checked(change: str) -> None:
    bodies = sealed_append(8)
    prevs = heads(bodies)
    checker = EventChecker(SIGNER.public_key, cutover=1)
    for i in (0, 1, 2, 3, 5, 6, 7):  # every node of the tree is known to the checker now
        checker.check_raw(i + 1, bodies[i], prevs[i])
    checker.check_raw(5, bodies[4], prevs[4])  # the untouched event passes
    with pytest.raises(IntegrityError) as refused:
        checker.check_raw(5, tampered(bodies[4], change), prevs[4])
    assert refused.value.code == "bad_signature"
    assert refused.value.seq == 5


def test_a_forged_event_given_a_real_events_path_fails() -> None:
    bodies = sealed_append(4)
    prevs = heads(bodies)
    checker = EventChecker(SIGNER.public_key, cutover=1)
    for i, body in enumerate(bodies):
        checker.check_raw(i + 1, body, prevs[i])
    forged = tampered(bodies[1], "amount")
    with pytest.raises(IntegrityError, match="signature"):
        checker.check_raw(9, forged, prevs[1])


def test_a_replayed_event_breaks_its_chain_and_another_key_is_named() -> None:
    bodies = sealed_append(3)
    prevs = heads(bodies)
    checker = EventChecker(SIGNER.public_key, cutover=1)
    head = GENESIS
    for seq, body in enumerate(bodies, 1):
        head = checker.check_raw(seq, body, head)
    with pytest.raises(IntegrityError) as replay:
        checker.check_raw(4, bodies[1], head)
    assert replay.value.code == "broken_chain"
    stranger = EventChecker(Ed25519PrivateKey.generate().public_key(), cutover=1)
    with pytest.raises(IntegrityError) as other:
        stranger.check_raw(1, bodies[0], prevs[0])
    assert other.value.code == "unknown_key"


def test_unsigned_is_accepted_only_before_the_cut_over() -> None:
    body = encode_envelope(envelope(1))
    checker = EventChecker(SIGNER.public_key, cutover=10)
    assert checker.check_raw(9, body, "a" * 64) == "a" * 64
    with pytest.raises(IntegrityError) as refused:
        checker.check_raw(10, body, "a" * 64)
    assert refused.value.code == "unsigned"


def test_a_decoded_envelope_checks_like_its_stored_bytes() -> None:
    from voucher_ledger.ledger.events import decode_envelope

    bodies = sealed_append(6)
    prevs = heads(bodies)
    checker = EventChecker(SIGNER.public_key, cutover=1)
    for i, body in enumerate(bodies):
        env = decode_envelope(body)
        assert checker.check_envelope(i + 1, env, prevs[i]) == EventChecker(
            SIGNER.public_key, 1
        ).check_raw(i + 1, body, prevs[i])
    forged = decode_envelope(tampered(bodies[2], "amount"))
    with pytest.raises(IntegrityError):
        EventChecker(SIGNER.public_key, 1).check_envelope(3, forged, prevs[2])


def test_merkle_paths_have_one_sibling_per_level_with_a_pair() -> None:
    leaves = [bytes([i]) * 32 for i in range(5)]
    root, paths = merkle(leaves)
    assert [len(p) for p in paths] == [3, 3, 3, 3, 1]  # leaf 4 moves up alone, once
    assert merkle(leaves[:1]) == (leaves[0], [[]])
    assert len(root) == 32
