"""The agent's payload JSON Schemas (``edge_agent.schemas``: data, not runtime), used on input.

Each schema is indexed by the payload ``type`` it describes (``properties.type.const``) and the
``schema_version`` it accepts, so schemas of two versions can serve side by side during a fleet
upgrade. A payload whose (type, version) has no schema is checked by ``catalogue.messages``
alone.

Speed: ``jsonschema`` (the reference) takes about 1 ms per classification, which capped a writer
near 500 messages/s. Where a schema uses only keywords that ``fastjsonschema`` implements (it
compiles a schema to Python), a message it accepts is accepted at once; anything it rejects,
and every message of a schema with newer keywords (``prefixItems``, ``unevaluated*``...), goes
through ``jsonschema``, whose verdict and error message are the ones that count.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import fastjsonschema
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


# Draft 2019-09 / 2020-12 keywords that fastjsonschema (drafts 4, 6, 7) would silently ignore.
_NEWER_KEYWORDS = frozenset(
    {
        "prefixItems", "unevaluatedProperties", "unevaluatedItems", "dependentRequired",
        "dependentSchemas", "$dynamicRef", "$dynamicAnchor", "$recursiveRef", "minContains",
        "maxContains", "$anchor",
    }
)  # fmt: skip


def _keywords(node: object) -> set[str]:
    if isinstance(node, dict):
        out = set(node)
        for value in node.values():
            out |= _keywords(value)
        return out
    if isinstance(node, list):
        return set().union(*(_keywords(v) for v in node)) if node else set()
    return set()


class _Checker:
    """The reference validator, and a compiled one where it checks the same keywords."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.reference = validators.validator_for(schema)(schema)
        self.fast: Any = None
        if not _keywords(schema) & _NEWER_KEYWORDS:
            self.fast = fastjsonschema.compile(schema)

    def first_error(self, body: dict[str, Any]) -> Any:
        if self.fast is not None:
            try:
                self.fast(body)
                return None
            except fastjsonschema.JsonSchemaException:
                pass  # the reference decides, and words the reason
        return next(iter(self.reference.iter_errors(body)), None)


@lru_cache(maxsize=1)
def _index() -> dict[tuple[str, int], _Checker]:
    """(payload type, schema_version) -> a checker, for every JSON object payload."""
    found: dict[tuple[str, int], _Checker] = {}
    for kind in SCHEMA_FILES:
        schema = load_schema(kind)
        props = schema.get("properties")
        if not isinstance(props, dict):
            continue  # e.g. availability: plain text, checked in catalogue.messages
        checker = _Checker(schema)
        for name in _consts(props.get("type")):
            for version in _consts(props.get("schema_version")):
                if isinstance(name, str) and isinstance(version, int):
                    found[(name, version)] = checker
    return found


def known_payload_types() -> list[tuple[str, int]]:
    """The (type, schema_version) pairs that have a schema."""
    return sorted(_index())


def validate_payload(body: dict[str, Any]) -> str | None:
    """None when ``body`` matches its schema or none is shipped for it; else the first problem."""
    version = body.get("schema_version")
    if not isinstance(version, int):
        return "schema_version is not an integer"
    checker = _index().get((str(body.get("type")), version))
    if checker is None:
        return None
    error = checker.first_error(body)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    return f"{where}: {error.message[:200]}"
