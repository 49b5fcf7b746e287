"""Who may do what on NATS: the ledger's four identities and their permissions.

* ``processors``: the only identity that may publish to ``<prefix>.events.>`` (the ledger
  itself); consumes the command stream, holds the partition leases, answers the commands, and
  records the signing cut-over in the event stream's configuration (its one stream update).
* ``service`` (``serve``'s HTTP side and projectors, and ``verify``/``rebuild``): publishes
  commands, reads the event stream (direct gets, its projector's and replays' consumers), the
  idempotency keys and its projector lease; never publishes an event.
* ``admin`` (streams apply at start, ``voucher-ledger streams``): the JetStream API, to create
  and update streams and consumers; no event, no command.
* ``subscriber`` (handed out to auditors): reads the event stream through consumers of its own
  (any name but the projectors'); publishes nothing to the ledger's subjects.

Nobody may delete or purge a stream or delete a message (the event stream denies it as well).

:func:`role_permissions` renders them for one streams declaration, in nats-server's
``permissions`` shape (``publish``/``subscribe``, each ``allow``/``deny``); the embedded
nats-server's configuration is written from them (``service/embedded.py``), and the README gives
the same for a production cluster. :class:`NatsUser` is one identity's user name and password
as the embedded default keeps them, one owner-only file per role under ``DATA_DIR/nats/auth``.
This module imports nothing of the package but the streams declaration.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voucher_ledger.jetstream.streams import StreamsSpec

ROLES = ("admin", "service", "processors", "subscriber")
AUTH_DIR = "auth"  # under DATA_DIR/nats
INBOX = "_INBOX.>"
# The command bus's reply inboxes (commands/bus.py): no subscriber listens in on them.
BUS_INBOX = "_INBOX.vlbus.>"

# Denied to every identity: the ledger is never deleted or purged, not even by its admin.
NEVER = (
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
)


@dataclass(frozen=True)
class Permissions:
    publish_allow: tuple[str, ...]
    publish_deny: tuple[str, ...]
    subscribe_allow: tuple[str, ...]
    subscribe_deny: tuple[str, ...] = ()

    def to_conf(self) -> dict[str, Any]:
        """nats-server's ``permissions`` block."""
        publish: dict[str, list[str]] = {"allow": list(self.publish_allow)}
        if self.publish_deny:
            publish["deny"] = list(self.publish_deny)
        subscribe: dict[str, list[str]] = {"allow": list(self.subscribe_allow)}
        if self.subscribe_deny:
            subscribe["deny"] = list(self.subscribe_deny)
        return {"publish": publish, "subscribe": subscribe}


def _info(*streams: str) -> list[str]:
    return [f"$JS.API.STREAM.INFO.{name}" for name in streams]


def _get(stream: str) -> list[str]:
    """Direct gets (any replica answers; ``.<subject>`` for the last message of a subject) and
    the leader's message get."""
    return [
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
    ]


def _consume(stream: str) -> list[str]:
    """Create, look at, read from, acknowledge and delete consumers of ``stream``."""
    api = "$JS.API.CONSUMER"
    return [
        f"{api}.CREATE.{stream}",  # an ephemeral one, named by the server
        f"{api}.CREATE.{stream}.*",
        f"{api}.CREATE.{stream}.*.>",  # the form with the filter subject appended
        f"{api}.DURABLE.CREATE.{stream}.*",
        f"{api}.INFO.{stream}.*",
        f"{api}.DELETE.{stream}.*",
        f"{api}.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",  # flow control answers of a push consumer (KV key listings)
    ]


