"""Subjects, stream names and partitions, derived from the subject prefix.

Subject tokens are never raw user input: codes are validated to ``[A-Z0-9_-]`` before they get
here, and the prefix is validated at settings load.
"""

from __future__ import annotations

import base64
import re
import zlib
from dataclasses import dataclass

from voucher_ledger.ledger.campaign_codes import CAMPAIGN_ID_PATTERN
from voucher_ledger.ledger.codes import CODE_PATTERN

PREFIX_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True, slots=True)
class Layout:
    prefix: str
    partitions: int

    def __post_init__(self) -> None:
        if not PREFIX_PATTERN.fullmatch(self.prefix):
            raise ValueError(f"invalid subject prefix {self.prefix!r}: lower-case [a-z0-9_]")
        if not 1 <= self.partitions <= 1024:
            raise ValueError("partitions must be between 1 and 1024")

    @property
    def upper(self) -> str:
        return self.prefix.upper()

    @property
    def event_stream(self) -> str:
        return f"{self.upper}_EVENTS"

    @property
    def command_stream(self) -> str:
        return f"{self.upper}_COMMANDS"

    @property
    def trail_stream(self) -> str:
        """At a hub: the Sovereigns' events, sourced (issue #22)."""
        return f"{self.upper}_SOVEREIGNS"

    @property
    def inbox_stream(self) -> str:
        """On a Sovereign: the hub's global voucher events, sourced (issue #22)."""
        return f"{self.upper}_HUB_GLOBALS"

    @property
    def lease_bucket(self) -> str:
        return f"{self.upper}_LEASES"

    def processor_durable(self, partition: int) -> str:
        return f"{self.upper}_PROC_{partition}"

    def partition_of(self, code: str) -> int:
        """Stable across processes and releases (crc32, never Python's salted ``hash``)."""
        return zlib.crc32(code.encode()) % self.partitions

    def voucher_subject(self, code: str) -> str:
        _check_code(code)
        return f"{self.prefix}.events.voucher.{code}"

    def voucher_command_subject(self, code: str) -> str:
        _check_code(code)
        return f"{self.prefix}.commands.{self.partition_of(code)}.voucher.{code}"

    def wallet_subject(self, customer_id: str) -> str:
        return f"{self.prefix}.events.wallet.{account_token(customer_id)}"

    def wallet_command_subject(self, customer_id: str) -> str:
        token = account_token(customer_id)
        return f"{self.prefix}.commands.{self.partition_of(token)}.wallet.{token}"

    def campaign_subject(self, campaign_id: str) -> str:
        _check_campaign(campaign_id)
        return f"{self.prefix}.events.campaign.{campaign_id}"

    def campaign_command_subject(self, campaign_id: str) -> str:
        """Every command for a campaign and its codes: one partition decides them all."""
        _check_campaign(campaign_id)
        return f"{self.prefix}.commands.{self.partition_of(campaign_id)}.campaign.{campaign_id}"

    def global_subject(self, code: str) -> str:
        """A global voucher at the hub (issue #22); Sovereigns source ``global_wildcard``."""
        _check_code(code)
        return f"{self.prefix}.events.global.{code}"

    def global_command_subject(self, code: str) -> str:
        _check_code(code)
        return f"{self.prefix}.commands.{self.partition_of(code)}.global.{code}"

    @property
    def global_wildcard(self) -> str:
        return f"{self.prefix}.events.global.>"

    def event_subject(self, aggregate: str, key: str) -> str:
        if aggregate == "wallet":
            return self.wallet_subject(key)
        if aggregate == "campaign":
            return self.campaign_subject(key)
        if aggregate == "global":
            return self.global_subject(key)
        return self.voucher_subject(key)

    def command_subject(self, aggregate: str, key: str) -> str:
        if aggregate == "wallet":
            return self.wallet_command_subject(key)
        if aggregate == "campaign":
            return self.campaign_command_subject(key)
        if aggregate == "global":
            return self.global_command_subject(key)
        return self.voucher_command_subject(key)

    def partition_for(self, aggregate: str, key: str) -> int:
        """The partition that decides ``aggregate`` ``key``'s commands."""
        return self.partition_of(account_token(key) if aggregate == "wallet" else key)

    def partition_filter(self, partition: int) -> str:
        return f"{self.prefix}.commands.{partition}.>"

    @property
    def events_wildcard(self) -> str:
        return f"{self.prefix}.events.>"

    @property
    def commands_wildcard(self) -> str:
        return f"{self.prefix}.commands.>"


def _check_code(code: str) -> None:
    # Defence in depth: commands are validated at construction; this catches any other path.
    if not CODE_PATTERN.fullmatch(code):
        raise ValueError("refusing to build a subject from an invalid code")


def _check_campaign(campaign_id: str) -> None:
    if not CAMPAIGN_ID_PATTERN.fullmatch(campaign_id):
        raise ValueError("refusing to build a subject from an invalid campaign id")


def account_token(customer_id: str) -> str:
    """A customer id (any JWT ``sub``) as a subject token: unpadded base64url, so ``.``, ``*``,
    ``>`` and whitespace can never reach a subject, and distinct ids never collide."""
    if not customer_id:
        raise ValueError("refusing to build a subject from an empty customer id")
    return base64.urlsafe_b64encode(customer_id.encode()).decode().rstrip("=")


def customer_of_token(token: str) -> str:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
