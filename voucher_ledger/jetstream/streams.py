"""``streams.yaml``: load it, apply it idempotently, and report drift against the server.

Streams and consumers are created through the JetStream JSON API (not nats.py's config classes,
which lag the server's fields, and whose ``pull_subscribe`` ignores a changed config for an
existing durable). Durations in the file are seconds; the API wants nanoseconds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from nats.aio.client import Client

from voucher_ledger.jetstream.api import JetStreamApiError, js_api
from voucher_ledger.jetstream.errors import StreamsError
from voucher_ledger.jetstream.layout import Layout

DEFAULT_FILE = Path(__file__).with_name("streams.yaml")
_DURATIONS = {"max_age", "duplicate_window", "ack_wait"}
_NS = 1_000_000_000


@dataclass(frozen=True)
class Drift:
    kind: str  # "stream" | "consumer"
    name: str
    field: str
    declared: Any
    actual: Any

    def __str__(self) -> str:
        if self.field == "*":
            return f"{self.kind} {self.name}: missing on the server"
        if self.field == "+":
            return f"{self.kind} {self.name}: on the server but not declared"
        return (
            f"{self.kind} {self.name}: {self.field} declared {self.declared!r}, "
            f"server has {self.actual!r}"
        )


@dataclass
class StreamsSpec:
    """The rendered declaration for one prefix."""

    layout: Layout
    streams: dict[str, dict[str, Any]]  # key ("events", "commands", "leases") -> API config
    consumers: dict[str, list[dict[str, Any]]]  # stream key -> consumer configs
    lease_ttl: float
    projectors: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> consumer cfg
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    projector_template: dict[str, Any] = field(default_factory=dict)  # "{PROJECTION}" unset

    def projector_consumer(self, name: str) -> dict[str, Any]:
        """The consumer of projector ``name``: a declared one, or the same template (a
        projector over one read model, as tests and tools run)."""
        if name in self.projectors:
            return dict(self.projectors[name])
        return _projector_cfg(self.projector_template, name)

    @property
    def projector_prefix(self) -> str:
        return f"{self.layout.upper}_PROJ_"

    @property
    def event_stream(self) -> str:
        return str(self.streams["events"]["name"])

    @property
    def command_stream(self) -> str:
        return str(self.streams["commands"]["name"])

    @property
    def lease_bucket(self) -> str:
        return str(self.streams["leases"]["name"]).removeprefix("KV_")

    @property
    def limits_bucket(self) -> str:
        return str(self.streams["limits"]["name"]).removeprefix("KV_")

    @property
    def idempotency_bucket(self) -> str:
        return str(self.streams["idempotency"]["name"]).removeprefix("KV_")


def load_spec(
    prefix: str,
    path: Path | None = None,
    *,
    event_replicas: int | None = None,
    command_replicas: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> StreamsSpec:
    raw = yaml.safe_load((path or DEFAULT_FILE).read_text())
    if overrides:
        raw = _merge(raw, overrides)
    partitions = int(raw["partitions"])
    layout = Layout(prefix=prefix, partitions=partitions)

    def render(value: Any, partition: int | None = None) -> Any:
        if isinstance(value, str):
            out = value.replace("{prefix}", prefix).replace("{PREFIX}", prefix.upper())
            if partition is not None:
                out = out.replace("{partition}", str(partition))
            return out
        if isinstance(value, list):
            return [render(v, partition) for v in value]
        if isinstance(value, dict):
            return {k: render(v, partition) for k, v in value.items()}
        return value

    streams: dict[str, dict[str, Any]] = {}
    for key, cfg in raw["streams"].items():
        streams[key] = _to_api(render(cfg))
    if event_replicas is not None:
        streams["events"]["num_replicas"] = event_replicas
    if command_replicas is not None:
        streams["commands"]["num_replicas"] = command_replicas

    # KV buckets are streams too: leases live in memory (they expire in seconds anyway);
    # idempotency keys must survive a restart, so they go to disk like the events.
    ttl = float(raw["leases"]["ttl"])
    streams["leases"] = _kv_stream(
        render(raw["leases"]["bucket"]), ttl, "memory", streams["commands"].get("num_replicas", 1)
    )
    idem = raw.get("idempotency")
    if idem:
        streams["idempotency"] = _kv_stream(
            render(idem["bucket"]),
            float(idem["ttl"]),
            "file",
            streams["events"].get("num_replicas", 1),
        )

    limits = raw.get("limits")
    if limits:
        # Per-message TTL (Nats-TTL on each write, nats-server >= 2.11), max_age a backstop.
        streams["limits"] = {
            **_kv_stream(
                render(limits["bucket"]),
                float(limits["max_age"]),
                "memory",
                streams["commands"].get("num_replicas", 1),
            ),
            "allow_msg_ttl": True,
        }

    consumers: dict[str, list[dict[str, Any]]] = {}
    for _name, cfg in raw["consumers"].items():
        cfg = dict(cfg)
        stream_key = cfg.pop("stream")
        for partition in range(partitions):
            consumers.setdefault(stream_key, []).append(_to_api(render(cfg, partition)))
    projectors: dict[str, dict[str, Any]] = {}
    section = raw.get("projectors") or {}
    template = render(section.get("consumer") or {})
    for name in section.get("names", []):
        projectors[name] = _projector_cfg(template, name)
    return StreamsSpec(
        layout=layout,
        streams=streams,
        consumers=consumers,
        lease_ttl=ttl,
        projectors=projectors,
        raw=raw,
        projector_template=template,
    )


def _projector_cfg(template: dict[str, Any], name: str) -> dict[str, Any]:
    return _to_api(
        {
            k: (v.replace("{PROJECTION}", name.upper()) if isinstance(v, str) else v)
            for k, v in template.items()
        }
    )


def _kv_stream(bucket: str, ttl: float, storage: str, replicas: int) -> dict[str, Any]:
    """The stream behind a KV bucket: one value per key, entries expire after ``ttl``."""
    return {
        "name": f"KV_{bucket}",
        "subjects": [f"$KV.{bucket}.>"],
        "retention": "limits",
        "storage": storage,
        "num_replicas": replicas,
        "max_msgs_per_subject": 1,
        "max_age": int(ttl * _NS),
        "discard": "new",
        "allow_rollup_hdrs": True,
        "deny_delete": True,
        "allow_direct": True,
    }


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _to_api(cfg: dict[str, Any]) -> dict[str, Any]:
    out = dict(cfg)
    for key in _DURATIONS & out.keys():
        out[key] = int(float(out[key]) * _NS)
    return out


async def _api(nc: Client, what: str, body: dict[str, Any] | None, doing: str) -> dict[str, Any]:
    """``$JS.API.<what>``; an error answer is a :class:`StreamsError` saying what we were
    ``doing``."""
    try:
        return await js_api(nc, what, body)
    except JetStreamApiError as exc:
        raise StreamsError(f"{doing}: {exc.description}") from exc


async def _stream_info(nc: Client, name: str) -> dict[str, Any] | None:
    try:
        return await js_api(nc, f"STREAM.INFO.{name}")
    except JetStreamApiError as exc:
        if exc.err_code == 10059:  # stream not found
            return None
        raise StreamsError(f"stream {name}: {exc.description}") from exc


async def _consumer_info(nc: Client, stream: str, durable: str) -> dict[str, Any] | None:
    try:
        return await js_api(nc, f"CONSUMER.INFO.{stream}.{durable}")
    except JetStreamApiError as exc:
        if exc.err_code in (10014, 10059):  # consumer or stream not found
            return None
        raise StreamsError(f"consumer {durable}: {exc.description}") from exc


def _field_drift(
    kind: str, name: str, declared: dict[str, Any], actual: dict[str, Any]
) -> list[Drift]:
    drifts = []
    for key, want in declared.items():
        have = actual.get(key)
        if key == "subjects":
            equal = sorted(want) == sorted(have or [])
        elif isinstance(want, bool):
            equal = bool(have) == want
        else:
            equal = have == want
        if not equal:
            drifts.append(Drift(kind, name, key, want, have))
    return drifts


def _all_consumers(spec: StreamsSpec) -> dict[str, list[dict[str, Any]]]:
    out = {key: list(cfgs) for key, cfgs in spec.consumers.items()}
    out.setdefault("events", []).extend(spec.projectors.values())
    return out


@dataclass(frozen=True)
class DiffReport:
    """``drifts``, and the memory-stored streams left out of them because they are absent:
    ``serve`` declares those at every start, and a nats-server restart forgets them."""

    drifts: list[Drift]
    absent_in_memory: list[str]


async def diff(nc: Client, spec: StreamsSpec) -> list[Drift]:
    """Every difference between ``spec`` and the server, absent memory streams included."""
    return (await report(nc, spec, memory_absent_ok=False)).drifts


async def report(nc: Client, spec: StreamsSpec, *, memory_absent_ok: bool = True) -> DiffReport:
    """The differences; with ``memory_absent_ok`` a memory-stored stream (the command stream,
    the lease and limit buckets) that is merely absent, and its consumers, are not drift: the
    service declares them itself when it starts (``streams diff`` against a stopped one)."""
    drifts: list[Drift] = []
    absent: list[str] = []
    skipped: set[str] = set()  # stream keys
    for key, cfg in spec.streams.items():
        info = await _stream_info(nc, cfg["name"])
        if info is None:
            if memory_absent_ok and cfg.get("storage") == "memory":
                absent.append(cfg["name"])
                skipped.add(key)
            else:
                drifts.append(Drift("stream", cfg["name"], "*", None, None))
            continue
        drifts.extend(_field_drift("stream", cfg["name"], cfg, info["config"]))
    for key, consumer_cfgs in _all_consumers(spec).items():
        if key in skipped:
            continue
        stream = spec.streams[key]["name"]
        declared_names = set()
        for cfg in consumer_cfgs:
            declared_names.add(cfg["durable_name"])
            info = await _consumer_info(nc, stream, cfg["durable_name"])
            if info is None:
                drifts.append(Drift("consumer", cfg["durable_name"], "*", None, None))
                continue
            drifts.extend(_field_drift("consumer", cfg["durable_name"], cfg, info["config"]))
        if await _stream_info(nc, stream) is not None:
            names = await _api(
                nc, f"CONSUMER.NAMES.{stream}", {"offset": 0}, f"consumers of {stream}"
            )
            for name in names.get("consumers") or []:
                if _owned(spec, name) and name not in declared_names:
                    drifts.append(Drift("consumer", name, "+", None, None))
    return DiffReport(drifts, absent)


def _owned(spec: StreamsSpec, consumer: str) -> bool:
    """A durable this declaration manages (processors and projectors; not an audit
    subscriber's or a replay's)."""
    return consumer.startswith((f"{spec.layout.upper}_PROC_", spec.projector_prefix))


async def apply(nc: Client, spec: StreamsSpec) -> list[str]:
    """Create what is missing, update what drifted. Returns a line per change made."""
    changes: list[str] = []
    for cfg in spec.streams.values():
        name = cfg["name"]
        info = await _stream_info(nc, name)
        if info is None:
            await _api(nc, f"STREAM.CREATE.{name}", cfg, f"creating stream {name}")
            changes.append(f"created stream {name}")
        elif _field_drift("stream", name, cfg, info["config"]):
            merged = {**info["config"], **cfg}
            await _api(nc, f"STREAM.UPDATE.{name}", merged, f"updating stream {name}")
            changes.append(f"updated stream {name}")
    for key, consumer_cfgs in _all_consumers(spec).items():
        stream = spec.streams[key]["name"]
        for cfg in consumer_cfgs:
            durable = cfg["durable_name"]
            info = await _consumer_info(nc, stream, durable)
            if info is not None and not _field_drift("consumer", durable, cfg, info["config"]):
                continue
            body = {"stream_name": stream, "config": cfg}
            doing = f"{'updating' if info else 'creating'} consumer {durable}"
            await _api(nc, f"CONSUMER.CREATE.{stream}.{durable}", body, doing)
            changes.append(f"{'updated' if info else 'created'} consumer {durable}")
    # Projector consumers no longer declared (the per-read-model ones of earlier versions):
    # nothing reads them any more, and the server would keep their state forever.
    events = spec.event_stream
    declared = {cfg["durable_name"] for cfg in spec.projectors.values()}
    if await _stream_info(nc, events) is not None:
        names = await _api(nc, f"CONSUMER.NAMES.{events}", {"offset": 0}, f"consumers of {events}")
        for name in names.get("consumers") or []:
            if name.startswith(spec.projector_prefix) and name not in declared:
                await _api(
                    nc, f"CONSUMER.DELETE.{events}.{name}", None, f"deleting consumer {name}"
                )
                changes.append(f"deleted consumer {name} (no longer declared)")
    return changes
