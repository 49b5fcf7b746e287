"""The event proof (``voucher_ledger.signing``): a hash chain per aggregate, one signature per
append on the last event of each aggregate's part. Every part checks on its own with a fresh
checker; the readers check streams part by part, reading ahead when a batch ends inside a part
and behind when they start inside one; any change to an event, its chain, its place or the
signature fails it."""

from __future__ import annotations

import json
from base64 import urlsafe_b64encode
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from voucher_ledger.ledger.events import (
    Actor,
    ChainProof,
    EventEnvelope,
    SignedProof,
    VoucherRedeemed,
    decode_envelope,
    encode_envelope,
)
from voucher_ledger.signing.chain import Checked, PartChecker, StreamChecker
from voucher_ledger.signing.proof import (
    GENESIS,
    EventChecker,
    EventSigner,
    IntegrityError,
    merkle,
    proof_of,
    read_proof,
    root_message,
)

SIGNER = EventSigner(Ed25519PrivateKey.generate())


def envelope(i: int, code: str) -> EventEnvelope:
    return EventEnvelope(
        event_id=f"{i:08d}-0000-4000-8000-000000000000",
        aggregate="voucher",
        aggregate_id=code,
        occurred_at=datetime(2026, 12, 7, tzinfo=UTC),
        actor=Actor(sub=f"cust-{i}", role="member"),
        command_id=f"c{i:031d}",
        event=VoucherRedeemed(
            code=code,
            customer_id=f"cust-{i}",
            redemption_id=f"r-{i}",
            credit_baisa=5000,
            user_id=f"user-{i}",
        ),
    )


class Ledger:
    """Appends as the processors do: each append a list of parts (one aggregate's events)."""

    def __init__(self) -> None:
        self.heads: dict[str, str] = {}
        self.stored: list[Checked] = []  # the stream, from sequence 1
        self.count = 0

    def append(self, sizes: Sequence[tuple[str, int]]) -> list[list[Checked]]:
        plain = []
        links = []
        for code, size in sizes:
            part = []
            chained = []
            for _ in range(size):
                self.count += 1
                env = envelope(self.count, code)
                link = SIGNER.chain(env, self.heads.get(code, GENESIS))
                self.heads[code] = link.head
                part.append(env)
                chained.append(link)
            plain.append(part)
            links.append(chained)
        out = []
        for part, proofs in zip(plain, SIGNER.seal(links), strict=True):
            stored = []
            for env, proof in zip(part, proofs, strict=True):
                raw = encode_envelope(env.model_copy(update={"proof": proof}))
                event = Checked(len(self.stored) + 1, raw, "voucher", env.aggregate_id)
                self.stored.append(event)
                stored.append(event)
            out.append(stored)
        return out

    async def fetch(self, first: int, last: int) -> list[tuple[int, bytes]]:
        return [(e.seq, e.raw) for e in self.stored[max(first, 1) - 1 : last]]

    async def lookup(self, aggregate: str, code: str, below: int) -> tuple[int, bytes] | None:
        found = [e for e in self.stored[: below - 1] if e.aggregate_id == code]
        return (found[-1].seq, found[-1].raw) if found else None


def checker() -> EventChecker:
    return EventChecker(SIGNER.public_key, cutover=1)


def feed_all(parts: PartChecker, events: Sequence[Checked]) -> None:
    for e in events:
        parts.feed(e.seq, (e.aggregate, e.aggregate_id), read_proof(e.raw))


@pytest.mark.parametrize(
    "append",
    [
        [("HOT", 1)],
        [("HOT", 36)],
        [("A", 3), ("B", 1), ("C", 4)],
        [(f"C{i}", 1) for i in range(9)],
        [("HOT", 36), ("B", 2), ("C", 1), ("D", 1), ("E", 1)],
    ],
)
def test_only_the_last_event_of_each_part_is_signed_and_every_part_checks_alone(
    append: list[tuple[str, int]],
) -> None:
    ledger = Ledger()
    parts = ledger.append(append)
    for stored in parts:
        proofs = [proof_of(decode_envelope(e.raw)) for e in stored]
        assert all(p is not None and p.signature is None for p in proofs[:-1])
        last = proofs[-1]
        assert last is not None
        assert last.signature is not None
        assert last.signature.leaves == len(append)
        # One part alone, with a checker that saw nothing else (its prev is the head).
        alone = PartChecker(checker())
        feed_all(alone, stored)
        alone.finish()
        assert alone.head(("voucher", stored[0].aggregate_id)) == (stored[-1].seq, last.link)
    whole = PartChecker(checker())
    feed_all(whole, ledger.stored)
    whole.finish()


def test_the_chain_runs_across_appends_and_a_replayed_part_breaks_it() -> None:
    ledger = Ledger()
    first = ledger.append([("HOT", 3)])[0]
    ledger.append([("HOT", 2), ("OTHER", 1)])
    parts = PartChecker(checker())
    feed_all(parts, ledger.stored)
    replay = [Checked(100 + i, e.raw, e.aggregate, e.aggregate_id) for i, e in enumerate(first)]
    with pytest.raises(IntegrityError) as refused:
        feed_all(parts, replay)
    assert (refused.value.seq, refused.value.code) == (100, "broken_chain")


