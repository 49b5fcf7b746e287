"""What signing costs per event: ``python -m bench.signing [--events N] [--per-append K ...]``.

Times, on envelopes shaped as the processors write them (voucher redemptions), for appends of K
events in two shapes: a hot code (one aggregate's K events: one part, whose last event carries
the signature) and distinct codes (K aggregates of one event each: K parts, each signed through
one Merkle root). Per event: the encoding the store does anyway; the seal (chaining each event,
one Merkle root and one Ed25519 signature per append, the envelope copies with their proofs);
the checks the readers do, in stream order (the projector's, rebuild's and verify's from the
stored bytes; a processor's load from decoded envelopes), with a fresh checker each time, so
every append's signature is verified once. Prints microseconds per event and the body size.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from voucher_ledger.ledger.events import (
    Actor,
    EventEnvelope,
    VoucherRedeemed,
    decode_envelope,
    encode_envelope,
)
from voucher_ledger.signing.chain import PartChecker
from voucher_ledger.signing.proof import GENESIS, EventChecker, EventSigner, proof_of, read_proof


def envelopes(n: int, codes: int = 1) -> list[EventEnvelope]:
    """``n`` redemptions, of one code (``codes=1``) or spread over ``codes`` codes in turn."""
    now = datetime.now(UTC)
    actor = Actor(sub="customer-0001", role="customer")
    out = []
    for i in range(n):
        code = f"CODE{i % codes:06d}"
        out.append(
            EventEnvelope.model_construct(
                event_id=f"{i:08d}-0000-4000-8000-000000000000",
                aggregate="voucher",
                aggregate_id=code,
                occurred_at=now,
                actor=actor,
                command_id=f"c{i:031d}",
                command_fingerprint="f" * 64,
                event=VoucherRedeemed(
                    code=code,
                    customer_id=f"customer-{i:08d}",
                    redemption_id=f"r-{i:08d}",
                    credit_baisa=5000,
                    user_id=f"user-{i:08d}",
                ),
            )
        )
    return out


def per_event(label: str, n: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    micros = best / n * 1e6
    print(f"{label:<52} {micros:8.1f} µs/event")
    return micros


def seal(signer: EventSigner, plain: list[EventEnvelope], per_append: int) -> list[EventEnvelope]:
    """``plain`` chained and sealed as the processors do, ``per_append`` events an append,
    each aggregate's events of an append one part."""
    sealed: list[EventEnvelope] = []
    heads: dict[str, str] = {}
    for start in range(0, len(plain), per_append):
        parts: dict[str, list[EventEnvelope]] = {}
        for env in plain[start : start + per_append]:
            parts.setdefault(env.aggregate_id, []).append(env)
        signed = signer.sign_append(
            [(heads.get(code, GENESIS), part) for code, part in parts.items()]
        )
        for code, (part, head) in zip(parts, signed, strict=True):
            sealed.extend(part)
            heads[code] = head
    return sealed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5040)
    parser.add_argument("--per-append", type=int, nargs="+", default=[1, 8, 36])
    args = parser.parse_args()
    n = args.events
    signer = EventSigner(Ed25519PrivateKey.generate())
    unsigned = envelopes(n)
    per_event(
        "encode, unsigned (what the store did before)",
        n,
        lambda: [encode_envelope(e) for e in unsigned],
    )
    for k in args.per_append:
        for shape, codes in (("hot code", 1), ("distinct codes", k)):
            if k == 1 and codes == 1 and shape != "hot code":
                continue
            plain = envelopes(n, codes)
            print(f"-- {k} event(s) per append, {shape}")
            per_event(
                "seal: chain + Merkle root + Ed25519 sign + copies",
                n,
                lambda plain=plain, k=k: seal(signer, plain, k),  # type: ignore[misc]
            )
            sealed = seal(signer, plain, k)
            bodies = [encode_envelope(e) for e in sealed]
            sizes = sorted(len(b) for b in bodies)
            print(
                f"{'body size unsigned / signed (median, largest)':<52} "
                f"{len(encode_envelope(plain[0])):5d} / {sizes[len(sizes) // 2]}, {sizes[-1]} bytes"
            )
            decoded = [decode_envelope(b) for b in bodies]

            keys: list[tuple[str, str]] = [(e.aggregate, e.aggregate_id) for e in decoded]

            def check_raw(bodies: list[bytes] = bodies, keys: list[tuple[str, str]] = keys) -> None:
                parts = PartChecker(EventChecker(signer.public_key, cutover=1))
                for seq, (raw, key) in enumerate(zip(bodies, keys, strict=True), 1):
                    parts.feed(seq, key, read_proof(raw))
                parts.finish()

            def check_envelopes(decoded: list[EventEnvelope] = decoded) -> None:
                parts = PartChecker(EventChecker(signer.public_key, cutover=1))
                for seq, env in enumerate(decoded, 1):
                    parts.feed(seq, (env.aggregate, env.aggregate_id), proof_of(env))
                parts.finish()

            per_event("check from stored bytes (projector, rebuild, verify)", n, check_raw)
            per_event("check from a decoded envelope (processor load)", n, check_envelopes)


if __name__ == "__main__":
    main()
