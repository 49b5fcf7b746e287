"""Published event documentation, generated from the event models at run time.

``voucher-ledger schema export DIR`` writes, for every model of ``ledger.events.EVENT_TYPES``
(whatever it contains):

* ``DIR/schemas/<type>.json``: the JSON Schema (draft 2020-12) of the event;
* ``DIR/schemas/envelope.json``: the envelope every event travels in, all event types included;
* ``DIR/asyncapi.yaml``: an AsyncAPI 3.0 document of the event stream: one channel per
  aggregate (``<prefix>.events.<aggregate>.<id>``), a receive operation per channel, and one
  message per event type whose payload is the envelope carrying that event;
* the generated block of ``DIR/events.md`` (every event type with its fields).

``voucher-ledger schema check DIR`` (and the test suite) report any difference between those
files and the models.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from voucher_ledger import __version__
from voucher_ledger.ledger.events import EVENT_TYPES, EventEnvelope, Frozen

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
EXPORT_COMMAND = "voucher-ledger schema export docs"
ENVELOPE_FILE = "envelope.json"
BEGIN = "<!-- BEGIN GENERATED EVENT REFERENCE: `voucher-ledger schema export docs` -->"
END = "<!-- END GENERATED EVENT REFERENCE -->"

# Event type families whose name is not an aggregate: the aggregate whose subject carries them.
FAMILY_AGGREGATE = {"order": "wallet", "invoice": "wallet"}

# The id token of each aggregate's subject, for the AsyncAPI channel parameters and the docs.
AGGREGATE_KEYS: dict[str, tuple[str, str, str]] = {
    # aggregate -> (parameter name, description, subject shown in the docs)
    "voucher": (
        "code",
        "The voucher code, normalised: strip().upper(), then ^[A-Z0-9][A-Z0-9_-]{2,63}$.",
        "<prefix>.events.voucher.<CODE>",
    ),
    "wallet": (
        "account",
        "The account id: the Organization (the checkout's tenant_id; before issue #20 a "
        "user's JWT sub), base64url-encoded (RFC 4648 section 5) without padding.",
        "<prefix>.events.wallet.<ACCOUNT>",
    ),
    "campaign": (
        "campaign_id",
        "The campaign's id: 6 characters of 23456789ACEFHJKMNPRTVWXY; also the middle part "
        "of its codes ([PREFIX-]CAMPAIGN_ID-XXXXXXXXXX), whose events it writes.",
        "<prefix>.events.campaign.<CAMPAIGN_ID>",
    ),
    "global": (
        "code",
        "A global voucher's code at the hub (issue #22), normalised like a voucher's; every "
        "Sovereign sources <prefix>.events.global.> from the hub into its own stream "
        "<PREFIX>_HUB_GLOBALS.",
        "<prefix>.events.global.<CODE>",
    ),
}

TRAIL_CHANNEL = "sovereign_trail"  # the AsyncAPI channel of a hub's trail (issue #22)

ENVELOPE_FIELD_DOCS = {
    "event_id": "Unique id of this event (UUID).",
    "aggregate": "The aggregate that wrote the event; also the third subject token.",
    "aggregate_id": (
        "The aggregate's id: the normalised voucher code, the account id of a wallet "
        "(the Organization; plain, not base64url-encoded as in the subject), a campaign's "
        "id, or a global voucher's code (at the hub)."
    ),
    "occurred_at": "When the command was decided (RFC 3339, UTC).",
    "actor": "Who caused the change: the JWT subject and role, or system/system.",
    "command_id": (
        "Id of the causing command (an Idempotency-Key or a generated id); several events of "
        "one command share it."
    ),
    "command_fingerprint": "Digest of the causing command's payload (idempotency checks).",
    "event": "The event itself, tagged by type and schema version.",
}


@dataclass(frozen=True)
class EventDoc:
    model: type[Frozen]
    type: str
    version: int
    aggregates: tuple[str, ...]

    @property
    def filename(self) -> str:
        return f"{self.type}.json"

    @property
    def summary(self) -> str:
        return _docstring(self.model).split("\n\n")[0].replace("\n", " ").strip()


def aggregates() -> list[str]:
    """The values of the envelope's ``aggregate`` field."""
    prop = EventEnvelope.model_json_schema()["properties"]["aggregate"]
    if "enum" in prop:
        return [str(v) for v in prop["enum"]]
    return [str(prop["const"])]


