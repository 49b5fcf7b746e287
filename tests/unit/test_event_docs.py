"""The published event documentation: in sync with the models, structurally valid, and true to
what the models put on the wire."""

from __future__ import annotations

import functools
import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from voucher_ledger.cli import main
from voucher_ledger.ledger.events import EVENT_TYPES, Actor, EventEnvelope, encode_envelope
from voucher_ledger.published import eventdocs

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_committed_docs_match_the_event_models() -> None:
    problems = eventdocs.check(DOCS)
    assert not problems, (
        "docs/ is out of date with voucher_ledger/ledger/events.py:\n  "
        + "\n  ".join(problems)
        + f"\nRun `{eventdocs.EXPORT_COMMAND}` and commit docs/."
    )


def test_every_event_type_has_a_schema_file_and_a_message() -> None:
    names = {p.name for p in (DOCS / "schemas").glob("*.json")}
    types = {str(m.model_fields["type"].default) for m in EVENT_TYPES}
    assert names == {f"{t}.json" for t in types} | {"envelope.json"}
    doc = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    assert set(doc["components"]["messages"]) == types


# ------------------------------------------------------------------------------------ AsyncAPI


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references: {ref}"
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict), ref
        assert part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_asyncapi_document_is_structurally_valid() -> None:
    doc = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"]
    assert doc["info"]["version"]
    assert doc["defaultContentType"] == "application/json"
    for server in doc["servers"].values():
        assert server["protocol"] == "nats"
        assert server["host"]

    channels = doc["channels"]
    assert set(eventdocs.aggregates()) == {"voucher", "wallet", "campaign", "global"}
    assert set(channels) == {*eventdocs.aggregates(), eventdocs.TRAIL_CHANNEL}
    assert channels[eventdocs.TRAIL_CHANNEL]["address"] == (
        "{prefix}.sovereign.{sovereign}.events.{aggregate}.{id}"
    )
    assert channels["voucher"]["address"] == "{prefix}.events.voucher.{code}"
    assert channels["wallet"]["address"] == "{prefix}.events.wallet.{account}"
    for name, channel in channels.items():
        params = set(re.findall(r"{([^}]+)}", channel["address"]))
        assert params == set(channel["parameters"]), name  # every {parameter} is described
        assert all(p.get("description") for p in channel["parameters"].values())
        assert channel["messages"], name
        for key, message in channel["messages"].items():
            assert message["$ref"] == f"#/components/messages/{key}"

    operations = doc["operations"]
    assert operations
    covered: set[str] = set()
    for name, op in operations.items():
        assert op["action"] in {"send", "receive"}, name
        channel_ref = op["channel"]["$ref"]
        channel = resolve(doc, channel_ref)
        assert channel in channels.values()
        for message in op["messages"]:  # operation messages must be the channel's messages
            assert message["$ref"].startswith(channel_ref + "/messages/")
            resolve(doc, message["$ref"])
            covered.add(message["$ref"].rsplit("/", 1)[-1])

    messages = doc["components"]["messages"]
    assert covered == set(messages)  # every message is received somewhere
    for key, message in messages.items():
        assert re.fullmatch(r"[A-Za-z0-9.\-_]+", key)
        assert message["name"] == key
        assert message["contentType"] == "application/json"
        payload = message["payload"]
        assert payload, key
        envelope_ref, narrowed = payload["allOf"]
        assert envelope_ref == {"$ref": "#/components/schemas/EventEnvelope"}
        event_schema = resolve(doc, narrowed["properties"]["event"]["$ref"])
        assert event_schema["properties"]["type"]["const"] == key

    for ref in refs(doc):
        resolve(doc, ref)  # no dangling reference anywhere
    # AsyncAPI schemas take `discriminator` as a string, never OpenAPI's object form.
    text = json.dumps(doc["components"]["schemas"])
    assert '"discriminator": {' not in text
    assert not any("$defs" in s for s in doc["components"]["schemas"].values())


# ------------------------------------------------------------------ schemas vs. real envelopes


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DOCS / "schemas" / name).read_text())
    return loaded


@functools.cache
def validator(name: str) -> jsonschema.protocols.Validator:
    doc = schema(name)
    cls = jsonschema.validators.validator_for(doc)
    cls.check_schema(doc)  # a valid draft 2020-12 schema
    return cls(doc, format_checker=cls.FORMAT_CHECKER)  # type: ignore[no-any-return]


@functools.cache
def asyncapi_payload_validator(message: str) -> jsonschema.protocols.Validator:
    """AsyncAPI's default payload format is a superset of JSON Schema draft 7."""
    doc = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    payload = {**doc["components"]["messages"][message]["payload"], "components": doc["components"]}
    jsonschema.Draft7Validator.check_schema(payload)
    return jsonschema.Draft7Validator(payload)


