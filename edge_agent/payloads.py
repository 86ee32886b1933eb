"""The MQTT contract: topic names and the payloads published on them (docs/mqtt.md).

Pure functions, no I/O, so the exact bytes a consumer receives can be tested without a broker.
Other people's software parses these payloads, and every one has a JSON Schema in
``edge_agent/schemas`` that the tests check real payloads against: add fields freely (with a
schema entry), but renaming or removing one, or changing its meaning or type, needs a
``SCHEMA_VERSION`` bump, the schemas' ``schema_version`` const, and a note in docs/mqtt.md.
Every builder takes keyword arguments only.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from edge_agent.contract.classes import CLASS_NAMES, NUM_CLASSES, class_name
from edge_agent.contract.decode import Reason as DecodeReason
from edge_agent.payload_stats import stats_payload

# SCHEMA_VERSION and the shared pieces live in payload_values (stats_payload needs them too);
# this module is the contract's one entry point, and names them all.
from edge_agent.payload_values import (
    SCHEMA_VERSION,
    PayloadError,
    Timestamp,
    checked_device_id,
    durations_ms,
    iso_utc,
)
from edge_agent.results import Classification

__all__ = [
    "ERROR_REASONS",
    "PAYLOAD_TOPICS",
    "SCHEMA_VERSION",
    "STATUS_STATES",
    "THUMBNAIL_TOPIC",
    "TOPIC_NAMES",
    "ErrorReason",
    "ModelRef",
    "PayloadError",
    "Timestamp",
    "availability_payload",
    "classification_id",
    "classification_payload",
    "cutout_id",
    "error_id",
    "error_payload",
    "frame_summary_payload",
    "iso_utc",
    "stable_id",
    "stats_payload",
    "status_payload",
    "thumbnail_topic",
    "to_bytes",
    "topic",
]

#: payload kind (its ``type`` field; its schema in edge_agent/schemas) -> topic name
PAYLOAD_TOPICS: dict[str, str] = {
    "status": "status",
    "availability": "available",
    "classification": "classifications",
    "error": "errors",
    "stats": "stats",
    "frame_summary": "summaries",
}
#: binary JPEGs (mqtt.thumbnails): ``<prefix>/<device_id>/thumbnails/<classification id>``
THUMBNAIL_TOPIC = "thumbnails"
#: every topic under ``<prefix>/<device_id>/``; ``frames`` is an input (encoded images)
TOPIC_NAMES = (*PAYLOAD_TOPICS.values(), "frames", THUMBNAIL_TOPIC)
STATUS_STATES = ("online", "offline")

#: Why an input was rejected: the ``reason`` of an ``errors`` payload. The ONE list of them:
#: the error schema's enum and docs/mqtt.md are checked against it; add a new reason here.
#: The decoder's own (``corrupt``, ``truncated``, ``oversized``, ``wrong_type``,
#: ``unsupported``), then the sources' and the pipeline's.
ErrorReason = Literal[
    DecodeReason,
    "not_regular_file",
    "poison",
    "decode_failed",
    "source_unavailable",
    "source_error",
    # A wide field processed as far as it could be (edge_agent.fields): no quarantine.
    "no_data",
    "too_many_sources",
    "detection_failed",
    "nan_pixels",
    "no_wcs",
    "bad_wcs",
]
ERROR_REASONS: tuple[str, ...] = typing.get_args(ErrorReason)

# Six decimals keep payloads short and are far below any model's calibration error.
_PROB_DECIMALS = 6


@dataclass(frozen=True)
class ModelRef:
    """Which model produced a result: what a classification carries in ``model``."""

    name: str
    sha256: str
    precision: str

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256, "precision": self.precision}


def topic(prefix: str, device_id: str, name: str) -> str:
    """``<prefix>/<device_id>/<name>``; rejects wildcards and extra levels in the parts."""
    if name not in TOPIC_NAMES:
        raise PayloadError(f"unknown topic name {name!r}; expected one of {', '.join(TOPIC_NAMES)}")
    prefix = prefix.strip("/")
    if not prefix or any(c in prefix for c in "#+\0"):
        raise PayloadError(f"mqtt.topic_prefix {prefix!r} must be non-empty without + # or NUL")
    if not device_id or any(c in device_id for c in "/#+\0"):
        raise PayloadError(
            f"device_id {device_id!r} must be non-empty and contain no / + # or NUL "
            "(it is one topic level)"
        )
    return f"{prefix}/{device_id}/{name}"


def thumbnail_topic(prefix: str, device_id: str, classification_id: str) -> str:
    """``<prefix>/<device_id>/thumbnails/<id>``: the JPEG of classification ``id``."""
    if not classification_id or any(c in classification_id for c in "/#+\0"):
        raise PayloadError(f"classification id {classification_id!r} is not one topic level")
    return f"{topic(prefix, device_id, THUMBNAIL_TOPIC)}/{classification_id}"


def stable_id(*parts: str) -> str:
    """First 32 hex digits of sha256 over the parts joined by ``|`` (the dedup key)."""
    return hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()[:32]


def classification_id(device_id: str, source: str, frame_ref: str, model_sha256: str) -> str:
    """Same device, image and model: same id, so a replayed result deduplicates.

    The device is part of it so that an id is unique across a fleet on its own: two devices
    receiving the same frame bytes over MQTT give the same ``frame_ref``.
    """
    return stable_id(device_id, source, frame_ref, model_sha256)


def error_id(device_id: str, source: str, frame_ref: str, reason: str) -> str:
    """Same device, input and reason: same id."""
    return stable_id(device_id, source, frame_ref, "error", reason)


def _class_id(value: object) -> int:
    try:
        cid = operator.index(value)  # type: ignore[arg-type]  # numpy ints have __index__
    except TypeError as exc:
        raise PayloadError(f"class_id {value!r} is not an integer") from exc
    class_name(cid)  # raises UnknownClassError outside 0..9
    return cid


def _probabilities(probabilities: Any) -> list[float]:
    values = [float(p) for p in probabilities]
    if len(values) != NUM_CLASSES:
        raise PayloadError(f"expected {NUM_CLASSES} class probabilities, got {len(values)}")
    for name, p in zip(CLASS_NAMES, values, strict=True):
        if not math.isfinite(p) or p < 0.0 or p > 1.0 + 1e-6:
            raise PayloadError(f"probability of {name!r} is {p}, outside [0, 1]")
    return [min(round(p, _PROB_DECIMALS), 1.0) for p in values]


def classification_payload(
    *,
    device_id: str,
    source: str,
    frame_ref: str,
    received_at: Timestamp,
    classified_at: Timestamp,
    result: Classification,
    model: ModelRef,
    latency_ms: Mapping[str, float],
    metadata: Mapping[str, str] | None = None,
    cutout: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One classified image or cut-out, for the ``classifications`` topic.

    ``cutout`` is a wide-field galaxy's place (:meth:`edge_agent.fields.process.Cutout.position`:
    source index, pixel position, size, sky position); its index goes into the ``id``.

    ``result`` holds the softmax outputs in official class-id order, the reported class and
    the ranked ``top_k`` (:func:`edge_agent.results.classify`); ``frame_ref`` names the frame
    within ``source`` (see docs/mqtt.md); ``metadata`` is what a receiver sent with the frame.
    """
    cid = _class_id(result.class_id)
    probs = _probabilities(result.probabilities)
    ranked = [_class_id(entry[0]) for entry in result.top_k]
    if not 1 <= len(ranked) <= NUM_CLASSES:
        raise PayloadError(f"top_k must list 1..{NUM_CLASSES} classes, got {len(ranked)}")
    payload: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "type": "classification",
        "device_id": checked_device_id(device_id),
        "id": classification_id(device_id, source, frame_ref, model.sha256)
        if cutout is None
        else cutout_id(device_id, source, frame_ref, model.sha256, int(cutout["index"])),
        "source": source,
        "frame_ref": frame_ref,
        "received_at": iso_utc(received_at),
        "classified_at": iso_utc(classified_at),
        "label": CLASS_NAMES[cid],
        "class_id": cid,
        "confidence": probs[cid],
        "probabilities": probs,
        "top_k": [
            {"class_id": i, "label": CLASS_NAMES[i], "probability": probs[i]} for i in ranked
        ],
        "uncertain": bool(result.uncertain),
        "calibrated": bool(result.calibrated),
        "model": model.as_json(),
        "latency_ms": durations_ms(latency_ms),
    }
    if metadata:
        payload["metadata"] = {str(k): str(v) for k, v in metadata.items()}
    if cutout is not None:
        payload["cutout"] = dict(cutout)
    return payload