def event_docs() -> list[EventDoc]:
    known = aggregates()
    docs = []
    for model in EVENT_TYPES:
        etype = str(model.model_fields["type"].default)
        version = int(model.model_fields["version"].default)
        family = etype.split(".", 1)[0]
        owner = family if family in known else FAMILY_AGGREGATE.get(family)
        docs.append(
            EventDoc(
                model=model,
                type=etype,
                version=version,
                aggregates=(owner,) if owner in known else tuple(known),
            )
        )
    return docs


def _docstring(model: type[Frozen]) -> str:
    own = model.__dict__.get("__doc__") or ""
    return re.sub(r"``([^`]+)``", r"`\1`", own).strip()


# --------------------------------------------------------------------------------- JSON Schema


def event_schema(doc: EventDoc) -> dict[str, Any]:
    schema = doc.model.model_json_schema(mode="serialization")
    props = schema["properties"]
    # Every message on the wire carries its tag and version (model_dump_json writes all fields).
    required = ["type", "version", *[r for r in schema.get("required", []) if r in props]]
    schema["required"] = list(dict.fromkeys(required))
    schema["properties"] = {
        "type": props["type"],
        "version": props["version"],
        **{k: v for k, v in props.items() if k not in ("type", "version")},
    }
    if not schema.get("description"):
        schema["description"] = f"The {doc.type} event, schema version {doc.version}."
    return {"$schema": SCHEMA_DIALECT, "$comment": _comment(), **schema}


def envelope_schema() -> dict[str, Any]:
    schema = EventEnvelope.model_json_schema(mode="serialization")
    _describe_envelope(schema)
    schema["description"] = (
        "The JSON body of every message on <prefix>.events.>: one event in its envelope."
    )
    return {"$schema": SCHEMA_DIALECT, "$comment": _comment(), **schema}


def _describe_envelope(schema: dict[str, Any]) -> None:
    for name, prop in schema["properties"].items():
        if name in ENVELOPE_FIELD_DOCS and "description" not in prop:
            if "$ref" in prop:  # siblings of $ref are fine in 2020-12, not in draft-07
                schema["properties"][name] = {
                    "allOf": [prop],
                    "description": ENVELOPE_FIELD_DOCS[name],
                }
            else:
                prop["description"] = ENVELOPE_FIELD_DOCS[name]


def _comment() -> str:
    return f"Generated from voucher_ledger.ledger.events by `{EXPORT_COMMAND}`; do not edit."


def _json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------ AsyncAPI

_COMPONENT = "#/components/schemas/"


def _strip_discriminators(node: Any) -> Any:
    """AsyncAPI schemas want ``discriminator`` as a property name, pydantic writes OpenAPI's
    object form: drop it (each event's ``type`` const already tells them apart)."""
    if isinstance(node, dict):
        return {
            k: _strip_discriminators(v)
            for k, v in node.items()
            if not (k == "discriminator" and isinstance(v, dict))
        }
    if isinstance(node, list):
        return [_strip_discriminators(v) for v in node]
    return node


def _hoist(schema: dict[str, Any], name: str, into: dict[str, Any]) -> None:
    schema = copy.deepcopy(schema)
    for sub_name, sub in schema.pop("$defs", {}).items():
        into.setdefault(sub_name, _strip_discriminators(sub))
    into[name] = _strip_discriminators(schema)


