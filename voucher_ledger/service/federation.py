"""Hub and Sovereigns (issue #22): the NATS topology and the hub's audit trail.

Every serve's NATS is its own JetStream domain: the hub's is ``hub``, a Sovereign's is its
``SOVEREIGN_NAME``. A Sovereign's embedded nats-server connects to the hub's as a leaf node
(``HUB_LEAF_URL``); the hub's embedded server opens the leafnode port (``LEAF_LISTEN``) with
one password (``LEAF_PASSWORD``, or ``DATA_DIR/nats/leaf-password`` generated at first start).

Every serve uses the same subjects and stream names (``ledger.events.>``, ``LEDGER_EVENTS``,
the KV buckets), so the leaf link must not carry them: interest crosses a leaf link, and a
Sovereign's append would be stored by the hub's stream too (and a hub's processor would see a
Sovereign's commands). The Sovereign's remote therefore denies, in both directions, the
service's subjects and the KV/object-store subjects; nats-server itself keeps ``$JS.API.>``
inside each domain when the domains differ. What does cross is what JetStream sends for
cross-domain sourcing (``$JS.<domain>.API.>`` and the source consumers' delivery subjects).

The hub's trail: a stream ``<PREFIX>_SOVEREIGNS`` with no subjects of its own that *sources*
each listed Sovereign's event stream across its domain (``external.api = $JS.<name>.API``),
renaming each subject ``<prefix>.events.X`` to ``<prefix>.sovereign.<name>.events.X`` (a
subject transform on the source), so every event on the trail names its Sovereign. nats-server
does the copying and resumes it after a cut link; application code publishes nothing there.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats import errors as nats_errors
from nats.aio.client import Client

from voucher_ledger.config.settings import HUB_DOMAIN, Settings, redact_url
from voucher_ledger.jetstream.api import JetStreamApiError, js_api
from voucher_ledger.jetstream.layout import Layout
from voucher_ledger.ledger.events import decode_envelope
from voucher_ledger.service.embedded import free_port

log = logging.getLogger(__name__)

LEAF_USER = "leaf"
LEAF_PASSWORD_FILE = "leaf-password"  # noqa: S105 - a file name; under DATA_DIR/nats, 0600
MONITOR_FILE = "monitor-url"  # under DATA_DIR/nats: the embedded server's monitoring URL
# Never across a leaf link: the service's own subjects (rendered with its prefix) and the KV /
# object-store subjects of its buckets, which have the same names in every domain.
SHARED_NAMES = ("$KV.>", "$O.>")


def trail_stream(prefix: str) -> str:
    return Layout(prefix, 1).trail_stream


def trail_subject(prefix: str, sovereign: str) -> str:
    """Where the hub's trail keeps Sovereign ``sovereign``'s events."""
    return f"{prefix}.sovereign.{sovereign}.events.>"


def leaf_password(s: Settings, nats_dir: Path) -> str:
    """The hub's leafnode password: LEAF_PASSWORD, or generated once under the data dir."""
    if s.leaf_password is not None:
        return s.leaf_password.get_secret_value()
    path = nats_dir / LEAF_PASSWORD_FILE
    if path.exists():
        return path.read_text().strip()
    nats_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    fd = path.open("x")
    with fd:
        path.chmod(0o600)
        fd.write(value + "\n")
    return value


def leaf_conf(s: Settings, nats_dir: Path) -> str:
    """The embedded nats-server's leafnode block for this serve's role ("" for neither)."""
    if s.hub:
        host, port = s.leaf_listen.rsplit(":", 1)
        block = {
            "listen": f"{host}:{port}",
            "authorization": {"user": LEAF_USER, "password": leaf_password(s, nats_dir)},
            # A Sovereign reaches the hub only by the URL it was given (HUB_LEAF_URL): without
            # this, nats-server tells leaf remotes the hub's own leafnode address, and a
            # Sovereign whose link was cut reconnects around the path its operator chose.
            "no_advertise": True,
        }
        return f"leafnodes {json.dumps(block, indent=1)}\n"
    if s.hub_leaf_url is not None:
        denied = [f"{s.subject_prefix}.>", *SHARED_NAMES]
        remote = {
            "url": s.hub_leaf_url.get_secret_value(),
            "deny_imports": denied,
            "deny_exports": denied,
        }
        return f"leafnodes {json.dumps({'remotes': [remote]}, indent=1)}\n"
    return ""


def server_conf(s: Settings, nats_dir: Path) -> str:
    """The embedded nats-server's extra configuration for a hub or a Sovereign: its leafnode
    block and a monitoring port on loopback (its URL in ``nats_dir/monitor-url``, where tests
    and operators read ``/leafz``)."""
    leaf = leaf_conf(s, nats_dir)
    if not leaf:
        return ""
    port = free_port()
    nats_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (nats_dir / MONITOR_FILE).write_text(f"http://127.0.0.1:{port}\n")
    return f"http: 127.0.0.1:{port}\n{leaf}"