def cutout_id(device_id: str, source: str, frame_ref: str, model_sha256: str, index: int) -> str:
    """A wide-field galaxy's classification id: the frame's, plus the source's index."""
    return stable_id(device_id, source, frame_ref, model_sha256, f"cutout:{index}")


def frame_summary_payload(
    *,
    device_id: str,
    source: str,
    frame_ref: str,
    received_at: Timestamp,
    at: Timestamp,
    summary: Mapping[str, Any],
    problems: list[tuple[str, str]],
) -> dict[str, Any]:
    """What a wide field held, for the ``summaries`` topic: one per frame, even without galaxies.

    ``summary`` is :attr:`edge_agent.fields.process.FieldOutcome.summary` (sources found, kept,
    rejected by filter, PSF, sky, time per stage); ``problems`` the (reason, detail) pairs that
    also went to ``errors``.
    """
    body = dict(summary)
    timings = body.pop("timings_ms", {})
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "frame_summary",
        "device_id": checked_device_id(device_id),
        "id": stable_id(device_id, source, frame_ref, "frame_summary"),
        "source": source,
        "frame_ref": frame_ref,
        "received_at": iso_utc(received_at),
        "at": iso_utc(at),
        **body,
        "timings_ms": durations_ms(timings),
        "problems": [{"reason": r, "detail": d} for r, d in problems],
    }


