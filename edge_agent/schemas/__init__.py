"""JSON Schemas (draft 2020-12) of every payload the agent publishes: the executable contract.

One file per payload kind, ``<kind>.schema.json``, shipped as package data so a consumer (the
catalogue writer, a test, someone else's software) loads exactly what the agent was built
against::

    from edge_agent.schemas import load_schema
    from jsonschema import Draft202012Validator
    Draft202012Validator(load_schema("classification"), format_checker=...).validate(payload)

Each schema is self-contained (its own ``$defs``, no ``$ref`` to another file) so a consumer
in any language can use one file alone. The schemas leave unknown fields open: adding a field
is not a version change, and consumers must ignore fields they do not know. The project's
tests validate real payloads with ``unevaluatedProperties: false`` added everywhere
(:func:`closed_schema`), so a field the agent sends without a schema entry fails a test.

Adding a payload kind (wide-field frame summary, thumbnail, ...): write
``<kind>.schema.json`` here with ``"type": {"const": "<kind>"}`` and
``"schema_version": {"const": N}``; add the kind to :data:`SCHEMA_FILES` and its topic to
``edge_agent.payloads.PAYLOAD_TOPICS``; build it in one function of ``edge_agent.payloads``;
document it in docs/mqtt.md under a ``<!-- schema: <kind> -->`` marker with a field table;
capture a real one from mosquitto in tests/edge_agent/test_wire_contract.py. The contract tests
fail until all of those agree.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

from edge_agent.contract.errors import GalaxyEdgeError

#: payload kind (the ``type`` field of JSON payloads) -> schema file in this package
SCHEMA_FILES: dict[str, str] = {
    "status": "status.schema.json",
    "availability": "availability.schema.json",
    "classification": "classification.schema.json",
    "error": "error.schema.json",
    "stats": "stats.schema.json",
    "frame_summary": "frame_summary.schema.json",
}


class SchemaError(GalaxyEdgeError):
    """An unknown payload kind, or a schema file missing from the installed package."""


def schema_kinds() -> tuple[str, ...]:
    """Every payload kind that has a schema, in documentation order."""
    return tuple(SCHEMA_FILES)


def load_schema(kind: str) -> dict[str, Any]:
    """The parsed schema of ``kind`` (a fresh copy each call: callers may modify it)."""
    try:
        name = SCHEMA_FILES[kind]
    except KeyError:
        raise SchemaError(
            f"no schema for payload kind {kind!r}; known: {', '.join(SCHEMA_FILES)}"
        ) from None
    try:
        text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise SchemaError(
            f"schema file {name} is missing from the installed edge_agent package ({exc}); "
            "reinstall galaxy-edge"
        ) from exc
    schema: dict[str, Any] = json.loads(text)
    return schema


def closed_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with ``unevaluatedProperties: false`` on every object that lists properties.

    For the project's own tests: the published schemas accept unknown fields (forward
    compatibility), but the agent must not send a field its schema does not describe.
    """
    out = copy.deepcopy(schema)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node.setdefault("unevaluatedProperties", False)
            for key, value in node.items():
                if key not in ("if", "not"):  # conditions, not descriptions of the payload
                    close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(out)
    return out
