"""The agent's payload JSON Schemas (``edge_agent.schemas``: data, not runtime), used on input.

Each schema is indexed by the payload ``type`` it describes (``properties.type.const``) and the
``schema_version`` it accepts, so schemas of two versions can serve side by side during a fleet
upgrade. A payload whose (type, version) has no schema is checked by ``catalogue.messages``
alone.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jsonschema import validators

from edge_agent.schemas import SCHEMA_FILES, load_schema


def _consts(prop: object) -> list[Any]:
    if not isinstance(prop, dict):
        return []
    if "const" in prop:
        return [prop["const"]]
    if isinstance(prop.get("enum"), list):
        return list(prop["enum"])
    return []


@lru_cache(maxsize=1)
def _index() -> dict[tuple[str, int], Any]:
    """(payload type, schema_version) -> a validator, for every JSON object payload."""
    found: dict[tuple[str, int], Any] = {}
    for kind in SCHEMA_FILES:
        schema = load_schema(kind)
        props = schema.get("properties")
        if not isinstance(props, dict):
            continue  # e.g. availability: plain text, checked in catalogue.messages
        validator = validators.validator_for(schema)(schema)
        for name in _consts(props.get("type")):
            for version in _consts(props.get("schema_version")):
                if isinstance(name, str) and isinstance(version, int):
                    found[(name, version)] = validator
    return found


def known_payload_types() -> list[tuple[str, int]]:
    """The (type, schema_version) pairs that have a schema."""
    return sorted(_index())


def validate_payload(body: dict[str, Any]) -> str | None:
    """None when ``body`` matches its schema or none is shipped for it; else the first problem."""
    version = body.get("schema_version")
    if not isinstance(version, int):
        return "schema_version is not an integer"
    validator = _index().get((str(body.get("type")), version))
    if validator is None:
        return None
    error = next(iter(validator.iter_errors(body)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    return f"{where}: {error.message[:200]}"
