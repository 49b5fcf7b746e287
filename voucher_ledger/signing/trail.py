"""The Sovereigns' signatures, checked at the hub on its trail (issue #22).

Every Sovereign's processors sign its events (``proof.py``: a hash chain per aggregate, one
signature per append). nats-server copies them verbatim into the hub's trail, interleaved
with other Sovereigns' and under renamed subjects; the header ``Nats-Stream-Source`` it adds
keeps each event's sequence in the Sovereign's own stream. :class:`TrailChecker` checks each
Sovereign's events with that Sovereign's public key, in that Sovereign's order and at those
sequences, as a reader of the Sovereign's own stream from its start would (every event of an
aggregate, in order: a reader that filters must keep whole aggregates). A Sovereign whose trail
fails once is failed for good (until the hub reads the trail again from its start).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from voucher_ledger.signing.chain import Key, PartChecker
from voucher_ledger.signing.keys import SigningKeyError, parse_public_key
from voucher_ledger.signing.proof import EventChecker, IntegrityError, read_proof

SOURCE_HEADER = "Nats-Stream-Source"  # "<stream>:<hash> <sequence> <filter> <dest> ..."
KEY_SUFFIX = ".pub"


def source_sequence(headers: Mapping[str, str] | None) -> int | None:
    """The event's sequence in the stream it was sourced from, or None (not sourced)."""
    value = (headers or {}).get(SOURCE_HEADER, "")
    parts = value.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    return int(parts[1])


def load_keys(directory: Path, names: list[str]) -> dict[str, Ed25519PublicKey]:
    """``<name>.pub`` of every Sovereign named (SigningKeyError naming a missing or bad one)."""
    keys = {}
    for name in names:
        path = directory / f"{name}{KEY_SUFFIX}"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SigningKeyError(
                f"SOVEREIGN_KEYS_DIR: no public key for Sovereign {name} ({path}: "
                f"{exc.strerror}); copy what `voucher-ledger signing-key` prints there"
            ) from None
        try:
            keys[name] = parse_public_key(data)
        except SigningKeyError as exc:
            raise SigningKeyError(f"SOVEREIGN_KEYS_DIR: {path}: {exc}") from None
    return keys


class TrailChecker:
    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        # Every event of a Sovereign is signed from its stream's first sequence (a Sovereign
        # runs with LEDGER_SIGNING from its start, the default).
        self._parts = {name: PartChecker(EventChecker(key, 1)) for name, key in keys.items()}
        self.failed: dict[str, str] = {}  # Sovereign -> why its trail is not trusted

    def check(
        self, sovereign: str, headers: Mapping[str, str] | None, key: Key, data: bytes
    ) -> str | None:
        """None when the event checks; else why (and the Sovereign is failed from then on)."""
        why = self.failed.get(sovereign)
        if why is not None:
            return why
        parts = self._parts.get(sovereign)
        seq = source_sequence(headers)
        if parts is None:
            why = f"no public key for Sovereign {sovereign}"
        elif seq is None:
            why = f"an event without its {SOURCE_HEADER} header (not sourced)"
        else:
            try:
                parts.feed(seq, key, read_proof(data), f"trail of {sovereign}")
            except IntegrityError as exc:
                why = f"its event {exc.seq} fails its check ({exc.code}): {exc}"
        if why is not None:
            self.failed[sovereign] = why
        return why