def asyncapi_document() -> dict[str, Any]:
    docs = event_docs()
    known = aggregates()
    schemas: dict[str, Any] = {}
    envelope = EventEnvelope.model_json_schema(
        mode="serialization", ref_template=_COMPONENT + "{model}"
    )
    _describe_envelope(envelope)
    _hoist(envelope, "EventEnvelope", schemas)
    for doc in docs:
        schema = doc.model.model_json_schema(
            mode="serialization", ref_template=_COMPONENT + "{model}"
        )
        schema["required"] = event_schema(doc)["required"]
        _hoist(schema, doc.model.__name__, schemas)

    messages: dict[str, Any] = {}
    for doc in docs:
        narrowed: dict[str, Any] = {
            "type": "object",
            "properties": {"event": {"$ref": _COMPONENT + doc.model.__name__}},
        }
        if len(doc.aggregates) == 1:
            narrowed["properties"]["aggregate"] = {"const": doc.aggregates[0]}
        messages[doc.type] = {
            "name": doc.type,
            "title": doc.model.__name__,
            "summary": doc.summary or f"{doc.type} v{doc.version}",
            "contentType": "application/json",
            "payload": {"allOf": [{"$ref": _COMPONENT + "EventEnvelope"}, narrowed]},
        }

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for aggregate in known:
        param, param_doc, _ = AGGREGATE_KEYS.get(aggregate, ("id", "The aggregate id.", ""))
        mine = [d for d in docs if aggregate in d.aggregates]
        channels[aggregate] = {
            "address": f"{{prefix}}.events.{aggregate}.{{{param}}}",
            "title": f"{aggregate.capitalize()} events",
            "description": (
                f"Every event of one {aggregate}, in order, on the event stream "
                "<PREFIX>_EVENTS. Subscribe to <prefix>.events.> for all aggregates in one "
                "global order."
            ),
            "parameters": {
                "prefix": {
                    "description": "The SUBJECT_PREFIX setting: [a-z][a-z0-9_]{0,31}.",
                    "default": "ledger",
                },
                param: {"description": param_doc},
            },
            "messages": {d.type: {"$ref": f"#/components/messages/{d.type}"} for d in mine},
        }
        operations[f"receive{aggregate.capitalize()}Events"] = {
            "action": "receive",
            "title": f"Read {aggregate} events",
            "summary": (
                "Bind a JetStream consumer (explicit ack) on <PREFIX>_EVENTS filtered on this "
                "channel's subjects; events arrive in stream-sequence order."
            ),
            "channel": {"$ref": f"#/channels/{aggregate}"},
            "messages": [{"$ref": f"#/channels/{aggregate}/messages/{d.type}"} for d in mine],
        }

    # Issue #22: at a hub, every Sovereign's events, sourced by nats-server (not re-published),
    # under subjects that name the Sovereign.
    sovereign_made = [d for d in docs if "global" not in d.aggregates]
    channels[TRAIL_CHANNEL] = {
        "address": "{prefix}.sovereign.{sovereign}.events.{aggregate}.{id}",
        "title": "The hub's trail of its Sovereigns' events",
        "description": (
            "At a hub (HUB=true): stream <PREFIX>_SOVEREIGNS sources each Sovereign's "
            "<PREFIX>_EVENTS across its JetStream domain and renames <prefix>.events.X to "
            "<prefix>.sovereign.<sovereign>.events.X; the envelopes are copied verbatim (their "
            "proofs are the Sovereign's). In each Sovereign's order; Sovereigns interleave."
        ),
        "parameters": {
            "prefix": {"description": "The SUBJECT_PREFIX setting.", "default": "ledger"},
            "sovereign": {"description": "The Sovereign's name (its SOVEREIGN_NAME)."},
            "aggregate": {"description": "voucher, wallet or campaign."},
            "id": {"description": "The aggregate's id token, as on the Sovereign."},
        },
        "messages": {d.type: {"$ref": f"#/components/messages/{d.type}"} for d in sovereign_made},
    }
    operations["receiveSovereignTrail"] = {
        "action": "receive",
        "title": "Read the hub's trail",
        "summary": (
            "At a hub: bind a JetStream consumer on <PREFIX>_SOVEREIGNS (filter "
            "<prefix>.sovereign.<name>.> for one Sovereign)."
        ),
        "channel": {"$ref": f"#/channels/{TRAIL_CHANNEL}"},
        "messages": [
            {"$ref": f"#/channels/{TRAIL_CHANNEL}/messages/{d.type}"} for d in sovereign_made
        ],
    }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "voucher-ledger event stream",
            "version": __version__,
            "description": (
                "Every change of the voucher ledger, as JSON envelopes on NATS JetStream. "
                f"{_comment()} See docs/events.md for ordering guarantees and how to bind a "
                "durable consumer."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "The NATS_URL of the deployment (JetStream, nats-server >= 2.12).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _yaml(doc: dict[str, Any]) -> str:
    header = f"# {_comment()}\n"
    return header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)


# ------------------------------------------------------------------------------ events.md block


def _type_of(prop: dict[str, Any]) -> str:
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "allOf" in prop and len(prop["allOf"]) == 1:
        return _type_of(prop["allOf"][0])
    if "oneOf" in prop and len(prop["oneOf"]) > 3:
        return f"one of the {len(prop['oneOf'])} event types below"
    if "oneOf" in prop:
        return " or ".join(_type_of(p) for p in prop["oneOf"])
    if "anyOf" in prop:
        return " or ".join(_type_of(p) for p in prop["anyOf"])
    kind = prop.get("type")
    if kind == "array":
        return f"array of {_type_of(prop.get('items', {}))}"
    if kind == "string" and prop.get("format"):
        return f"string ({prop['format']})"
    return str(kind or "any")


