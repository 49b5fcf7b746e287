"""Proof that the ledger wrote an event: one Ed25519 signature per append, a hash chain per
aggregate, and a Merkle path from each event to its append's signed root.

Every event a processor appends carries, as the LAST field of its envelope, a proof::

    {..., "event": {...}, "proof": {"key": "<16 hex>", "prev": "<64 hex>", "i": 3, "n": 40,
                                    "path": "<43 b64url per level>", "sig": "<86 b64url>"}}

* The event's **leaf** is ``sha256(0x00 + LEAF_DOMAIN + prev + "\n" + body)``, where ``body``
  is the envelope's JSON exactly as stored WITHOUT the proof (``raw[:start of ',"proof":'] +
  "}"``). The body holds the aggregate's identity (``aggregate``, ``aggregate_id``), so an event
  cannot be moved to another account. The leaf, in hex, is the event's chain **link**.
* ``prev`` is the link of the aggregate's previous signed event (``GENESIS`` for its first
  one). A verbatim replay of an old signed event, a dropped or a reordered one names a ``prev``
  that is not the aggregate's head, and fails.
* The processor signs each append once: the leaves of every event it appends in one round
  (``n`` of them, this one at index ``i``) form a Merkle tree (``sha256(0x01 + left + right)``;
  an odd node at the end of a level moves up as it is), and ``sig`` signs ``ROOT_DOMAIN + key +
  n + root``. ``path`` is the event's sibling hashes, leaf to root, concatenated (32 bytes
  each, in one unpadded base64url). Each event is checkable on
  its own with the public key alone (it carries everything needed to reach the signed root);
  a reader of many events of one append checks the signature once (:class:`EventChecker` keeps
  the roots it verified). One signature per append instead of one per event is what makes
  signing cheap enough to be on by default (``bench/signing.py``).
* ``key`` names the public key (:func:`key_id`), so a verifier holding another key says so.

Events stored before the signing cut-over (the stream sequence at which signing started,
:mod:`.cutover`) may carry no proof; from the cut-over on, an event without one fails.

Pure: no I/O (the key files are :mod:`.keys`, the cut-over record and the stream lookups
:mod:`.cutover` and :mod:`.chain`).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from voucher_ledger.ledger.events import EventEnvelope, EventProof, encode_envelope

GENESIS = "0" * 64  # the ``prev`` of an aggregate's first signed event
LEAF_DOMAIN = b"voucher-ledger/event/2\n"
ROOT_DOMAIN = b"voucher-ledger/append/2\n"
CUTOVER_DOMAIN = b"voucher-ledger/cutover/1\n"
UNFIT = b"\x00"  # the path of a proof that does not decode: no tree has it
ROOTS_KEPT = 4096  # verified append roots a checker remembers (one per append)

# The proof as the encoder writes it, at the very end of the body (nothing may follow it).
_PROOF = re.compile(
    rb',"proof":\{"key":"([0-9a-f]{16})","prev":"([0-9a-f]{64})","i":(0|[1-9][0-9]{0,8}),'
    rb'"n":([1-9][0-9]{0,8}),"path":"([A-Za-z0-9_-]{0,2000})","sig":"([A-Za-z0-9_-]{86})"\}\}\Z'
)


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
    """A proof read from a stored body: ``body`` is the envelope without it (what the leaf
    hashes)."""

    key: str
    prev: str
    position: int  # the event's leaf among its append's
    size: int  # the append's events
    path: bytes  # the sibling hashes, 32 bytes each, leaf to root
    sig: bytes
    body: bytes

    @property
    def leaf(self) -> bytes:
        return leaf_of(self.prev, self.body)


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def leaf_of(prev: str, body: bytes) -> bytes:
    """An event's leaf (its chain link is the leaf in hex)."""
    return hashlib.sha256(b"\x00" + LEAF_DOMAIN + prev.encode() + b"\n" + body).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle(leaves: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root of ``leaves`` and each leaf's path (its siblings, leaf to root). A level of odd
    length moves its last node up as it is (no sibling, nothing in the path)."""
    paths: list[list[bytes]] = [[] for _ in leaves]
    level = list(leaves)
    depth = 0
    while len(level) > 1:
        for i, path in enumerate(paths):
            sibling = (i >> depth) ^ 1
            if sibling < len(level):
                path.append(level[sibling])
        level = [
            _node(level[j], level[j + 1]) if j + 1 < len(level) else level[j]
            for j in range(0, len(level), 2)
        ]
        depth += 1
    return level[0], paths


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


def _path_b64(path: Sequence[bytes]) -> str:
    return _b64(b"".join(path))


def _unpath(text: str | bytes) -> bytes:
    """The path's hashes, concatenated (a length that is not a multiple of 32 does not fit
    any tree: the check refuses it)."""
    return _unb64(text)


def read_proof(raw: bytes) -> Proof | None:
    """The proof at the end of a stored body, or None when it has none. A body that mentions a
    proof in any other shape is not a signed body (None): its check then fails as unsigned."""
    at = raw.rfind(b',"proof":{')
    match = _PROOF.match(raw, at) if at >= 0 else None
    if match is None:
        return None
    key, prev, index, count, path, sig = match.groups()
    try:
        hashes, signature = _unpath(path), _unb64(sig)
    except ValueError:  # not base64url after all: a proof that fits nothing (refused)
        hashes, signature = UNFIT, b""
    return Proof(
        key.decode(),
        prev.decode(),
        int(index),
        int(count),
        hashes,
        signature,
        raw[: match.start()] + b"}",
    )


def root_message(key: str, count: int, root: bytes) -> bytes:
    return ROOT_DOMAIN + f"{key}\n{count}\n{root.hex()}".encode()


def cutover_message(stream: str, seq: int, key: str) -> bytes:
    return CUTOVER_DOMAIN + f"{stream}\n{seq}\n{key}".encode()


class Link(NamedTuple):
    """An event chained but not sealed yet: what :meth:`EventSigner.seal` needs of it."""

    prev: str
    leaf: bytes

    @property
    def head(self) -> str:
        """The aggregate's chain head after this event."""
        return self.leaf.hex()


