"""What signing costs per event: ``python -m bench.signing [--events N] [--per-append K ...]``.

Times, on envelopes shaped as the processors write them (a voucher redemption and a wallet
credit grant, alternating): the encoding the store does anyway, the seal (chaining each event,
then one Merkle root and one Ed25519 signature per append of K events, and the envelope copies
with their proofs), and the checks the readers do (the projector's, from the stored bytes; the
processors', from a decoded envelope; a fresh checker each time, so every append's signature is
verified once). Prints microseconds per event for each append size K: one signature per append
makes signing cost about 1/K of a signature per event.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from voucher_ledger.ledger.events import (
    Actor,
    CreditGranted,
    EventEnvelope,
    VoucherRedeemed,
    decode_envelope,
    encode_envelope,
)
from voucher_ledger.signing.proof import GENESIS, EventChecker, EventSigner


def envelopes(n: int) -> list[EventEnvelope]:
    now = datetime.now(UTC)
    actor = Actor(sub="customer-0001", role="customer")
    out = []
    for i in range(n):
        event: VoucherRedeemed | CreditGranted
        if i % 2:
            event = CreditGranted(
                customer_id="customer-0001",
                redemption_id=f"r-{i:08d}",
                code="HOTCODE1",
                order_id="",
                amount_baisa=5000,
            )
        else:
            event = VoucherRedeemed(
                code="HOTCODE1",
                customer_id="customer-0001",
                redemption_id=f"r-{i:08d}",
                credit_baisa=5000,
            )
        out.append(
            EventEnvelope.model_construct(
                event_id=f"{i:08d}-0000-4000-8000-000000000000",
                aggregate="voucher" if i % 2 == 0 else "wallet",
                aggregate_id="HOTCODE1",
                occurred_at=now,
                actor=actor,
                command_id=f"c{i:031d}",
                command_fingerprint="f" * 64,
                event=event,
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
    """``plain`` chained and sealed as the processors do, ``per_append`` events an append."""
    sealed: list[EventEnvelope] = []
    head = GENESIS
    for start in range(0, len(plain), per_append):
        chunk = plain[start : start + per_append]
        links = []
        for env in chunk:
            link = signer.chain(env, head)
            links.append(link)
            head = link.head
        proofs = signer.seal(links)
        pairs = zip(chunk, proofs, strict=True)
        sealed.extend(env.model_copy(update={"proof": proof}) for env, proof in pairs)
    return sealed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--per-append", type=int, nargs="+", default=[1, 8, 45])
    args = parser.parse_args()
    n = args.events
    signer = EventSigner(Ed25519PrivateKey.generate())
    plain = envelopes(n)
    per_event(
        "encode, unsigned (what the store did before)",
        n,
        lambda: [encode_envelope(e) for e in plain],
    )
    for k in args.per_append:
        print(f"-- {k} event(s) per append")
        per_event(
            "seal: chain + Merkle root + Ed25519 sign + copies",
            n,
            lambda k=k: seal(signer, plain, k),  # type: ignore[misc]
        )
        sealed = seal(signer, plain, k)
        bodies = [encode_envelope(e) for e in sealed]
        per_event(
            "encode, signed (what the store does now)",
            n,
            lambda sealed=sealed: [encode_envelope(e) for e in sealed],  # type: ignore[misc]
        )
        print(
            f"{'body size unsigned / signed':<52} "
            f"{len(encode_envelope(plain[0])):5d} / {len(bodies[0])} bytes"
        )

        def check_raw(bodies: list[bytes] = bodies) -> None:
            checker = EventChecker(signer.public_key, cutover=1)
            head = GENESIS
            for seq, raw in enumerate(bodies, 1):
                head = checker.check_raw(seq, raw, head)

        decoded = [decode_envelope(b) for b in bodies]

        def check_envelopes(decoded: list[EventEnvelope] = decoded) -> None:
            checker = EventChecker(signer.public_key, cutover=1)
            head = GENESIS
            for seq, env in enumerate(decoded, 1):
                head = checker.check_envelope(seq, env, head)

        per_event("check from stored bytes (projector, rebuild, verify)", n, check_raw)
        per_event("check from a decoded envelope (processor load)", n, check_envelopes)


if __name__ == "__main__":
    main()
