"""A smoke run of issue #6's benchmark (``python -m bench --quick``, tiny sizes): every row is
in the table, every figure is positive, and the cap is exact on every path. No time
thresholds: a shared machine's numbers are not a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

MODES = ("matched", "defaults")
WORKLOADS = ("hot", "distinct")
CLIENTS = (1, 16, 64)


def test_quick_benchmark_writes_every_row_with_positive_figures(
    tmp_path: Path, repo_root: Path
) -> None:
    out = tmp_path / "results"
    args = ["--quick", "--out", str(out), "--work-dir", str(tmp_path / "work")]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    results = json.loads((out / "results.json").read_text())
    rows = {(r["mode"], r["workload"], r["clients"]): r for r in results["rows"]}
    assert set(rows) == {(m, w, c) for m in MODES for w in WORKLOADS for c in CLIENTS}
    for key, row in rows.items():
        for path in ("baseline", "bus"):
            figures = row[path]
            assert figures["per_second"] > 0, (key, path)
            assert 0 < figures["p50_ms"] <= figures["p99_ms"], (key, path)
            # Exactly the cap on the hot code, every attempt on distinct codes; nothing failed.
            assert (figures["ok"], figures["other"]) == (row["expected_ok"], 0), (key, path)
        assert row["bus"]["lag_samples"] > 0, key
        assert row["bus"]["rss_peak_mb"] > 0, key
        if row["http"] is None:  # the checkout route is not there: skipped, with a note
            assert "404" in row["http_note"], key
        else:
            assert row["http"]["per_second"] > 0, key
            assert (row["http"]["ok"], row["http"]["other"]) == (row["http_expected_ok"], 0), key
    # The target rows (the hot code at the most clients) are measured in three trials and show
    # the whole trial whose bus/baseline ratio is the median; the other rows are measured once.
    for key, row in rows.items():
        if key[1:] != ("hot", max(CLIENTS)):
            assert "trials" not in row, key
            continue
        trials = row["trials"]
        assert len(trials) == 3, key
        ranked = sorted(trials, key=lambda t: t["bus"]["per_second"] / t["baseline"]["per_second"])
        for path in ("baseline", "bus", "http"):
            if row[path] is None:
                continue
            assert row[path] == ranked[1][path], (key, path)
            for trial in trials:
                assert trial[path]["ok"] == row[path]["ok"], (key, path)
    # The seed's design over HTTP (bench/seed, built by the run) beside this service's HTTP row:
    # alternated trials on every row, the same attempts, exactly the cap on both sides, no
    # failure, and the seed's tables as its answers said.
    assert results["complete"] is True
    for key, row in rows.items():
        trials = row["checkout_trials"]
        assert len(trials) == 3, key
        for trial in trials:
            for side in ("seed", "http"):
                figures = trial[side]
                assert figures["per_second"] > 0, (key, side)
                assert figures["attempts"] == row["http_attempts"], (key, side)
                assert (figures["ok"], figures["other"]) == (row["http_expected_ok"], 0), key
            assert trial["seed"]["consistent"] is True, key
            assert set(trial["seed"]["cpu_s"]) == {"seed", "postgres", "client"}, key
        ratios = [t["http"]["per_second"] / t["seed"]["per_second"] for t in trials]
        # the median trial's ratio, as results.json rounds it (three decimals)
        assert row["checkout"]["ratio"] == pytest.approx(sorted(ratios)[1], abs=5e-4), key
    assert len(results["targets_19"]) == 12
    assert results["rebuild"]["events"] > 0
    assert results["rebuild"]["events_per_second"] > 0
    runs = results["rebuild"]["runs"]  # three whole rebuilds, the median one is the figure
    assert len(runs) == 3
    assert results["rebuild"]["events_per_second"] == sorted(runs)[1]

    markdown = (out / "results.md").read_text()
    assert results["command"] in markdown
    for mode, workload, clients in rows:
        assert f"| {mode} | {workload} | {clients} |" in markdown
    assert "## Targets (issue #6)" in markdown
    assert "## Targets (issue #19)" in markdown
    assert "## HTTP checkout: voucher-ledger against the seed's design over HTTP" in markdown
    assert "## Trials of the target rows" in markdown
    assert "(median of 3 trials; each trial: " in markdown
    assert (out / "chart.png").read_bytes().startswith(b"\x89PNG")
    # The table is printed at the end, too.
    assert "| durability | workload | clients |" in proc.stdout