def _tamper(raw: bytes, change: str) -> bytes:
    doc = json.loads(raw)
    proof = doc["proof"]
    if change == "amount":
        doc["event"]["credit_baisa"] = 9_000_000
    elif change == "aggregate":
        doc["aggregate_id"] = "OTHER"
    elif change == "path":
        proof["path"] = ("A" if proof["path"][0] != "A" else "B") + proof["path"][1:]
    elif change == "short_path":
        proof["path"] = proof["path"][:-43]
    elif change == "sig":
        proof["sig"] = ("A" if proof["sig"][0] != "A" else "B") + proof["sig"][1:]
    elif change in ("j", "m"):
        proof[change] += 1
    elif change == "key":
        proof["key"] = "0" * 16
    return json.dumps(doc, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ("amount", "bad_signature"),
        ("aggregate", "bad_signature"),  # the body moved to another account: its link changed
        ("path", "bad_signature"),
        ("short_path", "bad_signature"),
        ("sig", "bad_signature"),
        ("j", "bad_signature"),
        ("m", "bad_signature"),
        ("key", "unknown_key"),
    ],
)
def test_any_change_to_a_signed_last_event_fails_even_after_its_append_was_checked(
    change: str, code: str
) -> None:
    ledger = Ledger()
    parts = ledger.append([("A", 2), ("B", 3), ("C", 1), ("D", 1)])
    target = parts[1]
    shared = checker()
    for stored in parts:  # every root of the append verified by this checker
        feed_all(PartChecker(shared), stored)
    tampered = [*target[:-1], target[-1]._replace(raw=_tamper(target[-1].raw, change))]
    with pytest.raises(IntegrityError) as refused:
        feed_all(PartChecker(shared), tampered)
    assert refused.value.code == code
    assert refused.value.seq == (target[0].seq if code == "broken_append" else target[-1].seq)


def test_a_changed_earlier_event_breaks_its_part_and_a_lone_forgery_is_named() -> None:
    ledger = Ledger()
    (part,) = ledger.append([("HOT", 4)])
    changed = [part[0], part[1]._replace(raw=_tamper(part[1].raw, "amount")), *part[2:]]
    with pytest.raises(IntegrityError) as refused:
        feed_all(PartChecker(checker()), changed)
    assert (refused.value.seq, refused.value.code) == (part[0].seq, "broken_append")
    # A copy of an event that is not its part's last, published alone: nothing signs it.
    parts = PartChecker(checker())
    feed_all(parts, part)
    forged = part[0]._replace(seq=50, raw=_tamper(part[0].raw, "amount"))
    with pytest.raises(IntegrityError) as lone:
        feed_all(parts, [forged])  # it names a place in the chain that is taken
    assert (lone.value.seq, lone.value.code) == (50, "broken_chain")
    # ... and given the head it names, its part's signed last event never comes.
    alone = PartChecker(checker())
    feed_all(alone, [forged])
    with pytest.raises(IntegrityError) as unfinished:
        alone.finish()
    assert (unfinished.value.seq, unfinished.value.code) == (50, "broken_append")


def test_a_signature_on_an_event_that_is_not_last_and_a_last_without_one_fail() -> None:
    ledger = Ledger()
    (part,) = ledger.append([("HOT", 2)])
    last = json.loads(part[1].raw)["proof"]
    doc = json.loads(part[0].raw)
    doc["proof"] = {**doc["proof"], **{k: last[k] for k in ("key", "j", "m", "path", "sig")}}
    signed_early = part[0]._replace(raw=json.dumps(doc, separators=(",", ":")).encode())
    with pytest.raises(IntegrityError) as early:
        feed_all(PartChecker(checker()), [signed_early, part[1]])
    assert early.value.code == "bad_signature"
    doc = json.loads(part[1].raw)
    doc["proof"] = {k: doc["proof"][k] for k in ("prev", "i", "n")}
    unsigned_last = part[1]._replace(raw=json.dumps(doc, separators=(",", ":")).encode())
    with pytest.raises(IntegrityError) as late:
        feed_all(PartChecker(checker()), [part[0], unsigned_last])
    assert (late.value.seq, late.value.code) == (part[1].seq, "unsigned")


def test_unsigned_events_only_before_the_cut_over_and_never_inside_a_part() -> None:
    body = encode_envelope(envelope(1, "OLD"))
    parts = PartChecker(EventChecker(SIGNER.public_key, cutover=10))
    parts.feed(9, ("voucher", "OLD"), read_proof(body))
    with pytest.raises(IntegrityError) as after:
        parts.feed(10, ("voucher", "OLD"), read_proof(body))
    assert after.value.code == "unsigned"
    (part,) = Ledger().append([("NEW", 3)])
    inside = PartChecker(EventChecker(SIGNER.public_key, cutover=100))
    inside.feed(1, ("voucher", "NEW"), read_proof(part[0].raw))
    with pytest.raises(IntegrityError) as broken:
        inside.feed(2, ("voucher", "NEW"), read_proof(body))
    assert (broken.value.seq, broken.value.code) == (1, "broken_append")