def envelope_of(event: BaseModel) -> EventEnvelope:
    family = str(getattr(event, "type", "")).split(".")[0]
    aggregate = family if family in ("voucher", "campaign", "global") else "wallet"
    return EventEnvelope.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "aggregate": aggregate,
            "aggregate_id": "SOME-ID",
            "occurred_at": datetime(2026, 11, 21, 12, 0, tzinfo=UTC),
            "actor": Actor(sub="u-1", role="member"),
            "command_id": "c-1",
            "event": event,
        }
    )


@pytest.mark.parametrize("model", EVENT_TYPES, ids=lambda m: m.__name__)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_the_schemas_accept_what_the_models_write(
    model: type[BaseModel], data: st.DataObject
) -> None:
    event = data.draw(st.builds(model))
    etype = str(model.model_fields["type"].default)
    wire = json.loads(encode_envelope(envelope_of(event)))
    validator(f"{etype}.json").validate(wire["event"])
    validator("envelope.json").validate(wire)
    asyncapi_payload_validator(etype).validate(wire)


def test_the_schemas_refuse_what_the_models_refuse() -> None:
    issued = schema("voucher.issued.json")
    good = {
        "type": "voucher.issued",
        "version": 3,
        "code": "LAUNCH-50",
        "credit_baisa": 5000,
        "description": "d",
        "active": True,
        "max_redemptions": 0,
        "change": "created",
    }
    jsonschema.validate(good, issued)
    for bad in (
        {**good, "version": 2},  # an older version is another schema (upcast on read)
        {**good, "version": 4},  # a newer version is another schema
        {**good, "plans": "business"},  # a list of plan ids, or null
        {**good, "credit_baisa": 1.5},  # money is integer baisa
        {**good, "surprise": 1},  # closed: a new field means a new version
        {k: v for k, v in good.items() if k != "code"},
        {k: v for k, v in good.items() if k != "type"},  # the tag is always on the wire
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, issued)
    envelope = {
        "event_id": "e",
        "aggregate": "voucher",
        "aggregate_id": "LAUNCH-50",
        "occurred_at": "2026-11-21T12:00:00Z",
        "actor": {"sub": "a", "role": "superadmin"},
        "command_id": "c",
        "event": good,
    }
    jsonschema.validate(envelope, schema("envelope.json"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {**envelope, "event": {**good, "type": "voucher.exploded"}}, schema("envelope.json")
        )


# -------------------------------------------------------------------------------- export/check


def test_export_writes_then_check_passes_and_drift_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    changes = eventdocs.export(root)
    assert len(changes) == len(EVENT_TYPES) + 3  # schemas, envelope, asyncapi, events.md
    assert eventdocs.check(root) == []
    assert eventdocs.export(root) == []  # idempotent

    (root / "schemas" / "voucher.issued.json").write_text("{}\n")
    (root / "schemas" / "voucher.exploded.json").write_text("{}\n")
    (root / "asyncapi.yaml").unlink()
    problems = eventdocs.check(root)
    assert any("voucher.issued.json differs" in p for p in problems)
    assert any("voucher.exploded.json describes no current event type" in p for p in problems)
    assert any("asyncapi.yaml is missing" in p for p in problems)
    eventdocs.export(root)
    assert eventdocs.check(root) == []
    assert not (root / "schemas" / "voucher.exploded.json").exists()


def test_events_md_keeps_its_prose_around_the_generated_block(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    md = root / "events.md"
    md.write_text(
        f"# Hand written\n\nProse.\n\n{eventdocs.BEGIN}\nstale\n{eventdocs.END}\n\nTail.\n"
    )
    eventdocs.export(root)
    text = md.read_text()
    assert text.startswith("# Hand written\n\nProse.\n\n" + eventdocs.BEGIN)
    assert text.endswith(eventdocs.END + "\nTail.\n")
    assert "stale" not in text
    assert "#### voucher.redeemed" in text
    md.write_text("no markers\n")
    assert any("no generated block" in p for p in eventdocs.check(root))


def test_schema_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "out"
    assert main(["schema", "export", str(root)]) == 0
    assert "event type(s)" in capsys.readouterr().out
    assert main(["schema", "check", str(root)]) == 0
    (root / "schemas" / "envelope.json").write_text("{}")
    assert main(["schema", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "envelope.json differs from the models" in out
    assert f"voucher-ledger schema export {root}" in out
    (root / "events.md").write_text("no markers\n")
    assert main(["schema", "export", str(root)]) == 1
    assert "no generated block" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["schema", "export", str(blocker)]) == 1
    assert "not a directory" in capsys.readouterr().err
