"""The README's production NATS configuration is the one the code enforces: for each role, its
allow and deny lists hold exactly the subjects ``role_permissions`` gives the embedded server
(a permission added in the code and not in the README, or the reverse, fails here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from voucher_ledger.jetstream.auth import ROLES, role_permissions
from voucher_ledger.jetstream.streams import load_spec

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block() -> str:
    text = README.read_text()
    start = text.index("authorization {\n  users = [")
    return text[start : text.index("```", start)]


def user_section(block: str, role: str) -> str:
    start = block.index(f"{{user: {role},")
    following = block.find("{user:", start + 1)
    return block[start : following if following >= 0 else len(block)]


def listed(part: str, key: str) -> set[str]:
    """The quoted subjects of ``key: [...]`` in ``part`` (empty when it has none)."""
    match = re.search(rf"{key}: \[([^\]]*)\]", part)
    return set(re.findall(r'"([^"]+)"', match.group(1))) if match else set()


@pytest.mark.parametrize("role", ROLES)
def test_the_readme_gives_each_role_exactly_its_permissions(role: str) -> None:
    expected = role_permissions(load_spec("ledger"))[role]
    section = user_section(readme_block(), role)
    publish = section[section.index("publish:") : section.index("subscribe:")]
    subscribe = section[section.index("subscribe:") :]
    assert listed(publish, "allow") == set(expected.publish_allow)
    assert listed(publish, "deny") == set(expected.publish_deny)
    assert listed(subscribe, "allow") == set(expected.subscribe_allow)
    assert listed(subscribe, "deny") == set(expected.subscribe_deny)