class EventSigner:
    """The processors' side: chains new envelopes as they are decided (:meth:`chain`) and seals
    an append's worth of them with one signature (:meth:`seal`). Holds the private key (never
    logged)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    def __repr__(self) -> str:
        return f"EventSigner(key={self.key_id})"

    @staticmethod
    def chain(envelope: EventEnvelope, prev: str) -> Link:
        """``envelope`` (without a proof) as the event after ``prev`` in its aggregate."""
        return Link(prev, leaf_of(prev, encode_envelope(envelope)))

    def seal(self, links: Sequence[Link]) -> list[EventProof]:
        """The proofs of one append's events (``links`` in the order they are appended): one
        signature over their Merkle root."""
        if not links:
            return []
        root, paths = merkle([link.leaf for link in links])
        count = len(links)
        sig = _b64(self._key.sign(root_message(self.key_id, count, root)))
        return [
            EventProof.model_construct(
                key=self.key_id, prev=link.prev, i=i, n=count, path=_path_b64(path), sig=sig
            )
            for i, (link, path) in enumerate(zip(links, paths, strict=True))
        ]

    def seal_one(self, envelope: EventEnvelope, prev: str) -> tuple[EventEnvelope, str]:
        """One envelope alone (an append of one event): sealed, and the aggregate's new head."""
        link = self.chain(envelope, prev)
        (proof,) = self.seal([link])
        return envelope.model_copy(update={"proof": proof}), link.head

    def sign_cutover(self, stream: str, seq: int) -> str:
        return _b64(self._key.sign(cutover_message(stream, seq, self.key_id)))


