"""The run's results as JSON, a markdown report and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.config import PATHS

Results = dict[str, Any]

TARGETS = {
    "bus_ratio": 5.0,
    "http_ratio": 2.0,
    "rebuild_eps": 20_000.0,
}
# The server side of a checkout, per side: the seed's Go server and PostgreSQL against serve
# (with its processor process), nats-server and PostgreSQL. The client is the same on both.
SERVER_PROCS = {"seed": ("seed", "postgres"), "http": ("service", "nats", "postgres")}
MAIN_PATHS = ("baseline", "bus", "http")


def _num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:,.1f}"


def _ratio(service: dict[str, Any] | None, baseline: dict[str, Any] | None) -> float | None:
    if not service or not baseline or not baseline.get("per_second"):
        return None
    return float(service["per_second"]) / float(baseline["per_second"])


def _path_cells(result: dict[str, Any] | None, baseline: dict[str, Any] | None) -> list[str]:
    if result is None:
        return ["n/a", "", ""] + ([""] if baseline is not None else [])
    cells = [_num(result["per_second"]), _ms(result["p50_ms"]), _ms(result["p99_ms"])]
    if baseline is not None:
        ratio = _ratio(result, baseline)
        cells.append(f"**{ratio:.2f}×**" if ratio is not None else "")
    return cells


def _row_label(row: dict[str, Any]) -> list[str]:
    attempts = f"{row['attempts']:,}" + ("*" if row["reduced"] else "")
    http = row.get("http_attempts")
    if http is not None and http != row["attempts"]:
        attempts += f" (HTTP {http:,}†)"
    return [row["mode"], row["workload"], str(row["clients"]), attempts]


def main_table(results: Results) -> list[str]:
    lines = [
        "| durability | workload | clients | attempts | baseline /s | p50 ms | p99 ms "
        "| bus /s | p50 ms | p99 ms | bus ÷ baseline | HTTP /s | p50 ms | p99 ms "
        "| HTTP ÷ baseline |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        base = row.get("baseline")
        cells = _row_label(row)
        cells += _path_cells(base, None) if base else ["n/a", "", ""]
        cells += _path_cells(row.get("bus"), base or {})
        cells += _path_cells(row.get("http"), base or {})
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _redeemed(row: dict[str, Any]) -> str:
    parts = []
    for path in MAIN_PATHS:
        result = row.get(path)
        if result is None:
            parts.append("–")
            continue
        text = f"{result['ok']:,}"
        if result["other"]:
            text += f" (+{result['other']:,} failed)"
        parts.append(text)
    return " / ".join(parts)


def _lag(result: dict[str, Any] | None) -> str:
    if not result or "lag_p99_events" not in result:
        return "–"
    return f"{_num(result['lag_p99_events'])} ev / {_num(result['lag_p99_ms'])} ms"


def service_table(results: Results) -> list[str]:
    lines = [
        "| durability | workload | clients | redeemed: baseline / bus / HTTP (expected) "
        "| projection lag p99, bus storm | projection lag p99, HTTP storm "
        "| drain after bus storm s | events per append, ms per append (bus / HTTP storm) "
        "| service RSS peak MiB (bus / HTTP storm) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        bus, http = row.get("bus"), row.get("http")
        rss = " / ".join(
            _num(r["rss_peak_mb"], 1) if r and "rss_peak_mb" in r else "–" for r in (bus, http)
        )
        per_append = " / ".join(
            f"{_num(r['events_per_append'], 1)}, {_num(r.get('append_ms') or 0, 1)} ms"
            if r and r.get("events_per_append")
            else "–"
            for r in (bus, http)
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    row["mode"],
                    row["workload"],
                    str(row["clients"]),
                    f"{_redeemed(row)} ({row['expected_ok']:,})",
                    _lag(bus),
                    _lag(http),
                    f"{bus['drain_s']:.2f}" if bus and "drain_s" in bus else "–",
                    per_append,
                    rss,
                ]
            )
            + " |"
        )
    return lines


def _cpu(result: dict[str, Any] | None, names: tuple[str, ...]) -> str:
    if not result or "cpu_s" not in result:
        return "–"
    attempts = result["attempts"]
    return " / ".join(f"{1000 * result['cpu_s'].get(name, 0.0) / attempts:.2f}" for name in names)


def cpu_table(results: Results) -> list[str]:
    service_procs = ("service", "nats", "postgres", "client")
    lines = [
        "| durability | workload | clients | baseline: postgres / client "
        "| bus: service / nats / postgres / client | HTTP: service / nats / postgres / client "
        "| seed over HTTP: seed / postgres / client |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            "| "
            + " | ".join(
                [
                    row["mode"],
                    row["workload"],
                    str(row["clients"]),
                    _cpu(row.get("baseline"), ("postgres", "client")),
                    _cpu(row.get("bus"), service_procs),
                    _cpu(row.get("http"), service_procs),
                    _cpu((row.get("checkout") or row).get("seed"), ("seed", "postgres", "client")),
                ]
            )
            + " |"
        )
    return lines


def _per_trial(row: dict[str, Any], path: str) -> list[float]:
    """The ratios of ``path`` to the baseline, trial by trial (each pair minutes apart at most)."""
    ratios = (_ratio(t.get(path), t.get("baseline")) for t in row.get("trials", []))
    return [r for r in ratios if r is not None]


def _reached(ratio: float, row: dict[str, Any], path: str) -> tuple[float, str]:
    """The ratio a target is judged on, and how it reads: with trials, the median of the
    trials' own ratios (each a pair of storms seconds apart), every one listed."""
    each = _per_trial(row, path)
    if len(each) < 2:
        return ratio, f"{ratio:.2f}×"
    median = sorted(each)[(len(each) - 1) // 2]
    shown = ", ".join(f"{r:.2f}×" for r in each)
    return median, f"{median:.2f}× (median of {len(each)} trials; each trial: {shown})"


def trials_table(results: Results) -> list[str]:
    lines = [
        "| durability | workload | clients | trial | baseline /s | bus /s | bus ÷ baseline "
        "| HTTP /s | HTTP ÷ baseline |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        for n, trial in enumerate(row.get("trials", []), start=1):
            base = trial.get("baseline")
            cells = [row["mode"], row["workload"], str(row["clients"]), str(n)]
            cells.append(_num(base["per_second"]) if base else "–")
            for path in ("bus", "http"):
                figures = trial.get(path)
                ratio = _ratio(figures, base)
                cells.append(_num(figures["per_second"]) if figures else "–")
                cells.append(f"{ratio:.2f}×" if ratio is not None else "–")
            lines.append("| " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


def targets(results: Results) -> list[dict[str, Any]]:
    """Issue #6's targets, as ratios of this run."""
    out: list[dict[str, Any]] = []
    row = next(
        (
            r
            for r in results["rows"]
            if r["mode"] == "matched" and r["workload"] == "hot" and r["clients"] == 64
        ),
        None,
    )
    if row is not None and row.get("baseline"):
        base = row["baseline"]
        bus = row.get("bus")
        ratio = _ratio(bus, base)
        if bus is not None and ratio is not None:
            ratio, reached = _reached(ratio, row, "bus")
            out.append(
                {
                    "target": "hot code, 64 clients, matched durability: command bus ≥ 5× "
                    "the row-lock baseline",
                    "reached": reached,
                    "met": ratio >= TARGETS["bus_ratio"],
                }
            )
            out.append(
                {
                    "target": "… with p99 latency no worse than the baseline's",
                    "reached": f"{bus['p99_ms']:.1f} ms vs {base['p99_ms']:.1f} ms",
                    "met": bus["p99_ms"] <= base["p99_ms"],
                }
            )
        http = row.get("http")
        ratio = _ratio(http, base)
        reached = row.get("http_note", "n/a")
        if ratio is not None:
            ratio, reached = _reached(ratio, row, "http")
        out.append(
            {
                "target": "hot code, 64 clients, matched durability: end to end over HTTP ≥ 2×",
                "reached": reached,
                "met": ratio is not None and ratio >= TARGETS["http_ratio"],
            }
        )
    rebuild = results.get("rebuild")
    if rebuild and "events_per_second" in rebuild:
        eps = float(rebuild["events_per_second"])
        out.append(
            {
                "target": "rebuild ≥ 20,000 events/s",
                "reached": f"{eps:,.0f} events/s",
                "met": eps >= TARGETS["rebuild_eps"],
            }
        )
    return out


def _median(values: list[float]) -> float:
    """The lower middle value (the middle one of an odd number), as the trials are chosen."""
    return sorted(values)[(len(values) - 1) // 2]


def server_cpu_ms(result: dict[str, Any], side: str) -> float:
    """CPU ms per attempt of the side's server processes together (the client left out)."""
    cpu = result.get("cpu_s", {})
    seconds = sum(float(cpu.get(name, 0.0)) for name in SERVER_PROCS[side])
    return 1000 * seconds / float(result["attempts"])


def _cpu_split(result: dict[str, Any], side: str) -> str:
    names = SERVER_PROCS[side]
    parts = " / ".join(
        f"{1000 * float(result.get('cpu_s', {}).get(n, 0.0)) / result['attempts']:.2f}"
        for n in names
    )
    return f"{parts} = **{server_cpu_ms(result, side):.2f}**"


def _stored(result: dict[str, Any]) -> str:
    text = f"{result['ok']:,}"
    if result["other"]:
        text += f" (+{result['other']:,} failed)"
    if result.get("consistent") is False:
        text += " (database differs)"
    return text


def checkout_table(results: Results) -> list[str]:
    """The seed's design over HTTP against this service over HTTP, each row's median trial."""
    lines = [
        "| durability | workload | clients | load | attempts | seed /s | p50 ms | p99 ms "
        "| voucher-ledger /s | p50 ms | p99 ms | ours ÷ seed (each trial) "
        "| CPU ms per checkout, seed: seed / postgres = all "
        "| ours: serve+processors / nats / postgres = all | redeemed seed / ours (expected) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for row in results["rows"]:
        chosen = row.get("checkout")
        if not chosen:
            continue
        seed, http = chosen["seed"], chosen["http"]
        each = ", ".join(f"{r:.2f}" for r in chosen["ratios"])
        cells = [
            row["mode"],
            row["workload"],
            str(row["clients"]),
            f"{row.get('load_average', 0):.1f}",
            f"{http['attempts']:,}",
            _num(seed["per_second"]),
            _ms(seed["p50_ms"]),
            _ms(seed["p99_ms"]),
            _num(http["per_second"]),
            _ms(http["p50_ms"]),
            _ms(http["p99_ms"]),
            f"**{chosen['ratio']:.2f}×** ({each})",
            _cpu_split(seed, "seed"),
            _cpu_split(http, "http"),
            f"{_stored(seed)} / {_stored(http)} ({row.get('http_expected_ok', 0):,})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


def checkout_trials_table(results: Results) -> list[str]:
    lines = [
        "| durability | workload | clients | trial | seed /s | p50 ms | CPU ms | ours /s "
        "| p50 ms | CPU ms | ours ÷ seed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        for n, trial in enumerate(row.get("checkout_trials", []), start=1):
            seed, http = trial["seed"], trial["http"]
            ratio = _ratio(http, seed)
            cells = [row["mode"], row["workload"], str(row["clients"]), str(n)]
            cells += [_num(seed["per_second"]), _ms(seed["p50_ms"])]
            cells += [f"{server_cpu_ms(seed, 'seed'):.2f}", _num(http["per_second"])]
            cells += [_ms(http["p50_ms"]), f"{server_cpu_ms(http, 'http'):.2f}"]
            cells.append(f"{ratio:.2f}×" if ratio is not None else "–")
            lines.append("| " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


def _find(results: Results, mode: str, kind: str, clients: int) -> dict[str, Any] | None:
    return next(
        (
            r
            for r in results["rows"]
            if r["mode"] == mode and r["workload"] == kind and r["clients"] == clients
        ),
        None,
    )


def targets_19(results: Results) -> list[dict[str, Any]]:
    """Issue #19's targets, one row each (per workload): the median of the trials' own
    ratios, every trial listed; a target whose row was not measured is not met."""
    modes = [r["mode"] for r in results["rows"]]
    mode = "matched" if "matched" in modes else (modes[0] if modes else "matched")
    out: list[dict[str, Any]] = []

    def judged(
        target: str, row: dict[str, Any] | None, measure: Any, limit: float, at_least: bool
    ) -> None:
        trials = (row or {}).get("checkout_trials") or []
        if not trials:
            out.append({"target": target, "reached": "not measured", "met": False})
            return
        each = [float(measure(t["seed"], t["http"])) for t in trials]
        value = _median(each)
        shown = ", ".join(f"{v:.2f}" for v in each)
        out.append(
            {
                "target": target,
                "reached": f"{value:.2f}× (median of {len(each)} trials: {shown})",
                "met": value >= limit if at_least else value <= limit,
            }
        )

    def throughput(seed: dict[str, Any], http: dict[str, Any]) -> float:
        return float(http["per_second"]) / float(seed["per_second"])

    def p50(seed: dict[str, Any], http: dict[str, Any]) -> float:
        return float(http["p50_ms"]) / float(seed["p50_ms"])

    def cpu(seed: dict[str, Any], http: dict[str, Any]) -> float:
        return server_cpu_ms(http, "http") / server_cpu_ms(seed, "seed")

    names = {"hot": "hot code", "distinct": "distinct codes"}
    for kind in ("hot", "distinct"):
        judged(
            f"HTTP checkout ≥ 2× the seed design's throughput, 64 clients, {names[kind]}",
            _find(results, mode, kind, 64),
            throughput,
            2.0,
            True,
        )
    for kind in ("hot", "distinct"):
        judged(
            f"HTTP checkout ≥ 1× the seed design's throughput, 16 clients, {names[kind]}",
            _find(results, mode, kind, 16),
            throughput,
            1.0,
            True,
        )
    for kind in ("hot", "distinct"):
        judged(
            f"p50 latency ≤ 2× the seed design's, 1 client, {names[kind]} (ours ÷ seed)",
            _find(results, mode, kind, 1),
            p50,
            2.0,
            False,
        )
    for clients in (16, 64):
        for kind in ("hot", "distinct"):
            judged(
                f"CPU per checkout, all server processes, ≤ the seed design's, {clients} "
                f"clients, {names[kind]} (ours ÷ seed)",
                _find(results, mode, kind, clients),
                cpu,
                1.0,
                False,
            )
    for kind, limit in (("hot", 5.0), ("distinct", 2.0)):
        row = _find(results, mode, kind, 64)
        target = f"command bus ≥ {limit:.0f}× the in-process row lock, 64 clients, {names[kind]}"
        ratio = _ratio((row or {}).get("bus"), (row or {}).get("baseline"))
        if row is None or ratio is None:
            out.append({"target": target, "reached": "not measured", "met": False})
            continue
        ratio, reached = _reached(ratio, row, "bus")
        out.append({"target": target, "reached": reached, "met": ratio >= limit})
    return out


def to_markdown(results: Results) -> str:
    machine = results["machine"]
    sizes = results["sizes"]
    lines = [
        "# Benchmark results: row-lock baseline vs voucher-ledger",
        "",
        f"Produced by `{results['command']}` on {results['date']} ({results['duration_s']:.0f} s).",
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += ["", "## What was measured", ""]
    lines += [f"- **{name}**: {text}" for name, text in results["modes"].items()]
    lines += [
        f"- **hot**: one code, {sizes['hot_attempts']:,} attempts by as many customers against "
        f"a cap of {sizes['hot_cap']:,}; **distinct**: {sizes['distinct_codes']:,} codes, one "
        "attempt each (all succeed).",
        f"- \\* rows with one client run {sizes['single_client_attempts']:,} attempts (the hot "
        "code's cap is half of them) to keep the run short. † A checkout over HTTP is a saga "
        "of several commands and much slower: HTTP rows run at most "
        f"{sizes['http_max_attempts']:,} attempts ({sizes['http_single_client_attempts']:,} "
        "with one client), the hot code's cap scaled alike (half of the attempts succeed); "
        "throughput and latency are steady-state figures, so the ratio stays meaningful.",
        "- **/s** is attempts decided per second (a redemption or a refusal at the cap); "
        "latency is per attempt, as its client saw it (p50 / p99, ms). The ratios are service "
        "÷ baseline throughput from the same row of the same run.",
        "- **baseline**: seed-billing-spec.md §4.5 over asyncpg (a pool of one connection per "
        "client): `BEGIN; SELECT … FOR UPDATE; checks; SELECT count(*); INSERT redemption; "
        "UPDATE times_redeemed; INSERT credit; COMMIT`.",
        "- **bus**: `CommandBus.send(RedeemVoucher)` from this process to a running `voucher-ledger"
        " serve` (the processors in its processor process, the projector in serve), reply "
        "awaited.",
        "- **HTTP**: `POST /billing/checkout` (free plan, the promo code) with a customer's "
        "bearer token, against the same kind of serve process.",
        "- **seed over HTTP**: the same requests through the same client against "
        "`bench/seed/main.go`, the seed's design re-created in Go from seed-billing-spec.md "
        "(net/http, the HS256 JWT check, get-or-create customer, §4.5 redemption transaction, "
        "§5.2 credit-only checkout transaction, the spec's schema) on the same PostgreSQL; its "
        "vouchers issued with its `POST /billing/vouchers/issue`, as the service's with its own.",
        "",
    ]
    if not results.get("complete", True):
        lines += [f"**Partial results**: {results['notes'][0]}", ""]
    lines += ["## Throughput and latency", ""]
    lines += main_table(results)
    for note in results.get("notes", []):
        lines += ["", f"Note: {note}"]
    repeated = trials_table(results)
    if repeated:
        lines += [
            "",
            "## Trials of the target rows",
            "",
            "The hot code at the most clients is measured several times (`--trials`), each trial "
            "its baseline, bus and HTTP storms one after another on fresh codes. The table above "
            "shows the trial with the median ratio of the bus to the baseline (the machine "
            "drifts between trials, and both sides with it: a trial's ratio pairs storms taken "
            "seconds apart); the targets are judged on the median of the trials' ratios. Here "
            "is every trial.",
            "",
        ]
        lines += repeated
    checkout = checkout_table(results)
    if checkout:
        lines += [
            "",
            "## HTTP checkout: voucher-ledger against the seed's design over HTTP",
            "",
            "Alternated trials per row (`--checkout-trials`: the seed first in odd trials, "
            "second in even ones), each side's storm on fresh codes and started after a "
            "PostgreSQL `CHECKPOINT` (the dirty pages of the storm before and of its own "
            "setup written out, so neither side's CPU carries the other's); the row shows the "
            "trial "
            "whose ratio is the median, with every trial's ratio. CPU per checkout: the "
            "server processes of each side (the client, the same on both, is left out: it is "
            "in the CPU table below). Load: the 1-minute load average when the row started.",
            "",
        ]
        lines += checkout
        lines += ["", "Every trial:", "", *checkout_trials_table(results)]
    lines += ["", "## Targets (issue #19)", "", "| target | reached | met |", "|---|---|---|"]
    for target in results.get("targets_19", []):
        met = "yes" if target["met"] else "**no**"
        lines.append(f"| {target['target']} | {target['reached']} | {met} |")
    lines += ["", "## Targets (issue #6)", "", "| target | reached | met |", "|---|---|---|"]
    for target in results.get("targets", []):
        met = "yes" if target["met"] else "**no**"
        lines.append(f"| {target['target']} | {target['reached']} | {met} |")
    lines += ["", "## Rebuild", ""]
    rebuild = results.get("rebuild")
    if rebuild and "events_per_second" in rebuild:
        lines.append(
            f"Stream of the `{rebuild['mode']}` service (every storm of this run): "
            f"{rebuild['events']:,} events in {rebuild['seconds']:.2f} s, "
            f"**{rebuild['events_per_second']:,.0f} events/s**. Method: {rebuild['method']}."
        )
        for name, part in rebuild.get("projections", {}).items():
            lines.append(
                f"- `{name}`: {part['events']:,} events, {part['events_per_second']:,.0f} events/s"
            )
        if "wall_seconds" in rebuild:
            lines.append(f"- the whole command, start-up included: {rebuild['wall_seconds']:.1f} s")
        runs = rebuild.get("runs") or []
        if len(runs) > 1:
            shown = ", ".join(f"{float(r):,.0f}" for r in runs)
            lines.append(
                f"- {len(runs)} whole rebuilds of the same stream, in order: {shown} events/s; "
                "the figure above is the median run"
            )
        catchup = rebuild.get("catchup")
        if catchup:
            lines.append(
                f"- for comparison, {catchup['method']}: {catchup['events']:,} events in "
                f"{catchup['seconds']:.2f} s, {catchup['events_per_second']:,.0f} events/s"
            )
    else:
        lines.append(f"not measured: {rebuild.get('note') if rebuild else 'not run'}")
    lines += [
        "",
        "## The service under load",
        "",
        "Projection lag: the event stream's head against the lowest projection checkpoint, "
        "sampled every 50 ms during the storm, in events and as the age of the oldest event not "
        "yet in the read models. Drain: time for the projections to reach the head after the "
        "storm's last reply. RSS: the peak resident memory of the serve process and its "
        "processor process together, sampled during the storm.",
        "",
    ]
    lines += service_table(results)
    memory = results.get("service_memory", {})
    if memory:
        lines += [""]
        for mode, mem in memory.items():
            lines.append(
                f"- `{mode}` serve + processor process: peak RSS (VmHWM) over the whole run "
                f"**{mem['hwm_mb']:,.1f} MiB**, {mem['rss_mb']:,.1f} MiB at the end."
            )
    lines += [
        "",
        "## CPU per attempt (ms), by process",
        "",
        "CPU time (user + system) each process used during the storm, divided by its attempts. "
        "*client* is this benchmark process (the asyncpg, bus or HTTP clients).",
        "",
    ]
    lines += cpu_table(results)
    lines += [""]
    return "\n".join(lines)


def draw_chart(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in results["rows"]))
    fig, axes = plt.subplots(2, len(modes), figsize=(6.5 * len(modes), 8), squeeze=False)
    colors = {"baseline": "#888888", "bus": "#1f77b4", "http": "#ff7f0e", "seed": "#2ca02c"}
    labels = {
        "baseline": "row-lock baseline",
        "bus": "command bus",
        "http": "HTTP checkout",
        "seed": "seed design over HTTP",
    }
    width = 0.2
    for col, mode in enumerate(modes):
        rows = [r for r in results["rows"] if r["mode"] == mode]
        names = [f"{r['workload']}\n{r['clients']} cl." for r in rows]
        for metric, row_index, ylabel in (
            ("per_second", 0, "attempts / s"),
            ("p99_ms", 1, "p99 latency, ms (log)"),
        ):
            ax = axes[row_index][col]
            for i, path_name in enumerate(PATHS):
                values = [
                    float(((r.get("checkout") or r).get(path_name) or {}).get(metric, 0.0))
                    if path_name == "seed"
                    else float((r.get(path_name) or {}).get(metric, 0.0))
                    for r in rows
                ]
                xs = [x + (i - 1.5) * width for x in range(len(rows))]
                ax.bar(xs, values, width, label=labels[path_name], color=colors[path_name])
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels(names, fontsize=8)
            ax.set_ylabel(ylabel)
            if metric == "p99_ms":
                ax.set_yscale("log")
            ax.set_title(f"{mode}: {'throughput' if row_index == 0 else 'p99 latency'}")
            ax.grid(axis="y", alpha=0.3)
        axes[0][col].legend(fontsize=8)
    fig.suptitle("voucher redemption: row-lock baseline vs voucher-ledger (same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: Results, out_dir: Path, *, chart: bool = True) -> str:
    """results.json and results.md (and the chart unless ``chart`` is false: a partial write
    after each row skips it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results["targets"] = targets(results)
    results["targets_19"] = targets_19(results)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    markdown = to_markdown(results)
    (out_dir / "results.md").write_text(markdown)
    if chart:
        draw_chart(results, out_dir / "chart.png")
    return markdown
