"""What an operator reads from the CLI: the version, help that says what each action does, lag
in words, audit lines in columns, a progress bar in events."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from voucher_ledger import __version__
from voucher_ledger.cli.audit import format_line
from voucher_ledger.cli.main import build_parser
from voucher_ledger.cli.replay import _Bar, lag_words
from voucher_ledger.ledger.events import (
    Actor,
    EventEnvelope,
    VoucherIssued,
    VoucherRedeemed,
)


def test_version_prints_the_package_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "voucher_ledger.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == f"voucher-ledger {__version__}"


def _help(*args: str) -> str:
    parser = build_parser()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit):
        parser.parse_args([*args, "--help"])
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("action", "says"),
    [("apply", "create every stream"), ("diff", "print every difference")],
)
def test_streams_actions_describe_what_they_do(action: str, says: str) -> None:
    assert says in " ".join(_help("streams", action).lower().split())


@pytest.mark.parametrize(
    "command",
    [(), ("serve",), ("processors",), ("token",), ("streams",), ("audit", "tail"), ("show",),
     ("schema",), ("rebuild",), ("verify",)],
)  # fmt: skip
def test_no_help_text_shows_literal_double_backticks(command: tuple[str, ...]) -> None:
    assert "``" not in _help(*command)


def test_lag_in_words() -> None:
    assert lag_words(10, {"audit": 10, "vouchers": 10}) == (
        "every read model has applied the whole stream"
    )
    assert lag_words(10, {"audit": 9, "vouchers": 7, "wallets": 10}) == (
        "audit 1 event behind; vouchers 3 events behind; wallets up to date"
    )


def _record(seq: int, event: object, aggregate_id: str, at: datetime) -> SimpleNamespace:
    envelope = EventEnvelope(
        event_id=f"e{seq}",
        aggregate="voucher",
        aggregate_id=aggregate_id,
        occurred_at=at,
        actor=Actor(sub="admin", role="superadmin"),
        command_id=f"c{seq}",
        event=event,  # type: ignore[arg-type]
    )
    return SimpleNamespace(seq=seq, envelope=envelope)


def test_audit_tail_lines_keep_their_columns() -> None:
    lines = [
        format_line(
            _record(
                7,
                VoucherIssued(
                    code="AB1",
                    credit_baisa=5000,
                    description="",
                    active=True,
                    max_redemptions=0,
                    change="created",
                ),
                "AB1",
                datetime(2026, 1, 1, tzinfo=UTC),
            )
        ),
        format_line(
            _record(
                12345,
                VoucherRedeemed(
                    code="LAUNCH-2026", customer_id="bob", redemption_id="r1", credit_baisa=5000
                ),
                "LAUNCH-2026",
                datetime(2026, 1, 1, 0, 0, 0, 5000, tzinfo=UTC),
            )
        ),
    ]
    first, second = lines
    # every column starts at the same offset in both lines
    for token_a, token_b in (("2026-01-01T", "2026-01-01T"), ("voucher.", "voucher."),
                             ("voucher:AB1", "voucher:LAUNCH-2026")):  # fmt: skip
        assert first.index(token_a, 10 if token_a == "voucher." else 0) == second.index(
            token_b, 10 if token_b == "voucher." else 0
        ), lines
    assert first.index("credit_baisa=") == second.index("customer_id=")


def test_the_rebuild_bar_counts_events_as_whole_numbers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bar = _Bar("vouchers", enabled=True)
    bar.start(total=38, done=0)
    bar.advance(38, 38)
    bar.close()
    text = capsys.readouterr().err
    assert "38/38" in text, text
    assert "38.0" not in text
    assert "kev" not in text