def _not_consumer(stream: str, durable: str) -> list[str]:
    """Every API call on consumer ``durable`` of ``stream``, and its acknowledgements."""
    api = "$JS.API.CONSUMER"
    return [
        f"{api}.*.{stream}.{durable}",
        f"{api}.*.{stream}.{durable}.>",
        f"{api}.*.*.{stream}.{durable}",  # MSG.NEXT, DURABLE.CREATE
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def spec_stream_names(spec: StreamsSpec) -> list[str]:
    return [str(cfg["name"]) for cfg in spec.streams.values()]


def role_permissions(spec: StreamsSpec) -> dict[str, Permissions]:
    """The permissions of each role (:data:`ROLES`) for the streams ``spec`` declares."""
    layout = spec.layout
    prefix = layout.prefix
    events, commands = spec.event_stream, spec.command_stream
    leases, keys = spec.lease_bucket, spec.idempotency_bucket
    lease_stream, keys_stream = f"KV_{leases}", f"KV_{keys}"
    # Every stream streams.yaml declares (a bucket added there, like the guessing limits, is
    # read by every writer's streams.apply at start too).
    all_streams = tuple(
        dict.fromkeys((events, commands, lease_stream, keys_stream, *spec_stream_names(spec)))
    )
    control = f"{prefix}.control.processors.*"
    # What every writer reads at start: streams.apply compares the declaration with the server
    # (and changes nothing when they agree).
    declared = [
        "$JS.API.INFO",
        *_info(*all_streams),
        f"$JS.API.CONSUMER.INFO.{commands}.*",
        f"$JS.API.CONSUMER.INFO.{events}.*",
        f"$JS.API.CONSUMER.NAMES.{events}",
    ]
    processors = Permissions(
        publish_allow=(
            *declared,
            layout.events_wildcard,
            INBOX,  # command replies go to the sender's inbox
            *_get(events),
            f"$JS.API.CONSUMER.MSG.NEXT.{commands}.*",
            f"$JS.ACK.{commands}.>",
            *_get(lease_stream),
            *_consume(lease_stream),  # the key listing of the lease bucket (members)
            f"$KV.{leases}.partition.>",
            f"$KV.{leases}.member.>",
            # Once, at the first start with signing: the signing cut-over, recorded (signed
            # with the key only the processors hold) in the event stream's metadata.
            f"$JS.API.STREAM.UPDATE.{events}",
        ),
        publish_deny=NEVER,
        subscribe_allow=(INBOX, control),
    )
    # Issue #22: the hub's allocator reads its trail, a Sovereign's share inbox its copy of the
    # hub's global vouchers (ordered consumers of the service).
    federated = (layout.trail_stream, layout.inbox_stream)
    service = Permissions(
        publish_allow=(
            *declared,
            *_info(*federated),
            *(subject for stream in federated for subject in (*_get(stream), *_consume(stream))),
            layout.commands_wildcard,
            control,  # asks the processor child for its report
            *_get(events),
            *_consume(events),  # its projector's consumer, rebuild's and verify's replays
            *_get(lease_stream),
            f"$KV.{leases}.projector.>",
            *_get(keys_stream),
            f"$KV.{keys}.>",
        ),
        publish_deny=(*NEVER, layout.events_wildcard),
        subscribe_allow=(INBOX,),
    )
    admin = Permissions(
        # At a hub, `federation check` reads each Sovereign's event stream across its domain.
        publish_allow=("$JS.API.>", f"$JS.*.API.STREAM.INFO.{events}"),
        publish_deny=(*NEVER, layout.events_wildcard, layout.commands_wildcard),
        subscribe_allow=(INBOX,),
    )
    # A shared guessing-limits bucket, where streams.yaml declares one: the HTTP side's.
    limits = spec.streams.get("limits")
    if limits is not None:
        bucket = str(limits["name"])
        service = Permissions(
            publish_allow=(
                *service.publish_allow,
                *_info(bucket),
                *_get(bucket),
                *_consume(bucket),  # the local copy the checkout's check reads
                f"$KV.{bucket.removeprefix('KV_')}.>",
            ),
            publish_deny=service.publish_deny,
            subscribe_allow=service.subscribe_allow,
        )
    projectors = [cfg["durable_name"] for cfg in spec.projectors.values()]
    subscriber = Permissions(
        publish_allow=("$JS.API.INFO", *_info(events), *_get(events), *_consume(events)),
        publish_deny=(
            *NEVER,
            f"{prefix}.>",
            "$KV.>",
            *(subject for durable in projectors for subject in _not_consumer(events, durable)),
        ),
        subscribe_allow=(INBOX,),
        subscribe_deny=(BUS_INBOX,),
    )
    return {
        "admin": admin,
        "service": service,
        "processors": processors,
        "subscriber": subscriber,
    }


@dataclass(frozen=True)
class NatsUser:
    """One identity of the embedded nats-server: a user name and its password."""

    user: str
    password: str

    def __repr__(self) -> str:
        return f"NatsUser(user={self.user!r}, password='**********')"

    def env(self) -> dict[str, str]:
        """As the settings take it (``NATS_USER``, ``NATS_PASSWORD``)."""
        return {"NATS_USER": self.user, "NATS_PASSWORD": self.password}


def auth_dir(nats_dir: Path) -> Path:
    return nats_dir / AUTH_DIR


def user_file(nats_dir: Path, role: str) -> Path:
    return auth_dir(nats_dir) / f"{role}.env"


def write_env_file(path: Path, values: dict[str, str], comment: str = "") -> None:
    """``KEY=value`` lines, created owner-only (0600) before anything is written to it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        if comment:
            out.write(f"# {comment}\n")
        for key, value in values.items():
            out.write(f"{key}={value}\n")
    os.replace(tmp, path)


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def read_user(nats_dir: Path, role: str) -> NatsUser | None:
    """The role's identity, or None when the server was never started with authorization."""
    try:
        values = read_env_file(user_file(nats_dir, role))
        return NatsUser(values["NATS_USER"], values["NATS_PASSWORD"])
    except (OSError, KeyError):
        return None


def ensure_users(nats_dir: Path) -> dict[str, NatsUser]:
    """Every role's identity: read from ``nats_dir/auth`` (0700), or generated there at first
    start (a random 256-bit password per role, one 0600 file each)."""
    directory = auth_dir(nats_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    users = {}
    for role in ROLES:
        found = read_user(nats_dir, role)
        if found is None:
            found = NatsUser(role, secrets.token_hex(32))
            write_env_file(
                user_file(nats_dir, role),
                found.env(),
                f"voucher-ledger: the {role} identity of the embedded nats-server",
            )
        user_file(nats_dir, role).chmod(0o600)
        users[role] = found
    return users