def describe(s: Settings) -> list[str]:
    """What this serve is in the topology, for the start-up log (no secret in it)."""
    if s.hub:
        where = f"leafnodes on {s.leaf_listen}" if s.embedded_nats else "leafnodes: your NATS's"
        names = ", ".join(s.sovereign_names) or "none yet (SOVEREIGNS)"
        return [f"federation: hub (JetStream domain {HUB_DOMAIN}), {where}; trail sources {names}"]
    if s.sovereign_name:
        if s.hub_leaf_url is not None and not s.embedded_nats:
            log.warning(
                "federation: HUB_LEAF_URL only configures the embedded nats-server; with "
                "NATS_URL set, declare the leaf remote (and its denies) on your NATS"
            )
        link = (
            f"leaf link to {redact_url(s.hub_leaf_url.get_secret_value())}"
            if s.hub_leaf_url is not None
            else "no leaf link (HUB_LEAF_URL unset)"
        )
        return [f"federation: Sovereign {s.sovereign_name} (its own JetStream domain), {link}"]
    return []


def inbox_stream(prefix: str) -> str:
    """On a Sovereign: its copy of the hub's global voucher events."""
    return Layout(prefix, 1).inbox_stream


def inbox_subject(prefix: str) -> str:
    return f"{prefix}.hub.global.>"


def inbox_config(prefix: str, events_stream: str) -> dict[str, Any]:
    """A Sovereign's inbox: a stream with no subjects of its own that sources the hub's global
    voucher events (``<prefix>.events.global.>`` of the hub's event stream, across the hub's
    domain), renamed ``<prefix>.hub.global.>``. nats-server copies them and resumes after a cut
    link; the Sovereign's share inbox (``service/globals.py``) reads them."""
    source = {
        "name": events_stream,
        "external": {"api": f"$JS.{HUB_DOMAIN}.API", "deliver": ""},
        "subject_transforms": [{"src": f"{prefix}.events.global.>", "dest": inbox_subject(prefix)}],
    }
    return sourcing_stream(inbox_stream(prefix), [source])


async def ensure_inbox(nc: Client, s: Settings, events_stream: str) -> list[str]:
    """Create a Sovereign's inbox of the hub's global vouchers, if missing."""
    if not s.sovereign_name:
        return []
    config = inbox_config(s.subject_prefix, events_stream)
    name = config["name"]
    try:
        await js_api(nc, f"STREAM.INFO.{name}")
        return []
    except JetStreamApiError as exc:
        if exc.code != 404:
            raise
    await js_api(nc, f"STREAM.CREATE.{name}", config)
    return [f"stream {name}: created, sourcing the hub's global vouchers"]


async def ensure_federation(nc: Client, s: Settings, events_stream: str) -> list[str]:
    """The hub's trail, or a Sovereign's inbox: whichever this serve's role needs."""
    return await ensure_trail(nc, s, events_stream) + await ensure_inbox(nc, s, events_stream)


def sourcing_stream(name: str, sources: list[dict[str, Any]]) -> dict[str, Any]:
    """A stream with no subjects of its own, filled by nats-server from ``sources`` (the hub's
    trail, a Sovereign's inbox): kept whole (no deletes, no purges), read by direct gets."""
    return {
        "name": name,
        "retention": "limits",
        "storage": "file",
        "num_replicas": 1,
        "max_age": 0,
        "max_msgs": -1,
        "max_bytes": -1,
        "discard": "old",
        "deny_delete": True,
        "deny_purge": True,
        "allow_direct": True,
        "sources": sources,
    }


def trail_config(prefix: str, sovereigns: list[str], events_stream: str) -> dict[str, Any]:
    """The hub's trail stream: one source per Sovereign, across its domain, renamed."""
    return sourcing_stream(
        trail_stream(prefix),
        [
            {
                "name": events_stream,
                "external": {"api": f"$JS.{name}.API", "deliver": ""},
                "subject_transforms": [
                    {"src": f"{prefix}.events.>", "dest": trail_subject(prefix, name)}
                ],
            }
            for name in sovereigns
        ],
    )


async def ensure_trail(nc: Client, s: Settings, events_stream: str) -> list[str]:
    """Create (or bring up to date) the hub's trail stream; what changed, for the log."""
    if not s.hub or not s.sovereign_names:
        return []
    config = trail_config(s.subject_prefix, s.sovereign_names, events_stream)
    name = config["name"]
    try:
        info = await js_api(nc, f"STREAM.INFO.{name}")
    except JetStreamApiError as exc:
        if exc.code != 404:
            raise
        await js_api(nc, f"STREAM.CREATE.{name}", config)
        return [f"stream {name}: created, sourcing {', '.join(s.sovereign_names)}"]
    have = sorted(
        src.get("external", {}).get("api", "") for src in info["config"].get("sources") or []
    )
    want = sorted(src["external"]["api"] for src in config["sources"])
    if have == want:
        return []
    await js_api(nc, f"STREAM.UPDATE.{name}", config)
    return [f"stream {name}: now sourcing {', '.join(s.sovereign_names)}"]


