"""A bench a newcomer can run (issue #19): a missing tool ends the run at once in one line naming
what to install, before any server starts; and a run that dies late keeps the rows it measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")


def _bench(
    repo_root: Path, args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=repo_root,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_without_go_the_seed_baseline_fails_at_once_naming_the_packages(
    tmp_path: Path, repo_root: Path
) -> None:
    out, work = tmp_path / "results", tmp_path / "work"
    args = ["--quick", "--out", str(out), "--work-dir", str(work)]
    proc = _bench(repo_root, args, {"GO": ""})

    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("python -m bench: missing Go for the seed baseline")
    for package in (
        "golang-go",
        "golang-github-lib-pq-dev",
        "golang-github-golang-jwt-jwt-dev",
        "golang-gopkg-yaml.v3-dev",
    ):
        assert package in lines[0]
    # Nothing ran: no work dir, no results.
    assert not work.exists()
    assert not out.exists()


def test_without_py_spy_a_profile_run_fails_at_once_naming_it(
    tmp_path: Path, repo_root: Path
) -> None:
    out, work = tmp_path / "results", tmp_path / "work"
    args = ["--quick", "--paths", "baseline", "--profile", "--out", str(out)]
    proc = _bench(repo_root, [*args, "--work-dir", str(work)], {"PY_SPY": ""})

    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "py-spy for --profile" in lines[0]
    assert not work.exists()
    assert not out.exists()


def test_a_run_whose_last_row_fails_keeps_the_rows_measured_before(
    tmp_path: Path, repo_root: Path
) -> None:
    """The second (last) row's baseline storm raises: the first row is in results.json and
    results.md, marked as a run that stopped early, and the error still ends the run."""
    out = tmp_path / "results"
    argv = [
        "--quick",
        "--modes",
        "matched",
        "--workloads",
        "hot",
        "--clients",
        "1,16",
        "--paths",
        "baseline",
        "--trials",
        "1",
        "--no-rebuild",
        "--out",
        str(out),
        "--work-dir",
        str(tmp_path / "work"),
    ]
    script = textwrap.dedent(
        f"""
        import sys
        from bench import baseline, cli

        real = baseline.run
        calls = []

        async def failing_second_row(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("the last row failed")
            return await real(*args, **kwargs)

        baseline.run = failing_second_row
        sys.exit(cli.main({argv!r}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )

    assert proc.returncode != 0
    assert "RuntimeError: the last row failed" in proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is False
    assert [(r["workload"], r["clients"]) for r in results["rows"]] == [("hot", 1)]
    row = results["rows"][0]
    assert row["baseline"]["ok"] == row["expected_ok"] > 0
    assert "the run stopped early (RuntimeError: the last row failed)" in results["notes"][0]
    markdown = (out / "results.md").read_text()
    assert "**Partial results**: the run stopped early" in markdown
    assert "| matched | hot | 1 |" in markdown
