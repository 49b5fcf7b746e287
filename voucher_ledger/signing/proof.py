"""Proof that the ledger wrote an event: a hash chain per aggregate, and one Ed25519 signature
per append, carried by the last event of each aggregate in it.

Every event a processor appends carries, as the LAST field of its envelope, a proof::

    "proof": {"prev": "<64 hex>", "i": 3, "n": 36}                   (most events)
    "proof": {"prev": "<64 hex>", "i": 35, "n": 36, "key": "<16 hex>",
              "j": 0, "m": 5, "path": "<base64url>", "sig": "<86 base64url>"}   (i = n - 1)

* The event's **link** is ``sha256(0x00 + LEAF_DOMAIN + prev + "\\n" + body)`` in hex, where
  ``body`` is the envelope's JSON exactly as stored WITHOUT the proof (``raw[:start of
  ',"proof":'] + "}"``). The body holds the aggregate's identity (``aggregate``,
  ``aggregate_id``), so an event cannot be moved to another account.
* ``prev`` is the link of the aggregate's previous signed event (``GENESIS`` for its first
  one): the links chain each aggregate's whole history. A verbatim replay of an old signed
  event, a dropped or a reordered one names a ``prev`` that is not the aggregate's head, and
  fails.
* An append stores, for each aggregate it touches, ``n`` consecutive events (one part, stored
  all or none and contiguously); the event is the ``i``-th. The LAST event of each part
  (``i = n - 1``) is signed: the links of every part's last event in one processor round are
  the leaves of a Merkle tree (``sha256(0x01 + left + right)``; an odd node at the end of a
  level moves up as it is). Its proof says it is leaf ``j`` of ``m``, ``path`` holds its
  siblings up to the root (32 bytes each, concatenated, one unpadded base64url), and ``sig``
  signs ``ROOT_DOMAIN + key + "\\n" + m + "\\n" + root hex``. ``key`` names the public key
  (:func:`key_id`).
* The signed last event covers the part's earlier events through the chain: an event is the
  ledger's when the events after it in its part chain up to a signed last event. So one
  signature covers an append (each part checkable on its own: a part refused by a conflict
  leaves the others valid), and most events carry only ``prev``, ``i`` and ``n``.

Events stored before the signing cut-over (the stream sequence at which signing started,
:mod:`.cutover`) may carry no proof; from the cut-over on, an event without one fails.

Pure: no I/O. Checking events in stream order, part by part, is :mod:`.chain`; the key files
:mod:`.keys`; the cut-over record :mod:`.cutover`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from voucher_ledger.ledger.events import (
    ChainProof,
    EventEnvelope,
    SignedProof,
    encode_envelope,
)

GENESIS = "0" * 64  # the ``prev`` of an aggregate's first signed event
LEAF_DOMAIN = b"voucher-ledger/event/2\n"
ROOT_DOMAIN = b"voucher-ledger/append/2\n"
CUTOVER_DOMAIN = b"voucher-ledger/cutover/1\n"
BUNDLE_DOMAIN = b"voucher-ledger/org-bundle/1\n"  # an Organization's bundle (billing/orgmove.py)
UNFIT = b"\x00"  # the path of a proof that does not decode: no tree has it
ROOTS_KEPT = 4096  # verified append roots a checker remembers (one per append)

# The proof as the encoder writes it, at the very end of the body (nothing may follow it).
_PROOF = re.compile(
    rb',"proof":\{"prev":"([0-9a-f]{64})","i":(0|[1-9][0-9]{0,8}),"n":([1-9][0-9]{0,8})'
    rb'(?:,"key":"([0-9a-f]{16})","j":(0|[1-9][0-9]{0,8}),"m":([1-9][0-9]{0,8}),'
    rb'"path":"([A-Za-z0-9_-]{0,2000})","sig":"([A-Za-z0-9_-]{86})")?\}\}\Z'
)


class IntegrityError(Exception):
    """An event that fails the ledger's check. ``code`` is short and stable (a metrics label):
    ``unsigned``, ``bad_signature``, ``broken_chain``, ``broken_append``, ``unknown_key``,
    ``wrong_aggregate``."""

    def __init__(self, seq: int, code: str, reason: str, where: str = "") -> None:
        at = f"stream sequence {seq}" + (f" ({where})" if where else "")
        super().__init__(f"event at {at} fails the ledger's signature check: {reason}")
        self.seq = seq
        self.code = code
        self.reason = reason
        self.where = where


class Signature(NamedTuple):
    """What the last event of a part carries besides its chain."""

    key: str
    leaf: int  # j
    leaves: int  # m
    path: bytes  # the sibling hashes, 32 bytes each, leaf to root
    sig: bytes


class Proof(NamedTuple):
    """A proof read from a stored body: ``body`` is the envelope without it (what the link
    hashes)."""

    prev: str
    position: int  # i: the event's place among its aggregate's events in the append
    size: int  # n: how many they are
    signature: Signature | None  # on the last of them only
    body: bytes

    @property
    def link(self) -> str:
        return link_of(self.prev, self.body)

    @property
    def last(self) -> bool:
        return self.position == self.size - 1


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _leaf(prev: str, body: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + LEAF_DOMAIN + prev.encode() + b"\n" + body).digest()


def link_of(prev: str, body: bytes) -> str:
    """An event's chain link (the ``prev`` of the aggregate's next event)."""
    return _leaf(prev, body).hex()


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
            _node(level[k], level[k + 1]) if k + 1 < len(level) else level[k]
            for k in range(0, len(level), 2)
        ]
        depth += 1
    return level[0], paths


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


def read_proof(raw: bytes) -> Proof | None:
    """The proof at the end of a stored body, or None when it has none. A body that mentions a
    proof in any other shape is not a signed body (None): its check then fails as unsigned."""
    at = raw.rfind(b',"proof":{')
    match = _PROOF.match(raw, at) if at >= 0 else None
    if match is None:
        return None
    prev, i, n, key, j, m, path, sig = match.groups()
    signature = None
    if key is not None:
        try:
            hashes, signed = _unb64(path), _unb64(sig)
        except ValueError:  # not base64url after all: a proof that fits nothing (refused)
            hashes, signed = UNFIT, b""
        signature = Signature(key.decode(), int(j), int(m), hashes, signed)
    return Proof(prev.decode(), int(i), int(n), signature, raw[: match.start()] + b"}")


def proof_of(envelope: EventEnvelope) -> Proof | None:
    """:func:`read_proof` for a decoded envelope: its body is encoded again, which gives the
    stored bytes back for an event of the current schema version."""
    proof = envelope.proof
    if proof is None:
        return None
    body = encode_envelope(envelope.model_copy(update={"proof": None}))
    signature = None
    if isinstance(proof, SignedProof):
        try:
            hashes, signed = _unb64(proof.path), _unb64(proof.sig)
        except ValueError:
            hashes, signed = UNFIT, b""
        signature = Signature(proof.key, proof.j, proof.m, hashes, signed)
    return Proof(proof.prev, proof.i, proof.n, signature, body)


def root_message(key: str, leaves: int, root: bytes) -> bytes:
    return ROOT_DOMAIN + f"{key}\n{leaves}\n{root.hex()}".encode()


def cutover_message(stream: str, seq: int, key: str) -> bytes:
    return CUTOVER_DOMAIN + f"{stream}\n{seq}\n{key}".encode()


def bundle_message(key: str, digest: str) -> bytes:
    """What an Organization's bundle signature signs: its SHA-256 (hex), by the key ``key``."""
    return BUNDLE_DOMAIN + f"{key}\n{digest}".encode()


