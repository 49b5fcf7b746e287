"""What a run measures: durability modes, workloads and their sizes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

WorkloadKind = Literal["hot", "distinct"]
PathName = Literal["baseline", "bus", "http", "seed"]
# seed: the seed's design over HTTP (bench/seed/main.go), beside the in-process row lock.
PATHS: tuple[PathName, ...] = ("baseline", "bus", "http", "seed")


@dataclass(frozen=True)
class Mode:
    """One durability setting of both sides."""

    name: str
    pg_synchronous_commit: Literal["on", "off"]
    nats_sync_always: bool
    description: str


MODES: dict[str, Mode] = {
    "matched": Mode(
        "matched",
        "on",
        True,
        "PostgreSQL synchronous_commit=on (fsync on) vs JetStream sync_interval: always",
    ),
    "defaults": Mode(
        "defaults",
        "on",  # PostgreSQL's own default is on: only the NATS side changes
        False,
        "each side's defaults: PostgreSQL synchronous_commit=on vs nats-server's default "
        "sync_interval (2 min)",
    ),
    "relaxed": Mode(
        "relaxed",
        "off",
        False,
        "neither side flushes per write: synchronous_commit=off vs the default sync_interval",
    ),
}


@dataclass(frozen=True)
class Workload:
    kind: WorkloadKind
    clients: int
    attempts: int
    cap: int  # the hot code's max_redemptions; 1 per code for distinct codes
    reduced: bool = False  # fewer attempts than the headline size (the 1-client rows)

    @property
    def codes(self) -> int:
        return 1 if self.kind == "hot" else self.attempts

    @property
    def expected_ok(self) -> int:
        return min(self.cap, self.attempts) if self.kind == "hot" else self.attempts

    @property
    def label(self) -> str:
        if self.kind == "hot":
            return f"one hot code, {self.attempts:,} attempts, cap {self.cap:,}"
        return f"{self.attempts:,} distinct codes, one attempt each"

    @property
    def key(self) -> str:
        return f"{self.kind}-{self.clients}"


@dataclass(frozen=True)
class Sizes:
    hot_attempts: int
    hot_cap: int
    distinct_codes: int
    clients: tuple[int, ...]
    # One client at a time takes ~1-5 ms per attempt: those rows run this many attempts
    # (the hot code's cap is half of it) to keep the full run short.
    single_client_attempts: int
    # A checkout over HTTP is a saga of several commands, ~10x slower than one redemption: the
    # HTTP path runs at most this many attempts per row (the hot code's cap scaled alike).
    http_max_attempts: int
    http_single_client_attempts: int

    def workloads(self, kinds: tuple[WorkloadKind, ...]) -> list[Workload]:
        out: list[Workload] = []
        for kind in kinds:
            for clients in self.clients:
                full = self.hot_attempts if kind == "hot" else self.distinct_codes
                reduced = clients == 1 and self.single_client_attempts < full
                attempts = self.single_client_attempts if reduced else full
                cap = (
                    (attempts * self.hot_cap) // self.hot_attempts
                    if kind == "hot" and reduced
                    else (self.hot_cap if kind == "hot" else 1)
                )
                out.append(Workload(kind, clients, attempts, cap, reduced))
        return out

    def for_http(self, workload: Workload) -> Workload:
        single = workload.clients == 1
        limit = self.http_single_client_attempts if single else self.http_max_attempts
        if workload.attempts <= limit:
            return workload
        cap = workload.cap * limit // workload.attempts if workload.kind == "hot" else workload.cap
        return Workload(workload.kind, workload.clients, limit, cap, reduced=True)

    def scaled(self, factor: float) -> Sizes:
        def scale(n: int) -> int:
            return max(2, round(n * factor))

        return Sizes(
            hot_attempts=scale(self.hot_attempts),
            hot_cap=scale(self.hot_cap),
            distinct_codes=scale(self.distinct_codes),
            clients=self.clients,
            single_client_attempts=scale(self.single_client_attempts),
            http_max_attempts=scale(self.http_max_attempts),
            http_single_client_attempts=scale(self.http_single_client_attempts),
        )


FULL = Sizes(
    hot_attempts=20_000,
    hot_cap=10_000,
    distinct_codes=10_000,
    clients=(1, 16, 64),
    single_client_attempts=2_000,
    http_max_attempts=2_500,
    http_single_client_attempts=500,
)
QUICK = Sizes(
    hot_attempts=160,
    hot_cap=80,
    distinct_codes=80,
    clients=(1, 16, 64),
    single_client_attempts=40,
    http_max_attempts=160,
    http_single_client_attempts=40,
)
