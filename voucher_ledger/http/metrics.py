"""A small Prometheus text-format registry (counters, gauges, one latency histogram)."""

from __future__ import annotations

from collections import Counter, defaultdict

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The HTTP methods a label may name; any other (a client may send any token) counts as "other",
# so a scanner cannot grow the histogram without bound.
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)


def escape(value: str) -> str:
    """A label value in the text format: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in pairs) + "}"


class Metrics:
    def __init__(self) -> None:
        self.commands: Counter[tuple[str, str]] = Counter()  # (type, outcome) seen by the API
        self._latency: dict[tuple[str, str, str], list[int]] = defaultdict(
            lambda: [0] * (len(BUCKETS) + 1)
        )
        self._latency_sum: dict[tuple[str, str, str], float] = defaultdict(float)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method if method in METHODS else "other", route, str(status))
        counts = self._latency[key]
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                counts[i] += 1
        counts[-1] += 1
        self._latency_sum[key] += seconds

    def render(
        self,
        gauges: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]],
        counters: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]] | None = None,
    ) -> str:
        out: list[str] = []
        out.append("# HELP voucher_ledger_commands_total Commands sent by the API, by outcome.")
        out.append("# TYPE voucher_ledger_commands_total counter")
        for (ctype, outcome), n in sorted(self.commands.items()):
            labels = _labels((("type", ctype), ("outcome", outcome)))
            out.append(f"voucher_ledger_commands_total{labels} {n}")
        for name, samples in (counters or {}).items():
            out.append(f"# TYPE {name} counter")
            for pairs, value in samples:
                out.append(f"{name}{_labels(pairs)} {value}")
        for name, samples in gauges.items():
            out.append(f"# TYPE {name} gauge")
            for pairs, value in samples:
                out.append(f"{name}{_labels(pairs)} {value}")
        name = "voucher_ledger_http_request_duration_seconds"
        out.append(f"# HELP {name} HTTP request latency.")
        out.append(f"# TYPE {name} histogram")
        for key in sorted(self._latency):
            method, route, status = key
            base = (("method", method), ("route", route), ("status", status))
            counts = self._latency[key]
            for bound, count in zip(BUCKETS, counts, strict=False):
                out.append(f"{name}_bucket{_labels((*base, ('le', str(bound))))} {count}")
            out.append(f"{name}_bucket{_labels((*base, ('le', '+Inf')))} {counts[-1]}")
            out.append(f"{name}_sum{_labels(base)} {self._latency_sum[key]:.6f}")
            out.append(f"{name}_count{_labels(base)} {counts[-1]}")
        return "\n".join(out) + "\n"