def error_payload(
    *,
    device_id: str,
    source: str,
    frame_ref: str,
    reason: str,
    detail: str,
    quarantined_to: str | None,
    at: Timestamp,
) -> dict[str, Any]:
    """One rejected input, for the ``errors`` topic.

    ``reason`` is one of :data:`ERROR_REASONS`; ``detail`` the human-readable one-liner;
    ``quarantined_to`` where the input was moved, or None when it could not be quarantined.
    """
    if reason not in ERROR_REASONS:
        raise PayloadError(
            f"error reason {reason!r} is not one of {', '.join(ERROR_REASONS)}; "
            "add it to edge_agent.payloads.ErrorReason, the error schema and docs/mqtt.md"
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "error",
        "device_id": checked_device_id(device_id),
        "id": error_id(device_id, source, frame_ref, reason),
        "source": source,
        "frame_ref": frame_ref,
        "reason": reason,
        "detail": detail,
        "quarantined_to": quarantined_to,
        "at": iso_utc(at),
    }


def status_payload(
    *,
    state: str,
    device_id: str,
    agent_version: str,
    model: Mapping[str, Any] | None,
    at: Timestamp | None = None,
) -> dict[str, Any]:
    """Retained ``status``: ``online`` (birth, after each connect) or ``offline`` (will, stop).

    ``model`` is the loaded bundle's identity (name, sha256, precision, backend, input_size),
    or None before a bundle is loaded; ``classes`` names the classes by id, so a consumer can
    read ``probabilities`` without a built-in class list. ``at`` goes with ``online`` only: the
    broker sends a will later than it was written, so a timestamp there would lie.
    """
    if state not in STATUS_STATES:
        raise PayloadError(f"status state must be one of {STATUS_STATES}, got {state!r}")
    if (state == "online") != (at is not None):
        raise PayloadError("an online status needs its time 'at'; an offline one has none")
    payload: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "type": "status",
        "device_id": checked_device_id(device_id),
        "state": state,
        "agent_version": agent_version,
        "model": dict(model) if model is not None else None,
        "classes": list(CLASS_NAMES),
    }
    if at is not None:
        payload["at"] = iso_utc(at)
    return payload


def availability_payload(state: str) -> bytes:
    """The plain ``online`` / ``offline`` of the ``available`` topic: UTF-8 text, not JSON."""
    if state not in STATUS_STATES:
        raise PayloadError(f"availability must be one of {STATUS_STATES}, got {state!r}")
    return state.encode("utf-8")


def to_bytes(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON with sorted keys: the same dict always gives the same bytes."""
    try:
        text = json.dumps(
            payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"payload is not JSON-serialisable: {exc}") from exc
    # A lone surrogate (a file name that is not UTF-8, quoted in a detail line) must not make a
    # payload unsendable: it goes out as its escape, the same text JSON's \u form would give.
    return text.encode("utf-8", "backslashreplace")
