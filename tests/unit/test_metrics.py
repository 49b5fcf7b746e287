"""/metrics' text: label values escaped as the exposition format requires, and the HTTP method
label bounded to the standard methods."""

from __future__ import annotations

from voucher_ledger.http.metrics import Metrics


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