@dataclass
class TrailCounts:
    """What the hub's trail holds, per Sovereign: events by type, and redemptions by code."""

    events: dict[str, Counter[str]] = field(default_factory=dict)
    redemptions: dict[str, Counter[str]] = field(default_factory=dict)

    def redeemed(self, code: str) -> int:
        return sum(per_code[code] for per_code in self.redemptions.values())


async def trail_counts(nc: Client, prefix: str) -> TrailCounts:
    """Read the hub's whole trail (an ordered consumer) and count it per Sovereign."""
    js = nc.jetstream()
    name = trail_stream(prefix)
    info = await js.stream_info(name)
    last = info.state.last_seq
    counts = TrailCounts()
    if info.state.messages == 0:
        return counts
    sub = await js.subscribe(f"{prefix}.sovereign.>", stream=name, ordered_consumer=True)
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            tokens = msg.subject.split(".")
            sovereign = tokens[2]
            envelope = decode_envelope(msg.data)
            kind = envelope.event.type
            counts.events.setdefault(sovereign, Counter())[kind] += 1
            if kind == "voucher.redeemed":
                counts.redemptions.setdefault(sovereign, Counter())[envelope.aggregate_id] += 1
            if msg.metadata.sequence.stream >= last:
                break
    finally:
        await sub.unsubscribe()
    return counts


def is_hub_domain(domain: str | None) -> bool:
    return domain == HUB_DOMAIN


@dataclass
class SovereignCheck:
    """The hub's trail against one Sovereign's own stream, subject by subject."""

    name: str
    sourced: int  # events of this Sovereign on the hub's trail
    own: int | None  # events in the Sovereign's stream; None: not reachable (link down)
    differing: list[str] = field(default_factory=list)  # subjects whose counts differ

    @property
    def equal(self) -> bool:
        return self.own is not None and not self.differing

    def line(self) -> str:
        if self.own is None:
            return f"{self.name}: unreachable (leaf link down?); trail holds {self.sourced}"
        if self.equal:
            return f"{self.name}: trail equals the Sovereign's stream ({self.own} events)"
        shown = ", ".join(self.differing[:5])
        return (
            f"{self.name}: trail {self.sourced} events, Sovereign {self.own}; "
            f"{len(self.differing)} subjects differ ({shown})"
        )


async def _subject_counts(
    nc: Client, api: str, stream: str, subjects: str, timeout: float
) -> dict[str, int]:
    """Messages per subject of ``stream`` (paged), through ``api`` ($JS.API or another
    domain's $JS.<domain>.API)."""
    counts: dict[str, int] = {}
    offset = 0
    while True:
        body = json.dumps({"subjects_filter": subjects, "offset": offset}).encode()
        msg = await nc.request(f"{api}.STREAM.INFO.{stream}", body, timeout=timeout)
        info = json.loads(msg.data)
        if "error" in info:
            raise JetStreamApiError(
                int(info["error"].get("code", 0)),
                int(info["error"].get("err_code", 0)),
                str(info["error"].get("description", "")),
                what=f"STREAM.INFO.{stream}",
            )
        page: dict[str, int] = info.get("state", {}).get("subjects") or {}
        counts.update(page)
        offset += len(page)
        if not page or offset >= int(info.get("total") or 0):
            return counts


async def compare_trail(
    nc: Client, prefix: str, sovereigns: list[str], events_stream: str, timeout: float = 5.0
) -> list[SovereignCheck]:
    """The hub's check of its trail: for each Sovereign, the events of each of its subjects
    on the trail against the Sovereign's own stream, read across its domain."""
    checks = []
    for name in sovereigns:
        head = f"{prefix}.sovereign.{name}."
        sourced = await _subject_counts(
            nc, "$JS.API", trail_stream(prefix), trail_subject(prefix, name), timeout
        )
        mapped = {f"{prefix}." + subject.removeprefix(head): n for subject, n in sourced.items()}
        try:
            own: dict[str, int] | None = await _subject_counts(
                nc, f"$JS.{name}.API", events_stream, f"{prefix}.events.>", timeout
            )
        except (TimeoutError, JetStreamApiError, nats_errors.NoRespondersError) as exc:
            log.info("federation: %s not reachable: %r", name, exc)
            own = None
        check = SovereignCheck(name, sum(mapped.values()), None)
        if own is not None:
            check.own = sum(own.values())
            check.differing = sorted(
                s for s in own.keys() | mapped.keys() if own.get(s, 0) != mapped.get(s, 0)
            )
        checks.append(check)
    return checks
