"""A failing projector (an outage, a poison event) backs off and logs sparingly."""

from __future__ import annotations

import logging

import pytest

from voucher_ledger.projections.projector import RETRY_MAX, RETRY_MIN, ProjectionStatus


def test_failures_back_off_log_once_and_recovery_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    status = ProjectionStatus(pool=None, names=["vouchers"])  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger="voucher_ledger.projections.projector")

    pauses = [status.failed("vouchers", ConnectionRefusedError()) for _ in range(6)]

    assert pauses == [RETRY_MIN, 2 * RETRY_MIN, 4 * RETRY_MIN, 8 * RETRY_MIN, RETRY_MAX, RETRY_MAX]
    assert status.failing == {"vouchers": "ConnectionRefusedError"}
    stopped = [r for r in caplog.records if "stopped" in r.getMessage()]
    assert len(stopped) == 1, [r.getMessage() for r in caplog.records]
    assert len(caplog.records) == 1  # six failures within a minute: one line

    status.succeeded("vouchers")
    assert status.failing == {}
    assert "projection vouchers resumed after" in caplog.records[-1].getMessage()
    assert status.failed("vouchers", ConnectionRefusedError()) == RETRY_MIN  # a new outage
