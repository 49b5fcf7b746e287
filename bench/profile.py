"""py-spy on the service process during a storm, and a summary of where its CPU went.

py-spy samples the process (``record --format raw``: one collapsed stack per line with its
count); idle samples (the event loop waiting in ``select``) are counted apart, and the rest is
summarised by function (self and inclusive) and by package.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.tools import py_spy_binary

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::\d+)?\)$")
# Leaves that are waiting, not working: the event loop in select, and idle executor threads.
IDLE_LEAVES = (
    "select (selectors.py)",
    "EpollSelector.select (selectors.py)",
    "_worker (concurrent/futures/thread.py)",
)
EVENT_LOOP_STEP = "Handle._run (asyncio/events.py)"


class PySpy:
    """``py-spy record`` attached to ``pid`` until :meth:`stop`."""

    def __init__(self, pid: int, output: Path, rate: int = 200) -> None:
        binary = py_spy_binary()
        if binary is None:
            raise RuntimeError('py-spy is not installed: pip install -e ".[dev]"')
        self.output = output
        args = ["record", "--pid", str(pid), "--format", "raw", "--rate", str(rate)]
        self.proc = subprocess.Popen(
            [binary, *args, "--output", str(output)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode(errors="replace")


@contextlib.asynccontextmanager
async def profiling(targets: dict[str, int], out: dict[str, Path]) -> AsyncIterator[None]:
    """py-spy on each named pid for the duration of the block, into ``out[name]``."""
    spies = {name: PySpy(pid, out[name]) for name, pid in targets.items()}
    await asyncio.sleep(1.0)  # let py-spy attach before the storm starts
    try:
        yield
    finally:
        for name, spy in spies.items():
            err = await asyncio.to_thread(spy.stop)
            if not out[name].exists():
                raise RuntimeError(f"py-spy wrote no profile for {name}: {err.strip()[-300:]}")


def _short(frame: str) -> str:
    """``func (path/file.py:12)`` -> ``func (path/file.py)``, site-packages prefixes dropped."""
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "lib/python3.11/", "lib/python3.12/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def _package(frame: str) -> str:
    match = re.search(r"\(([^()]*)\)$", frame)
    path = match.group(1) if match else frame
    parts = path.split("/")
    if parts[0] == "voucher_ledger" and len(parts) > 2:
        return "/".join(parts[:2])
    if path.endswith(".py") and len(parts) == 1:
        return "stdlib " + path
    return parts[0]


def _entry(frames: list[str]) -> str:
    """The coroutine (or callback) the event loop was running: the frame right after the last
    ``Handle._run``; the loop's own bookkeeping when there is none."""
    for i in range(len(frames) - 1, -1, -1):
        if frames[i] == EVENT_LOOP_STEP:
            return frames[i + 1] if i + 1 < len(frames) else "event loop: callbacks"
    return "event loop: scheduling, I/O polling"


@dataclass
class Profile:
    total: int = 0
    idle: int = 0
    self_time: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    by_package: Counter[str] = field(default_factory=Counter)
    by_entry: Counter[str] = field(default_factory=Counter)

    @property
    def busy(self) -> int:
        return self.total - self.idle

    def pct(self, count: int) -> float:
        return 100.0 * count / self.busy if self.busy else 0.0


def summarise(raw: Path) -> Profile:
    profile = Profile()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f]
        profile.total += count
        if not frames or frames[-1] in IDLE_LEAVES:
            profile.idle += count
            continue
        profile.self_time[frames[-1]] += count
        profile.by_package[_package(frames[-1])] += count
        profile.by_entry[_entry(frames)] += count
        for frame in set(frames):
            profile.inclusive[frame] += count
    return profile


def to_markdown(profile: Profile, title: str, top: int = 25) -> str:
    lines = [
        f"### {title}",
        "",
        f"{profile.total:,} samples, {profile.idle:,} idle (event loop in `select`); "
        f"percentages are of the {profile.busy:,} busy samples.",
        "",
        "Self time by package:",
        "",
        "| package | self % |",
        "|---|---:|",
    ]
    for name, count in profile.by_package.most_common(15):
        lines.append(f"| `{name}` | {profile.pct(count):.1f} |")
    lines += [
        "",
        "Inclusive time by what the event loop was running (the task's coroutine):",
        "",
        "| entry point | % |",
        "|---|---:|",
    ]
    for name, count in profile.by_entry.most_common(12):
        lines.append(f"| `{name}` | {profile.pct(count):.1f} |")
    lines += ["", "Top functions by self time:", "", "| function | self % |", "|---|---:|"]
    for name, count in profile.self_time.most_common(top):
        lines.append(f"| `{name}` | {profile.pct(count):.1f} |")
    lines += [
        "",
        "Top functions by inclusive time (event-loop frames left out):",
        "",
        "| function | inclusive % |",
        "|---|---:|",
    ]
    loop_frames = ("asyncio/", "runners.py", "<module>", "run (", "main (voucher_ledger/cli")
    shown = 0
    for name, count in profile.inclusive.most_common():
        if any(marker in name for marker in loop_frames):
            continue
        lines.append(f"| `{name}` | {profile.pct(count):.1f} |")
        shown += 1
        if shown >= top:
            break
    return "\n".join(lines) + "\n"