def test_a_decoded_envelope_gives_the_proof_of_its_stored_bytes() -> None:
    ledger = Ledger()
    for stored in ledger.append([("A", 3), ("B", 1)]):
        for e in stored:
            assert proof_of(decode_envelope(e.raw)) == read_proof(e.raw)
    assert isinstance(decode_envelope(ledger.stored[0].raw).proof, ChainProof)
    assert isinstance(decode_envelope(ledger.stored[2].raw).proof, SignedProof)


def test_merkle_paths_have_one_sibling_per_level_with_a_pair() -> None:
    leaves = [bytes([i]) * 32 for i in range(5)]
    root, paths = merkle(leaves)
    assert [len(p) for p in paths] == [3, 3, 3, 3, 1]  # leaf 4 moves up alone, once
    assert merkle(leaves[:1]) == (leaves[0], [[]])
    assert len(root) == 32


async def test_a_batch_that_ends_inside_a_part_is_completed_by_reading_ahead() -> None:
    ledger = Ledger()
    ledger.append([("HOT", 10)])
    ledger.append([("HOT", 5), ("B", 1)])
    stream = StreamChecker(checker(), fetch=ledger.fetch)
    await stream.check(ledger.stored[:4])  # ends inside the first part
    assert stream.pending is None  # the rest was read ahead and checked
    await stream.check(ledger.stored[4:12])
    await stream.check(ledger.stored[12:])
    assert stream.core.head(("voucher", "HOT"))[0] == 15
    # Without reading ahead the part stays open until a later batch brings its last event.
    slow = StreamChecker(checker())
    await slow.check(ledger.stored[:4])
    assert slow.pending == 1
    await slow.check(ledger.stored[4:])
    assert slow.pending is None


async def test_a_reader_that_starts_inside_a_part_reads_it_from_its_beginning() -> None:
    ledger = Ledger()
    ledger.append([("HOT", 4), ("B", 2)])
    ledger.append([("HOT", 6)])
    start = 8  # the third event of HOT's second part
    stream = StreamChecker(checker(), lookup=ledger.lookup, fetch=ledger.fetch, start_seq=start)
    await stream.check(ledger.stored[start - 1 :])
    assert stream.pending is None
    # A forged copy claiming to be the 2nd event of a part, met first by a fresh reader: the
    # events before it are not its part's.
    forged_doc = json.loads(ledger.stored[8].raw)
    forged = Checked(len(ledger.stored) + 1, ledger.stored[8].raw, "voucher", "HOT")
    assert forged_doc["proof"]["i"] > 0
    ledger.stored.append(forged)
    fresh = StreamChecker(checker(), lookup=ledger.lookup, fetch=ledger.fetch, start_seq=forged.seq)
    with pytest.raises(IntegrityError) as refused:
        await fresh.check([forged])
    assert (refused.value.seq, refused.value.code) == (forged.seq, "broken_append")


def test_the_append_signature_is_the_same_ed25519_whichever_library_signs_or_verifies() -> None:
    """The processors sign and the readers verify with libsodium; the key files, the
    cut-over and the bundles go through OpenSSL (``cryptography``). Ed25519 (RFC 8032) is
    deterministic: both make the same signature, and each accepts the other's and refuses
    the same tampering."""
    key = Ed25519PrivateKey.generate()
    signer = EventSigner(key)
    [part] = signer.seal([[signer.chain(envelope(1, "LIB"), GENESIS)]])
    signed = part[-1]
    assert isinstance(signed, SignedProof)
    leaf = signer.chain(envelope(1, "LIB"), GENESIS).leaf
    message = root_message(signer.key_id, 1, leaf)
    # the same bytes as OpenSSL's signature of the same root
    assert signed.sig == urlsafe_b64encode(key.sign(message)).rstrip(b"=").decode()
    checker_ = EventChecker(key.public_key(), cutover=1)
    proof = read_proof(encode_envelope(envelope(1, "LIB").model_copy(update={"proof": signed})))
    assert proof is not None
    assert proof.signature is not None
    checker_.check_signature(5, proof.signature, proof.link)  # accepted
    key.public_key().verify(proof.signature.sig, message)  # and by OpenSSL
    other = EventChecker(Ed25519PrivateKey.generate().public_key(), cutover=1)
    forged = proof.signature._replace(key=other.key_id)
    with pytest.raises(IntegrityError) as refused:
        other.check_signature(5, forged, proof.link)
    assert refused.value.code == "bad_signature"
    flipped = proof.signature._replace(
        sig=bytes([proof.signature.sig[0] ^ 1]) + proof.signature.sig[1:]
    )
    with pytest.raises(IntegrityError) as refused:
        EventChecker(key.public_key(), cutover=1).check_signature(5, flipped, proof.link)
    assert refused.value.code == "bad_signature"