class EventChecker:
    """The verifying side: the public key and the cut-over (the first stream sequence at
    which every event must be signed). The caller keeps the aggregates' heads; the checker
    keeps the append roots it verified (a root is a hash of its events: one good signature
    over it covers every event that leads to it)."""

    def __init__(self, public_key: Ed25519PublicKey, cutover: int) -> None:
        self.public_key = public_key
        self.key_id = key_id(public_key)
        self.cutover = cutover
        self._roots: dict[tuple[int, bytes, bytes], None] = {}  # verified, oldest first

    def check_raw(self, seq: int, raw: bytes, head: str, where: str = "") -> str:
        """Check the stored body ``raw`` at ``seq`` against its aggregate's ``head``; return the
        aggregate's head after it (unchanged for an unsigned event before the cut-over)."""
        proof = read_proof(raw)
        if proof is None:
            return self._unsigned(seq, head, where)
        return self._check(seq, proof, head, where)

    def check_envelope(self, seq: int, envelope: EventEnvelope, head: str, where: str = "") -> str:
        """:meth:`check_raw` for a decoded envelope (the event store hands the processors
        models): its body is encoded again, which gives the stored bytes back for an event of
        the current schema version (an upcast one would need its stored bytes)."""
        proof = envelope.proof
        if proof is None:
            return self._unsigned(seq, head, where)
        try:
            sig, path = _unb64(proof.sig), _unpath(proof.path)
        except ValueError:
            sig, path = b"", UNFIT
        body = encode_envelope(envelope.model_copy(update={"proof": None}))
        return self._check(
            seq, Proof(proof.key, proof.prev, proof.i, proof.n, path, sig, body), head, where
        )

    def link(self, seq: int, raw: bytes, where: str = "") -> str:
        """The chain link of a stored body whose place was checked before (the previous event of
        an aggregate, looked up by a reader that starts mid-stream): its proof is checked, its
        ``prev`` taken as it is. GENESIS for an unsigned event before the cut-over."""
        proof = read_proof(raw)
        if proof is None:
            return self._unsigned(seq, GENESIS, where)
        return self._check(seq, proof, proof.prev, where)

    def _unsigned(self, seq: int, head: str, where: str) -> str:
        if seq < self.cutover:
            return head
        raise IntegrityError(
            seq,
            "unsigned",
            f"no proof, and every event from the cut-over at {self.cutover} must be signed",
            where,
        )

    def _check(self, seq: int, proof: Proof, head: str, where: str) -> str:
        if proof.key != self.key_id:
            raise IntegrityError(
                seq, "unknown_key", f"signed by key {proof.key}, not {self.key_id}", where
            )
        leaf = proof.leaf
        self._verify_path(seq, proof, leaf, where)
        if proof.prev != head:
            raise IntegrityError(
                seq,
                "broken_chain",
                "it does not follow its aggregate's previous event (a replayed, dropped or "
                "reordered event)",
                where,
            )
        return leaf.hex()

    def _verify_path(self, seq: int, proof: Proof, leaf: bytes, where: str) -> None:
        """The leaf's path leads, at its place, to a root signed with the key. The whole path
        is walked every time (every reader reaches the same verdict on the same bytes, whatever
        it checked before); the signature is verified once per append (the verified ``(count,
        root, sig)`` are remembered: a root is a hash of its whole append)."""
        index, count, path = proof.position, proof.size, proof.path
        if not 0 <= index < count:
            raise IntegrityError(seq, "bad_signature", "its place in the append is not", where)
        node, offset = leaf, 0
        while count > 1:
            if index % 2 == 1 or index + 1 < count:
                sibling = path[offset : offset + 32]
                if len(sibling) != 32:
                    break
                offset += 32
                node = _node(sibling, node) if index % 2 == 1 else _node(node, sibling)
            index //= 2
            count = (count + 1) // 2
        if count > 1 or offset != len(path):
            raise IntegrityError(
                seq, "bad_signature", "its path does not fit its place in the append", where
            )
        known = self._roots
        signed = (proof.size, node, proof.sig)
        if signed in known:
            return
        try:
            self.public_key.verify(proof.sig, root_message(proof.key, proof.size, node))
        except InvalidSignature:
            raise IntegrityError(
                seq, "bad_signature", "the signature does not match the event", where
            ) from None
        known[signed] = None
        if len(known) > ROOTS_KEPT:
            del known[next(iter(known))]

    def check_cutover(self, stream: str, seq: int, key: str, sig: str) -> bool:
        if key != self.key_id:
            return False
        try:
            self.public_key.verify(_unb64(sig), cutover_message(stream, seq, key))
        except (InvalidSignature, ValueError):
            return False
        return True
