"""What signing costs per event: ``python -m bench.signing [--events N]``.

Times, on envelopes shaped as the processors write them (a voucher redemption and a wallet
credit grant, alternating): the encoding the store does anyway, the seal (encode + Ed25519
sign + the envelope copy with its proof), and the checks the readers do (the projector's, from
the stored bytes; the processors', from a decoded envelope). Prints microseconds per event.
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
                user_id="customer-0001",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5000)
    n = parser.parse_args().events
    signer = EventSigner(Ed25519PrivateKey.generate())
    checker = EventChecker(signer.public_key, cutover=1)
    plain = envelopes(n)
    sealed: list[EventEnvelope] = []

    def seal_all() -> None:
        sealed.clear()
        head = GENESIS
        for env in plain:
            env, head = signer.seal(env, head)
            sealed.append(env)

    per_event(
        "encode, unsigned (what the store did before)",
        n,
        lambda: [encode_envelope(e) for e in plain],
    )
    per_event("seal: encode + Ed25519 sign + copy", n, seal_all)
    bodies = [encode_envelope(e) for e in sealed]
    per_event(
        "encode, signed (what the store does now)", n, lambda: [encode_envelope(e) for e in sealed]
    )
    print(
        f"{'body size unsigned / signed':<52} "
        f"{len(encode_envelope(plain[0])):5d} / {len(bodies[0])} bytes"
    )

    def check_raw() -> None:
        head = GENESIS
        for seq, raw in enumerate(bodies, 1):
            head = checker.check_raw(seq, raw, head)

    decoded = [decode_envelope(b) for b in bodies]

    def check_envelopes() -> None:
        head = GENESIS
        for seq, env in enumerate(decoded, 1):
            head = checker.check_envelope(seq, env, head)

    per_event("check from stored bytes (projector, rebuild, verify)", n, check_raw)
    per_event("check from a decoded envelope (processor load)", n, check_envelopes)


if __name__ == "__main__":
    main()
