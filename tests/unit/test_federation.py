"""Hub and Sovereign settings and the embedded nats-server's leafnode configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from voucher_ledger.config.settings import Settings
from voucher_ledger.service import federation

LEAF = "nats-leaf://leaf:pw@127.0.0.1:7422"


def test_a_sovereign_denies_its_own_subjects_and_buckets_on_the_leaf_link(tmp_path: Path) -> None:
    s = Settings(SOVEREIGN_NAME="north", HUB_LEAF_URL=LEAF, SUBJECT_PREFIX="shop")
    conf = federation.leaf_conf(s, tmp_path)
    assert '"url": "nats-leaf://leaf:pw@127.0.0.1:7422"' in conf
    for subject in ("shop.>", "$KV.>", "$O.>"):
        assert conf.count(f'"{subject}"') == 2  # deny_imports and deny_exports
    assert s.jetstream_domain == "north"


def test_the_hub_opens_a_leaf_port_with_a_password_kept_across_starts(tmp_path: Path) -> None:
    s = Settings(HUB="true", SOVEREIGNS="north,south", LEAF_LISTEN="127.0.0.1:9999")
    first = federation.leaf_conf(s, tmp_path)
    assert '"listen": "127.0.0.1:9999"' in first
    assert federation.leaf_conf(s, tmp_path) == first
    assert (tmp_path / federation.LEAF_PASSWORD_FILE).stat().st_mode & 0o777 == 0o600
    assert s.jetstream_domain == "hub"
    config = federation.trail_config("ledger", s.sovereign_names, "LEDGER_EVENTS")
    assert [src["external"]["api"] for src in config["sources"]] == [
        "$JS.north.API",
        "$JS.south.API",
    ]
    assert config["sources"][0]["subject_transforms"] == [
        {"src": "ledger.events.>", "dest": "ledger.sovereign.north.events.>"}
    ]


def test_neither_role_writes_no_leaf_block(tmp_path: Path) -> None:
    assert federation.server_conf(Settings(), tmp_path) == ""


@pytest.mark.parametrize(
    "env",
    [
        {"HUB": "true", "SOVEREIGN_NAME": "north"},
        {"HUB_LEAF_URL": LEAF},
        {"SOVEREIGN_NAME": "hub"},
        {"SOVEREIGN_NAME": "a.b"},
        {"SOVEREIGNS": "north"},
        {"HUB": "true", "SOVEREIGNS": "north,*"},
        {"SOVEREIGN_NAME": "north", "HUB_LEAF_URL": "http://x:1"},
        {"HUB": "true", "LEAF_LISTEN": "nowhere"},
        {"SOVEREIGN_NAME": "north", "SOVEREIGN_KEYS_DIR": "/keys"},
    ],
)
def test_inconsistent_federation_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        Settings(**env)  # type: ignore[arg-type]


def test_the_start_up_line_names_the_role_and_never_the_leaf_password() -> None:
    sovereign = Settings(SOVEREIGN_NAME="north", HUB_LEAF_URL=LEAF)  # type: ignore[call-arg]
    (line,) = federation.describe(sovereign)
    assert "Sovereign north" in line
    assert "pw" not in line.replace("leaf:***", "")
    hub = Settings(HUB="true", SOVEREIGNS="north")  # type: ignore[call-arg]
    assert "trail sources north" in federation.describe(hub)[0]
    assert federation.describe(Settings()) == []