def _fields_table(schema: dict[str, Any], docs: dict[str, str] | None = None) -> list[str]:
    required = set(schema.get("required", []))
    rows = ["| field | type | required |" + (" meaning |" if docs else "")]
    rows.append("|---|---|---|" + ("---|" if docs else ""))
    for name, prop in schema["properties"].items():
        needed = "yes" if name in required else "no"
        if name not in required and "default" in prop:
            needed += f" (default `{json.dumps(prop['default'])}`)"
        row = f"| `{name}` | {_type_of(prop)} | {needed} |"
        if docs:
            row += f" {docs.get(name, '')} |"
        rows.append(row)
    return rows


def events_reference() -> str:
    """The generated block of docs/events.md."""
    lines = [BEGIN, ""]
    envelope = envelope_schema()
    lines += [
        "### The envelope",
        "",
        f"Schema: [`schemas/{ENVELOPE_FILE}`](schemas/{ENVELOPE_FILE}).",
        "",
    ]
    lines += _fields_table(envelope, ENVELOPE_FIELD_DOCS)
    lines.append("")
    nested: dict[str, Any] = dict(envelope.get("$defs", {}))
    docs = event_docs()
    lines += ["### Event types", "", "| type | version | subject |", "|---|---|---|"]
    for doc in docs:
        subjects = ", ".join(
            f"`{AGGREGATE_KEYS.get(a, ('', '', f'<prefix>.events.{a}.<ID>'))[2]}`"
            for a in doc.aggregates
        )
        lines.append(f"| [`{doc.type}`](#{_anchor(doc.type)}) | {doc.version} | {subjects} |")
    lines.append("")
    for doc in docs:
        schema = event_schema(doc)
        lines += [f"#### {doc.type}", ""]
        text = _docstring(doc.model)
        if text:
            lines += [" ".join(text.split()), ""]
        lines += [
            f"Version {doc.version}. Schema: [`schemas/{doc.filename}`](schemas/{doc.filename}).",
            "",
        ]
        lines += _fields_table(schema)
        lines.append("")
    referenced = sorted(
        name for name in nested if name not in {d.model.__name__ for d in docs} | {"Actor"}
    )
    for name in ["Actor", *referenced]:
        if name in nested:
            lines += [f"#### {name} (nested object)", ""]
            lines += _fields_table(nested[name])
            lines.append("")
    lines.append(END)
    return "\n".join(lines) + "\n"


def _anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9_ -]", "", heading.lower()).replace(" ", "-")


def _with_reference(existing: str | None) -> str:
    block = events_reference()
    if existing is None:
        return f"# Events\n\n{block}"
    start, end = existing.find(BEGIN), existing.find(END)
    if start < 0 or end < start:
        raise ExportError(f"events.md has no generated block (lines {BEGIN!r} ... {END!r})")
    return existing[:start] + block + existing[end + len(END) :].lstrip("\n")


# -------------------------------------------------------------------------------- export/check


class ExportError(Exception):
    pass


def rendered(root: Path) -> dict[str, str]:
    """Relative path under ``root`` -> the content the models call for."""
    files: dict[str, str] = {f"schemas/{ENVELOPE_FILE}": _json(envelope_schema())}
    for doc in event_docs():
        files[f"schemas/{doc.filename}"] = _json(event_schema(doc))
    files["asyncapi.yaml"] = _yaml(asyncapi_document())
    md = root / "events.md"
    files["events.md"] = _with_reference(md.read_text() if md.exists() else None)
    return files


def _stale(root: Path, wanted: dict[str, str]) -> Iterator[Path]:
    folder = root / "schemas"
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            if f"schemas/{path.name}" not in wanted:
                yield path


def export(root: Path) -> list[str]:
    """Write the generated files under ``root``; returns a line per file changed."""
    if root.exists() and not root.is_dir():
        raise ExportError(f"{root} is not a directory")
    wanted = rendered(root)
    changes = []
    (root / "schemas").mkdir(parents=True, exist_ok=True)
    for rel, content in wanted.items():
        path = root / rel
        if not path.exists() or path.read_text() != content:
            path.write_text(content)
            changes.append(f"wrote {path}")
    for path in _stale(root, wanted):
        path.unlink()
        changes.append(f"removed {path} (no such event type any more)")
    return changes


def check(root: Path) -> list[str]:
    """Every difference between the files under ``root`` and the models; empty when in sync."""
    if not root.is_dir():
        return [f"{root} does not exist"]
    try:
        wanted = rendered(root)
    except ExportError as exc:
        return [str(exc)]
    problems = []
    for rel, content in wanted.items():
        path = root / rel
        if not path.exists():
            problems.append(f"{path} is missing")
        elif path.read_text() != content:
            problems.append(f"{path} differs from the models")
    for path in _stale(root, wanted):
        problems.append(f"{path} describes no current event type")
    return problems
