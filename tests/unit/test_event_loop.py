"""EVENT_LOOP: which event loop the commands run on (README "Event loop")."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

from voucher_ledger.cli.common import UserError, loop_factory, loop_name, run_loop
from voucher_ledger.config.settings import Settings

uvloop = pytest.importorskip("uvloop")


def _settings(choice: str) -> Settings:
    return Settings.model_validate({"EVENT_LOOP": choice})


async def _which() -> str:
    return loop_name()


@pytest.mark.parametrize(("choice", "expected"), [("auto", "uvloop"), ("uvloop", "uvloop")])
def test_uvloop_runs_the_commands_where_it_is_installed(choice: str, expected: str) -> None:
    assert loop_factory(choice) == ("uvloop", uvloop.new_event_loop)
    assert run_loop(_which(), _settings(choice)) == expected


def test_asyncio_is_asyncios_own_loop() -> None:
    assert loop_factory("asyncio") == ("asyncio", None)
    assert run_loop(_which(), _settings("asyncio")) == "asyncio"


def test_the_default_is_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVENT_LOOP", raising=False)  # CI's second run sets it
    assert Settings.model_validate({}).event_loop == "auto"


def test_an_unknown_loop_is_refused_by_the_settings() -> None:
    with pytest.raises(ValueError, match="'auto', 'uvloop' or 'asyncio'"):
        _settings("trio")


def _without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if uvloop were not installed: importing it raises ImportError."""
    monkeypatch.setitem(sys.modules, "uvloop", None)


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_uvloop(monkeypatch)
    assert loop_factory("auto") == ("asyncio", None)
    assert run_loop(_which(), _settings("auto")) == "asyncio"


def test_uvloop_asked_for_but_missing_is_a_clear_error_and_runs_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without_uvloop(monkeypatch)
    ran: list[str] = []

    async def job() -> None:
        ran.append("ran")

    with pytest.raises(UserError, match="EVENT_LOOP=uvloop, but uvloop cannot be imported"):
        run_loop(job(), _settings("uvloop"))
    assert ran == []


def test_the_result_and_the_errors_of_the_coroutine_come_back() -> None:
    async def fails() -> None:
        await asyncio.sleep(0)
        raise LookupError("from the job")

    async def answers() -> int:
        await asyncio.sleep(0)
        return 42

    assert run_loop(answers(), _settings("auto")) == 42
    with pytest.raises(LookupError, match="from the job"):
        run_loop(fails(), _settings("auto"))


def test_the_cli_refuses_an_unknown_loop_before_starting_anything(tmp_path: Any) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "voucher_ledger.cli", "streams", "diff"],
        env={"EVENT_LOOP": "bogus", "DATA_DIR": str(tmp_path), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "EVENT_LOOP" in done.stderr or "'auto', 'uvloop' or 'asyncio'" in done.stderr
    assert not any(tmp_path.iterdir())  # no data dir content, no servers started