def bundle_signature_valid(public_key: Ed25519PublicKey, digest: str, sig: str) -> bool:
    try:
        public_key.verify(_unb64(sig), bundle_message(key_id(public_key), digest))
    except (InvalidSignature, ValueError):
        return False
    return True


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
        # Each append's signature, by libsodium (the same Ed25519 as the key's own ``sign``,
        # RFC 8032: deterministic, the same bytes; 21 against 28 µs here).
        seed = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        self._sodium = SigningKey(seed)

    def __repr__(self) -> str:
        return f"EventSigner(key={self.key_id})"

    @staticmethod
    def chain(envelope: EventEnvelope, prev: str) -> Link:
        """``envelope`` (without a proof) as the event after ``prev`` in its aggregate."""
        return Link(prev, _leaf(prev, encode_envelope(envelope)))

    def seal(self, parts: Sequence[Sequence[Link]]) -> list[list[ChainProof]]:
        """The proofs of one append's events: ``parts`` holds each aggregate's events in the
        order they are appended. One signature over the Merkle root of the parts' last links;
        the other events carry their chain only."""
        chosen = [part for part in parts if part]
        if not chosen:
            return [[] for _ in parts]
        root, paths = merkle([part[-1].leaf for part in chosen])
        leaves = len(chosen)
        sig = _b64(self._sodium.sign(root_message(self.key_id, leaves, root)).signature)
        sealed = iter(zip(range(leaves), paths, strict=True))
        out: list[list[ChainProof]] = []
        for part in parts:
            size = len(part)
            proofs: list[ChainProof] = [
                ChainProof.model_construct(prev=link.prev, i=i, n=size)
                for i, link in enumerate(part[:-1])
            ]
            if part:
                j, path = next(sealed)
                proofs.append(
                    SignedProof.model_construct(
                        prev=part[-1].prev,
                        i=size - 1,
                        n=size,
                        key=self.key_id,
                        j=j,
                        m=leaves,
                        path=_b64(b"".join(path)),
                        sig=sig,
                    )
                )
            out.append(proofs)
        return out

    def sign_append(
        self, parts: Sequence[tuple[str, Sequence[EventEnvelope]]]
    ) -> list[tuple[list[EventEnvelope], str]]:
        """A whole append at once (a writer that decides nothing in between, unlike the
        processors): each part given with its aggregate's head, back with its proofs and the
        aggregate's new head."""
        chained = []
        for head, envelopes in parts:
            links = []
            for envelope in envelopes:
                link = self.chain(envelope, head)
                links.append(link)
                head = link.head
            chained.append(links)
        out = []
        for (head, envelopes), links, proofs in zip(
            parts, chained, self.seal(chained), strict=True
        ):
            sealed = [
                envelope.model_copy(update={"proof": proof})
                for envelope, proof in zip(envelopes, proofs, strict=True)
            ]
            out.append((sealed, links[-1].head if links else head))
        return out

    def sign_cutover(self, stream: str, seq: int) -> str:
        return _b64(self._key.sign(cutover_message(stream, seq, self.key_id)))

    def sign_bundle(self, digest: str) -> str:
        """An Organization's export bundle (``voucher-ledger org export``), by its digest."""
        return _b64(self._key.sign(bundle_message(self.key_id, digest)))


