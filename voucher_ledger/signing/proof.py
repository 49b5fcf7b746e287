"""Proof that the ledger wrote an event: an Ed25519 signature, chained per aggregate.

Every event a processor appends carries, as the LAST field of its envelope, a proof::

    {..., "event": {...}, "proof": {"key": "<16 hex>", "prev": "<64 hex>", "sig": "<86 b64url>"}}

* ``sig`` signs ``SIGNED_DOMAIN + prev + "\\n" + body``, where ``body`` is the envelope's JSON
  exactly as stored WITHOUT the proof (``raw[:start of ',"proof":'] + "}"``). The body holds
  the aggregate's identity (``aggregate``, ``aggregate_id``), so an event cannot be moved to
  another account.
* ``prev`` is the chain link of the aggregate's previous signed event (``GENESIS`` for its
  first one): ``link = sha256(sig)``. A verbatim replay of an old signed event, a dropped or a
  reordered one names a ``prev`` that is not the aggregate's head, and fails.
* ``key`` names the public key (:func:`key_id`), so a verifier holding another key says so.

Every event is individually checkable with the public key alone (the signature), and its place
in its aggregate's history with the head of that history (the chain). Events stored before the
signing cut-over (the stream sequence at which signing started, :mod:`.cutover`) may carry no
proof; from the cut-over on, an event without one fails.

Pure: no I/O (the key files are :mod:`.keys`, the cut-over record and the stream lookups
:mod:`.cutover` and :mod:`.chain`).
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from voucher_ledger.ledger.events import EventEnvelope, EventProof, encode_envelope

GENESIS = "0" * 64  # the ``prev`` of an aggregate's first signed event
SIGNED_DOMAIN = b"voucher-ledger/event/1\n"
CUTOVER_DOMAIN = b"voucher-ledger/cutover/1\n"

# The proof as the encoder writes it, at the very end of the body (nothing may follow it).
_PROOF = re.compile(
    rb',"proof":\{"key":"([0-9a-f]{16})","prev":"([0-9a-f]{64})","sig":"([A-Za-z0-9_-]{86})"\}\}\Z'
)
_PROOF_KEY = b',"proof":'


class IntegrityError(Exception):
    """An event that fails the ledger's check. ``code`` is short and stable (a metrics label):
    ``unsigned``, ``bad_signature``, ``broken_chain``, ``unknown_key``, ``wrong_aggregate``."""

    def __init__(self, seq: int, code: str, reason: str, where: str = "") -> None:
        at = f"stream sequence {seq}" + (f" ({where})" if where else "")
        super().__init__(f"event at {at} fails the ledger's signature check: {reason}")
        self.seq = seq
        self.code = code
        self.reason = reason
        self.where = where


class Proof(NamedTuple):
    """A proof read from a stored body: ``body`` is what was signed (the envelope without it)."""

    key: str
    prev: str
    sig: bytes
    body: bytes

    @property
    def link(self) -> str:
        return link_of(self.sig)


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def link_of(sig: bytes) -> str:
    return hashlib.sha256(sig).hexdigest()


def _b64(sig: bytes) -> str:
    return base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


def _unb64(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


def read_proof(raw: bytes) -> Proof | None:
    """The proof at the end of a stored body, or None when it has none. A body that mentions a
    proof in any other shape is not a signed body (None): its check then fails as unsigned."""
    match = _PROOF.search(raw)
    if match is None:
        return None
    key, prev, sig = match.groups()
    return Proof(key.decode(), prev.decode(), _unb64(sig), raw[: match.start()] + b"}")


def signed_message(prev: str, body: bytes) -> bytes:
    return SIGNED_DOMAIN + prev.encode() + b"\n" + body


def cutover_message(stream: str, seq: int, key: str) -> bytes:
    return CUTOVER_DOMAIN + f"{stream}\n{seq}\n{key}".encode()


class EventSigner:
    """The processors' side: seals new envelopes. Holds the private key (never logged)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    def __repr__(self) -> str:
        return f"EventSigner(key={self.key_id})"

    def seal(self, envelope: EventEnvelope, prev: str) -> tuple[EventEnvelope, str]:
        """``envelope`` with its proof (chained to ``prev``), and the aggregate's new head."""
        body = encode_envelope(envelope)
        sig = self._key.sign(signed_message(prev, body))
        proof = EventProof.model_construct(key=self.key_id, prev=prev, sig=_b64(sig))
        return envelope.model_copy(update={"proof": proof}), link_of(sig)

    def sign_cutover(self, stream: str, seq: int) -> str:
        return _b64(self._key.sign(cutover_message(stream, seq, self.key_id)))


