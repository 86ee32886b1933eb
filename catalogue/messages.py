"""Incoming MQTT messages -> typed records, or a :class:`RejectedMessage` with its reason.

Pure functions, no I/O: what a topic and its bytes become in the catalogue is testable without
a broker or a database. The agent's payloads are described in docs/mqtt.md and, where the agent
ships them, by JSON Schemas (``catalogue.schemas``); a message that fails either check, or whose
``schema_version`` this writer does not know, is rejected here and stored aside by the writer,
never dropped and never fatal.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from catalogue.errors import RejectedMessage
from catalogue.schemas import validate_payload
from edge_agent.contract.classes import CLASS_NAMES, NUM_CLASSES

# Versions of the agent's payloads this writer understands. 1: probabilities as an object keyed
# by class name; 2: probabilities as a list in class-id order. Anything else is stored aside.
SUPPORTED_SCHEMA_VERSIONS = (1, 2)
# Topic kinds with a JSON body that the catalogue stores in its own tables; further kinds
# go into the generic ``messages`` table, whole (e.g. ``summaries``: one per wide field).
JSON_KINDS = ("classifications", "errors", "status", "stats")
SUMMARY_KIND = "summaries"
PLAIN_KINDS = ("available",)  # plain text "online" / "offline" (the Frigate convention)
BINARY_KINDS = ("thumbnails",)  # <prefix>/<device>/thumbnails/<classification id>: JPEG bytes
MAX_ID_LEN = 128
_EXPECTED_TYPE = {
    "classifications": "classification",
    "errors": "error",
    "status": "status",
    "stats": "stats",
    "summaries": "frame_summary",
}


@dataclass(frozen=True)
class Classification:
    device: str
    id: str
    source: str
    frame_ref: str
    received_at: datetime | None
    classified_at: datetime
    label: str
    class_id: int
    confidence: float
    uncertain: bool
    probabilities: tuple[float, ...] | None  # class-id order
    model_name: str | None
    model_sha256: str | None
    model_precision: str | None
    ra: float | None  # degrees, ICRS, for a cut-out of a wide field
    dec: float | None
    x: float | None  # pixel position in its frame
    y: float | None
    frame_id: str | None  # the wide-field frame a cut-out came from
    schema_version: int
    payload: str


@dataclass(frozen=True)
class ErrorReport:
    device: str
    id: str
    source: str
    frame_ref: str
    reason: str
    detail: str
    quarantined_to: str | None
    at: datetime | None
    payload: str


@dataclass(frozen=True)
class DeviceStatus:
    device: str
    state: str  # online | offline
    agent_version: str | None
    model: str | None  # JSON text of the model identity
    at: datetime | None
    payload: str


@dataclass(frozen=True)
class DeviceStats:
    device: str
    at: datetime | None
    payload: str


@dataclass(frozen=True)
class Thumbnail:
    device: str
    id: str
    jpeg: bytes


@dataclass(frozen=True)
class OtherMessage:
    """A JSON payload of a kind without its own table (kept whole, queryable later)."""

    device: str
    kind: str
    id: str | None
    payload: str


Record = Classification | ErrorReport | DeviceStatus | DeviceStats | Thumbnail | OtherMessage


def split_topic(topic: str, prefix: str) -> tuple[str, str, str | None]:
    """``<prefix>/<device>/<kind>[/<id>]`` -> (device, kind, id or None)."""
    prefix = prefix.strip("/")
    head = prefix + "/"
    if not topic.startswith(head):
        raise RejectedMessage(f"topic {topic!r} is not under the prefix {prefix!r}")
    parts = topic[len(head) :].split("/")
    if len(parts) == 2 and parts[0] and parts[1]:
        return parts[0], parts[1], None
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    raise RejectedMessage(f"topic {topic!r} is not <prefix>/<device>/<kind>[/<id>]")


def parse_message(topic: str, payload: bytes, prefix: str) -> Record:
    """One MQTT message -> one record; raises :class:`RejectedMessage` with the reason."""
    device, kind, sub_id = split_topic(topic, prefix)
    if kind in BINARY_KINDS:
        if sub_id is None:
            raise RejectedMessage(f"{kind} topic needs the classification id as its last level")
        _check_id(sub_id)
        if not payload.startswith(b"\xff\xd8"):
            raise RejectedMessage("thumbnail is not a JPEG (no SOI marker)")
        return Thumbnail(device, sub_id, bytes(payload))
    if sub_id is not None:
        raise RejectedMessage(f"topic {topic!r}: unexpected level after {kind!r}")
    if kind in PLAIN_KINDS:
        state = payload.decode("utf-8", "replace").strip()
        if state not in ("online", "offline"):
            raise RejectedMessage(f"availability must be 'online' or 'offline', got {state[:40]!r}")
        return DeviceStatus(device, state, None, None, None, state)
    try:
        text = payload.decode("utf-8")
        body = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RejectedMessage(f"not UTF-8 JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RejectedMessage(f"payload is a JSON {type(body).__name__}, expected an object")
    version = body.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS or isinstance(version, bool):
        raise RejectedMessage(
            f"unknown schema_version {version!r} (this writer reads "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}); upgrade galaxy-edge's catalogue"
        )
    problem = validate_payload(body)
    if problem is not None:
        raise RejectedMessage(f"does not match its schema: {problem}")
    said = body.get("device_id")
    if said is not None and said != device:
        raise RejectedMessage(
            f"device_id {str(said)[:64]!r} in the payload, {device!r} in the topic"
        )
    expected = _EXPECTED_TYPE.get(kind)
    if expected is not None and body.get("type") != expected:
        raise RejectedMessage(f"a {kind} topic carries type {str(body.get('type'))[:40]!r}")
    if kind == "classifications":
        return _classification(device, body, text)
    if kind == "errors":
        return _error(device, body, text)
    if kind == "status":
        return _status(device, body, text)
    if kind == "stats":
        return DeviceStats(device, _time(body.get("at"), "at", optional=True), text)
    raw_id = body.get("id")
    return OtherMessage(
        device, kind, str(raw_id)[:MAX_ID_LEN] if raw_id is not None else None, text
    )


def _check_id(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LEN:
        raise RejectedMessage(f"id must be a non-empty string of at most {MAX_ID_LEN} characters")
    return value


def _str(body: dict[str, Any], key: str, optional: bool = False) -> str | None:
    value = body.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise RejectedMessage(f"{key} must be a string, got {type(value).__name__}")
    return value


def _num(value: object, key: str, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RejectedMessage(f"{key} must be a finite number, got {value!r}")
    return float(value)


def _time(value: object, key: str, optional: bool = False) -> datetime | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise RejectedMessage(f"{key} must be an ISO 8601 time string, got {value!r}")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise RejectedMessage(f"{key} is not an ISO 8601 time: {value!r}") from exc
    if dt.tzinfo is None:
        raise RejectedMessage(f"{key} has no time zone: {value!r}")
    return dt.astimezone(timezone.utc)


def _probabilities(value: object) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, dict):  # schema 1: class name -> probability
        try:
            probs = [value[name] for name in CLASS_NAMES]
        except KeyError as exc:
            raise RejectedMessage(f"probabilities lacks class {exc.args[0]!r}") from exc
    elif isinstance(value, list):  # schema 2: class-id order
        probs = value
    else:
        raise RejectedMessage("probabilities must be a list or an object")
    if len(probs) != NUM_CLASSES:
        raise RejectedMessage(f"probabilities has {len(probs)} values, expected {NUM_CLASSES}")
    return tuple(float(_num(p, "probability", optional=False) or 0.0) for p in probs)


def _position(body: dict[str, Any]) -> tuple[float | None, ...]:
    """Sky (ra, dec) and pixel (x, y) of a cut-out, wherever the payload nests them."""
    found: dict[str, float | None] = {"ra": None, "dec": None, "x": None, "y": None}
    holders = [body] + [
        body[k] for k in ("sky", "position", "pixel", "cutout") if isinstance(body.get(k), dict)
    ]
    for holder in holders:
        for key in found:
            if found[key] is None and key in holder:
                found[key] = _num(holder[key], key)
    ra, dec = found["ra"], found["dec"]
    if (ra is None) != (dec is None):
        raise RejectedMessage("a sky position needs both ra and dec")
    if ra is not None and dec is not None and not (0.0 <= ra < 360.0 and -90.0 <= dec <= 90.0):
        raise RejectedMessage(f"sky position out of range: ra={ra} dec={dec}")
    return ra, dec, found["x"], found["y"]


def _classification(device: str, body: dict[str, Any], text: str) -> Classification:
    class_id = body.get("class_id")
    if (
        isinstance(class_id, bool)
        or not isinstance(class_id, int)
        or not 0 <= class_id < NUM_CLASSES
    ):
        raise RejectedMessage(f"class_id must be an integer 0-{NUM_CLASSES - 1}, got {class_id!r}")
    label = _str(body, "label") or ""
    if label != CLASS_NAMES[class_id]:
        raise RejectedMessage(f"label {label!r} is not the name of class_id {class_id}")
    confidence = _num(body.get("confidence"), "confidence", optional=False)
    assert confidence is not None
    model = body.get("model") if isinstance(body.get("model"), dict) else {}
    assert isinstance(model, dict)
    ra, dec, x, y = _position(body)
    frame_id = body.get("frame_id")
    classified = _time(body.get("classified_at"), "classified_at")
    assert classified is not None
    return Classification(
        device=device,
        id=_check_id(body.get("id")),
        source=_str(body, "source") or "",
        frame_ref=_str(body, "frame_ref") or "",
        received_at=_time(body.get("received_at"), "received_at", optional=True),
        classified_at=classified,
        label=label,
        class_id=class_id,
        confidence=confidence,
        uncertain=bool(body.get("uncertain", False)),
        probabilities=_probabilities(body.get("probabilities")),
        model_name=model.get("name") if isinstance(model.get("name"), str) else None,
        model_sha256=model.get("sha256") if isinstance(model.get("sha256"), str) else None,
        model_precision=model.get("precision") if isinstance(model.get("precision"), str) else None,
        ra=ra,
        dec=dec,
        x=x,
        y=y,
        frame_id=str(frame_id) if frame_id is not None else None,
        schema_version=int(body["schema_version"]),
        payload=text,
    )


def _error(device: str, body: dict[str, Any], text: str) -> ErrorReport:
    return ErrorReport(
        device=device,
        id=_check_id(body.get("id")),
        source=_str(body, "source") or "",
        frame_ref=_str(body, "frame_ref") or "",
        reason=_str(body, "reason") or "",
        detail=_str(body, "detail", optional=True) or "",
        quarantined_to=_str(body, "quarantined_to", optional=True),
        at=_time(body.get("at"), "at", optional=True),
        payload=text,
    )


def _status(device: str, body: dict[str, Any], text: str) -> DeviceStatus:
    state = body.get("state")
    if state not in ("online", "offline"):
        raise RejectedMessage(f"status state must be 'online' or 'offline', got {state!r}")
    model = body.get("model")
    return DeviceStatus(
        device=device,
        state=str(state),
        agent_version=_str(body, "agent_version", optional=True),
        model=json.dumps(model, sort_keys=True) if model is not None else None,
        at=_time(body.get("at"), "at", optional=True),
        payload=text,
    )