class EventChecker:
    """The verifying side: the public key, the cut-over (the first stream sequence at which
    every event must be signed), and the append roots it verified (a root is a hash of what it
    covers: one good signature over it covers every part that leads to it). Checking events
    in order, part by part, with the aggregates' heads, is :class:`~.chain.PartChecker`."""

    def __init__(self, public_key: Ed25519PublicKey, cutover: int) -> None:
        self.public_key = public_key
        self.key_id = key_id(public_key)
        # Each append's signature is verified by libsodium: 51 µs against OpenSSL's 94 here,
        # a few per cent of serve, whose projector checks every append it applies.
        self._sodium = VerifyKey(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw))
        self.cutover = cutover
        self._roots: dict[tuple[int, bytes, bytes], None] = {}  # verified, oldest first

    def unsigned(self, seq: int, where: str = "") -> None:
        """An event without a proof: accepted before the cut-over only."""
        if seq < self.cutover:
            return
        raise IntegrityError(
            seq,
            "unsigned",
            f"no proof, and every event from the cut-over at {self.cutover} must be signed",
            where,
        )

    def check_signature(self, seq: int, signature: Signature, link: str, where: str = "") -> None:
        """The last event of a part: its link's path leads, at its place, to a root signed with
        the key. The whole path is walked every time (every reader reaches the same verdict on
        the same bytes, whatever it checked before); the signature is verified once per append
        (the verified ``(leaves, root, sig)`` are remembered)."""
        if signature.key != self.key_id:
            raise IntegrityError(
                seq, "unknown_key", f"signed by key {signature.key}, not {self.key_id}", where
            )
        index, count, path = signature.leaf, signature.leaves, signature.path
        if not 0 <= index < count:
            raise IntegrityError(seq, "bad_signature", "its place in the append is not", where)
        node, offset = bytes.fromhex(link), 0
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
        signed = (signature.leaves, node, signature.sig)
        if signed in known:
            return
        try:
            self._sodium.verify(root_message(signature.key, signature.leaves, node), signature.sig)
        except (BadSignatureError, ValueError):
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
