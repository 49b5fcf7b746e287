"""/metrics' text: label values escaped as the exposition format requires, and the HTTP method
label bounded to the standard methods."""

from __future__ import annotations

from collections import Counter

from voucher_ledger.commands.processor import ProcessorStats
from voucher_ledger.http.metrics import Metrics, scrape_samples
from voucher_ledger.service.worker import ProcessorReport


def _samples(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_a_label_value_with_a_newline_quote_or_backslash_stays_on_its_sample_line() -> None:
    metrics = Metrics()
    metrics.observe_request("GET", '/a\nb"c\\d', 200, 0.01)
    gauges = {"voucher_ledger_projection_lag_events": [((("projection", "x\ny"),), 1.0)]}
    text = metrics.render(gauges)
    for line in _samples(text):
        assert line.startswith("voucher_ledger_"), line
    assert 'route="/a\\nb\\"c\\\\d"' in text
    assert 'voucher_ledger_projection_lag_events{projection="x\\ny"} 1.0' in text


def test_an_unknown_http_method_is_counted_as_other() -> None:
    metrics = Metrics()
    for method in ("GET", "POST", "FROBNICATE", "X1", "X2"):
        metrics.observe_request(method, "unmatched", 405, 0.001)
    text = metrics.render({})
    counts = [line for line in _samples(text) if "_count{" in line]
    methods = sorted(line.split('method="')[1].split('"')[0] for line in counts)
    assert methods == ["GET", "POST", "other"]
    assert 'method="other",route="unmatched",status="405"} 3' in text
    assert "FROBNICATE" not in text


def test_the_processor_childs_counters_reach_metrics_through_its_report() -> None:
    """The child's report travels as JSON (service/worker.py); every counter of it, the
    transient refusals included, shows on /metrics."""
    stats = ProcessorStats(
        commands=Counter({("redeem_voucher", "accepted"): 5}),
        conflicts=2,
        transient_refusals=3,
        appends=4,
        events_appended=6,
        append_seconds=0.25,
        loads=8,
        presumed=9,
        presumed_wrong=1,
        chained=11,
    )
    report = ProcessorReport.from_json(ProcessorReport([0, 3], stats).to_json())
    text = Metrics().render(*scrape_samples({"vouchers": 7}, report))
    for line in (
        "# TYPE voucher_ledger_processor_transient_refusals_total counter",
        "voucher_ledger_processor_transient_refusals_total 3.0",
        "voucher_ledger_processor_conflicts_total 2.0",
        'voucher_ledger_processor_commands_total{outcome="accepted",type="redeem_voucher"} 5.0',
        "voucher_ledger_processor_appends_total 4.0",
        "voucher_ledger_processor_events_appended_total 6.0",
        "voucher_ledger_processor_append_seconds_total 0.25",
        "voucher_ledger_processor_loads_total 8.0",
        "voucher_ledger_processor_presumed_total 9.0",
        "voucher_ledger_processor_presumed_wrong_total 1.0",
        "voucher_ledger_processor_chained_total 11.0",
        "voucher_ledger_processor_partitions_held 2.0",
        'voucher_ledger_projection_lag_events{projection="vouchers"} 7.0',
    ):
        assert line in text.splitlines(), (line, text)


def test_each_app_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.count_command("issue_voucher", "accepted")
    assert "issue_voucher" in first.render({})
    assert "issue_voucher" not in second.render({})
