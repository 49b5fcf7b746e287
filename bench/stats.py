"""N concurrent clients working through a list of attempts, and what came of them."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

Outcome = Literal["ok", "cap", "other"]
T = TypeVar("T")


class Unexpected(Exception):
    """An attempt ended in neither a redemption nor the cap; the message says how."""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of unsorted values; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class RunStats:
    """One path's measurement of one workload."""

    attempts: int
    ok: int
    cap: int
    other: int
    seconds: float
    latencies_ms: list[float] = field(repr=False, default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        """Attempts decided per second (a redemption or a refusal at the cap)."""
        return self.attempts / self.seconds if self.seconds > 0 else 0.0

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)

    def to_json(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "ok": self.ok,
            "cap": self.cap,
            "other": self.other,
            "seconds": round(self.seconds, 4),
            "per_second": round(self.per_second, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "max_ms": round(max(self.latencies_ms, default=0.0), 3),
            "errors": dict(self.errors.most_common(10)),
            **self.extra,
        }


async def drive(
    clients: int, items: Sequence[T], attempt: Callable[[T], Awaitable[Outcome]]
) -> RunStats:
    """Run ``attempt`` on every item with ``clients`` concurrent workers, each starting its next
    attempt as soon as its previous one answered (a closed loop, as real clients do)."""
    latencies: list[float] = []
    outcomes: Counter[Outcome] = Counter()
    errors: Counter[str] = Counter()
    index = 0

    async def worker() -> None:
        nonlocal index
        while index < len(items):
            item = items[index]
            index += 1
            started = time.perf_counter()
            try:
                outcome = await attempt(item)
            except Unexpected as exc:
                outcome = "other"
                errors[str(exc)[:160]] += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported, never hidden
                outcome = "other"
                errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
            latencies.append((time.perf_counter() - started) * 1000)
            outcomes[outcome] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(clients, len(items)))))
    seconds = time.perf_counter() - started
    return RunStats(
        attempts=len(items),
        ok=outcomes["ok"],
        cap=outcomes["cap"],
        other=outcomes["other"],
        seconds=seconds,
        latencies_ms=latencies,
        errors=errors,
    )
