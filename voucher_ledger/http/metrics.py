"""``/metrics`` on prometheus-client: one ``CollectorRegistry`` per app (never the library's
global one: tests build several apps in one process).

* What the HTTP process counts itself is a ``Counter`` (commands the API sent, by outcome) and a
  ``Histogram`` (request latency by method, route and status) in that registry.
* What other parts of the service know (the projections' lag, the counters of the processors,
  which run in a child process) is read at scrape time by the ``/metrics`` handler and handed to
  :meth:`Metrics.render`, whose :class:`ScrapeCollector` yields it as metric families.

Label values are escaped by the library (backslash, double quote, line feed); it writes sample
values as Go floats (``1.0``) and a sample's label names in sorted order, both as the text
format allows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import disable_created_metrics as _disable_created_metrics
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from voucher_ledger.service.worker import ProcessorReport

# The ``*_created`` series carry nothing a scraper of this service uses and would double the
# series count; this switch is process-wide in prometheus-client (it only affects output).
_disable_created_metrics()  # type: ignore[no-untyped-call]

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The HTTP methods a label may name; any other (a client may send any token) counts as "other",
# so a scanner cannot grow the histogram without bound.
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)

LabelPairs = tuple[tuple[str, str], ...]
# metric name -> samples (label pairs in the order they are declared, value)
Samples = Mapping[str, Sequence[tuple[LabelPairs, float]]]

# The families read at scrape time, with their help text. Counter names keep their ``_total``.
HELP = {
    "voucher_ledger_projection_lag_events": "Events each projection still has to apply.",
    "voucher_ledger_processor_commands_total": "Commands the processors decided, by outcome.",
    "voucher_ledger_processor_conflicts_total": "Appends refused for a wrong last sequence.",
    "voucher_ledger_processor_transient_refusals_total": (
        "Appends the event store refused for a passing reason (not conflicts)."
    ),
    "voucher_ledger_processor_loads_total": "Aggregate histories read from the event stream.",
    "voucher_ledger_processor_presumed_total": (
        "Aggregates decided as new without reading their history."
    ),
    "voucher_ledger_processor_presumed_wrong_total": (
        "Aggregates presumed new that had a history (refused append, decided again)."
    ),
    "voucher_ledger_processor_events_appended_total": "Events the processors appended.",
    "voucher_ledger_processor_appends_total": "Appends that stored events.",
    "voucher_ledger_processor_append_seconds_total": "Wall time of those appends.",
    "voucher_ledger_processor_partitions_held": "Command partitions this instance processes.",
}


def scrape_samples(
    lag: Mapping[str, int] | None, report: ProcessorReport | None
) -> tuple[Samples, Samples]:
    """(gauges, counters) for one scrape: the projections' lag (absent when NATS or Postgres
    cannot say) and the processors' report (absent when none run here or the child does not
    answer)."""
    gauges: dict[str, list[tuple[LabelPairs, float]]] = {}
    counters: dict[str, list[tuple[LabelPairs, float]]] = {}
    if lag is not None:
        gauges["voucher_ledger_projection_lag_events"] = [
            ((("projection", name),), float(value)) for name, value in sorted(lag.items())
        ]
    if report is not None:
        stats = report.stats
        counters["voucher_ledger_processor_commands_total"] = [
            ((("type", t), ("outcome", o)), float(n))
            for (t, o), n in sorted(stats.commands.items())
        ]
        counters["voucher_ledger_processor_conflicts_total"] = [((), float(stats.conflicts))]
        counters["voucher_ledger_processor_transient_refusals_total"] = [
            ((), float(stats.transient_refusals))
        ]
        counters["voucher_ledger_processor_loads_total"] = [((), float(stats.loads))]
        counters["voucher_ledger_processor_presumed_total"] = [((), float(stats.presumed))]
        counters["voucher_ledger_processor_presumed_wrong_total"] = [
            ((), float(stats.presumed_wrong))
        ]
        counters["voucher_ledger_processor_events_appended_total"] = [
            ((), float(stats.events_appended))
        ]
        # Appends that stored events: events_appended / appends is the mean events per append.
        counters["voucher_ledger_processor_appends_total"] = [((), float(stats.appends))]
        counters["voucher_ledger_processor_append_seconds_total"] = [
            ((), round(stats.append_seconds, 6))
        ]
        # Checkout placements handed on by the partition that decided their redemption.
        counters["voucher_ledger_processor_chained_total"] = [((), float(stats.chained))]
        gauges["voucher_ledger_processor_partitions_held"] = [((), float(len(report.partitions)))]
    return gauges, counters


class ScrapeCollector(Collector):
    """The families read for the scrape in progress (see :meth:`Metrics.render`)."""

    def __init__(self) -> None:
        self.gauges: Samples = {}
        self.counters: Samples = {}

    def collect(self) -> Iterable[Metric]:
        yield from _families(self.counters, CounterMetricFamily)
        yield from _families(self.gauges, GaugeMetricFamily)


def _families(
    samples: Samples, family: type[CounterMetricFamily] | type[GaugeMetricFamily]
) -> Iterator[Metric]:
    for name, values in samples.items():
        labels = [key for key, _ in values[0][0]] if values else []
        metric = family(name, HELP.get(name, name), labels=labels)
        for pairs, value in values:
            metric.add_metric([v for _, v in pairs], value)
        yield metric


class Metrics:
    """One app's metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._commands = Counter(
            "voucher_ledger_commands",
            "Commands sent by the API, by outcome.",
            ["type", "outcome"],  # (the text format lists label names sorted, whatever order)
            registry=self.registry,
        )
        self._latency = Histogram(
            "voucher_ledger_http_request_duration_seconds",
            "HTTP request latency.",
            ["method", "route", "status"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self._scrape = ScrapeCollector()
        self.registry.register(self._scrape)

    def count_command(self, command_type: str, outcome: str) -> None:
        """One command the API sent, by its outcome (accepted, a refusal's reason, timeout...)."""
        self._commands.labels(command_type, outcome).inc()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self._latency.labels(method if method in METHODS else "other", route, str(status)).observe(
            seconds
        )

    def render(self, gauges: Samples, counters: Samples | None = None) -> str:
        """The text exposition: this registry's metrics plus ``gauges`` and ``counters`` read
        for this scrape. (No await between setting them and rendering: a concurrent scrape
        cannot mix its values in.)"""
        self._scrape.gauges, self._scrape.counters = gauges, counters or {}
        try:
            return generate_latest(self.registry).decode()
        finally:
            self._scrape.gauges, self._scrape.counters = {}, {}