class EventChecker:
    """The verifying side: the public key and the cut-over (the first stream sequence at
    which every event must be signed). Stateless: the caller keeps the aggregates' heads."""

    def __init__(self, public_key: Ed25519PublicKey, cutover: int) -> None:
        self.public_key = public_key
        self.key_id = key_id(public_key)
        self.cutover = cutover

    def check_raw(self, seq: int, raw: bytes, head: str, where: str = "") -> str:
        """Check the stored body ``raw`` at ``seq`` against its aggregate's ``head``; return the
        aggregate's head after it (unchanged for an unsigned event before the cut-over)."""
        proof = read_proof(raw)
        if proof is None:
            if seq < self.cutover:
                return head
            raise IntegrityError(
                seq,
                "unsigned",
                f"no proof, and every event from the cut-over at {self.cutover} must be signed",
                where,
            )
        return self._check(seq, proof, head, where)

    def check_envelope(self, seq: int, envelope: EventEnvelope, head: str, where: str = "") -> str:
        """:meth:`check_raw` for a decoded envelope (the event store hands the processors
        models): its body is encoded again, which gives the stored bytes back for an event of
        the current schema version (an upcast one would need its stored bytes)."""
        proof = envelope.proof
        if proof is None:
            if seq < self.cutover:
                return head
            raise IntegrityError(
                seq,
                "unsigned",
                f"no proof, and every event from the cut-over at {self.cutover} must be signed",
                where,
            )
        try:
            sig = _unb64(proof.sig)
        except ValueError:
            raise IntegrityError(
                seq, "bad_signature", "the signature is not base64url", where
            ) from None
        body = encode_envelope(envelope.model_copy(update={"proof": None}))
        return self._check(seq, Proof(proof.key, proof.prev, sig, body), head, where)

    def link(self, seq: int, raw: bytes, where: str = "") -> str:
        """The chain link of a stored body whose place was checked before (the previous event of
        an aggregate, looked up by a reader that starts mid-stream): its signature is checked,
        its ``prev`` taken as it is. GENESIS for an unsigned event before the cut-over."""
        proof = read_proof(raw)
        if proof is None:
            return self.check_raw(seq, raw, GENESIS, where)
        return self._check(seq, proof, proof.prev, where)

    def _check(self, seq: int, proof: Proof, head: str, where: str) -> str:
        if proof.key != self.key_id:
            raise IntegrityError(
                seq, "unknown_key", f"signed by key {proof.key}, not {self.key_id}", where
            )
        try:
            self.public_key.verify(proof.sig, signed_message(proof.prev, proof.body))
        except InvalidSignature:
            raise IntegrityError(
                seq, "bad_signature", "the signature does not match the event", where
            ) from None
        if proof.prev != head:
            raise IntegrityError(
                seq,
                "broken_chain",
                "it does not follow its aggregate's previous event (a replayed, dropped or "
                "reordered event)",
                where,
            )
        return proof.link

    def check_cutover(self, stream: str, seq: int, key: str, sig: str) -> bool:
        if key != self.key_id:
            return False
        try:
            self.public_key.verify(_unb64(sig), cutover_message(stream, seq, key))
        except (InvalidSignature, ValueError):
            return False
        return True
