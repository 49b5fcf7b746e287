"""NATS_URL as a server list, and URLs fit for a log line."""

from __future__ import annotations

import pytest

from voucher_ledger.config.settings import nats_servers, redact_url


def test_one_url_is_a_list_of_one() -> None:
    assert nats_servers("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]


def test_a_comma_separated_cluster_list_becomes_nats_py_servers() -> None:
    url = " nats://a:4222 , nats://b:4223,,nats://c:4224 "
    assert nats_servers(url) == ["nats://a:4222", "nats://b:4223", "nats://c:4224"]


@pytest.mark.parametrize("url", ["", " , ", ","])
def test_a_list_without_a_server_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="no server"):
        nats_servers(url)


def test_every_password_of_a_server_list_is_redacted() -> None:
    url = "nats://u:s3cret@a:4222,nats://b:4223,nats://v:other@c:4224"
    redacted = redact_url(url)
    assert "s3cret" not in redacted
    assert "other" not in redacted
    assert redacted == "nats://u:***@a:4222,nats://b:4223,nats://v:***@c:4224"


@pytest.mark.parametrize(
    "prefix",
    ["ledger", "a", "a" * 32, "a" * 33, "ledger_2", "2ledger", "Ledger", "led.ger", "", "le>", "é"],
)
def test_settings_and_the_subject_layout_accept_the_same_prefixes(prefix: str) -> None:
    """settings.py keeps its own copy of the prefix rule (it imports nothing of the package):
    it must accept exactly what the subject layout accepts."""
    from voucher_ledger.config.settings import PREFIX_PATTERN as SETTINGS_RULE
    from voucher_ledger.jetstream.layout import Layout

    try:
        Layout(prefix=prefix, partitions=1)
        layout_ok = True
    except ValueError:
        layout_ok = False
    assert bool(SETTINGS_RULE.fullmatch(prefix)) is layout_ok
