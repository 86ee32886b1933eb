"""The MQTT contract: topic names and the JSON bodies published on them (docs/mqtt.md).

Pure functions, no I/O, so the exact bytes a consumer receives can be tested without a broker.
Other people's software parses these payloads: add fields freely, but renaming or removing
one, or changing its meaning, needs a ``SCHEMA_VERSION`` bump and a note in docs/mqtt.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from edge_agent.contract.classes import CLASS_NAMES, NUM_CLASSES, class_name
from edge_agent.contract.errors import GalaxyEdgeError

SCHEMA_VERSION = 1
TOPIC_NAMES = ("status", "classifications", "errors", "stats", "frames")
STATUS_STATES = ("online", "offline")
# Six decimals keep payloads short and are far below any model's calibration error.
_PROB_DECIMALS = 6
_MS_DECIMALS = 3

Timestamp = datetime | float  # aware datetime, or Unix seconds


class PayloadError(GalaxyEdgeError):
    """A value that cannot go into a published payload or topic."""


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


def stable_id(*parts: str) -> str:
    """First 32 hex digits of sha256 over the parts joined by ``|`` (the dedup key)."""
    return hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()[:32]


def classification_id(source: str, frame_ref: str, model_sha256: str) -> str:
    """Same image, same model: same id, so a replayed or re-classified result deduplicates."""
    return stable_id(source, frame_ref, model_sha256)


def iso_utc(ts: Timestamp) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z``, e.g. ``2026-11-26T08:04:13.123Z``."""
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            raise PayloadError(f"timestamp {ts!r} has no time zone; pass an aware datetime")
        dt = ts.astimezone(timezone.utc)
    else:
        value = float(ts)
        if not math.isfinite(value):
            raise PayloadError(f"timestamp {ts!r} is not a finite number of seconds")
        dt = datetime.fromtimestamp(value, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _class_id(value: object) -> int:
    try:
        cid = operator.index(value)  # type: ignore[arg-type]  # numpy ints have __index__
    except TypeError as exc:
        raise PayloadError(f"class_id {value!r} is not an integer") from exc
    class_name(cid)  # raises UnknownClassError outside 0..9
    return cid


def _probabilities(probabilities: Sequence[float] | Any) -> list[float]:
    values = [float(p) for p in probabilities]
    if len(values) != NUM_CLASSES:
        raise PayloadError(f"expected {NUM_CLASSES} class probabilities, got {len(values)}")
    for name, p in zip(CLASS_NAMES, values, strict=True):
        if not math.isfinite(p) or p < 0.0 or p > 1.0 + 1e-6:
            raise PayloadError(f"probability of {name!r} is {p}, outside [0, 1]")
    return values


def _ms(latency_ms: Mapping[str, float]) -> dict[str, float]:
    out = {}
    for stage, value in latency_ms.items():
        v = float(value)
        if not math.isfinite(v) or v < 0:
            raise PayloadError(f"latency of stage {stage!r} is {value}, not a duration in ms")
        out[str(stage)] = round(v, _MS_DECIMALS)
    return out


def classification_payload(
    source: str,
    frame_ref: str,
    received_at: Timestamp,
    classified_at: Timestamp,
    class_id: int,
    probabilities: Sequence[float] | Any,
    model_name: str,
    model_sha256: str,
    precision: str,
    latency_ms: Mapping[str, float],
    uncertain: bool,
    top_k: int = 3,
) -> dict[str, Any]:
    """One classified image or cut-out, for the ``classifications`` topic.

    ``probabilities`` are the softmax outputs in official class-id order (10 values);
    ``class_id`` is the reported class (normally their argmax); ``top_k`` how many of the
    most probable classes to list. ``frame_ref`` names the frame within ``source`` (a file
    name, a frame counter, a receiver's frame id).
    """
    cid = _class_id(class_id)
    probs = _probabilities(probabilities)
    if not 1 <= top_k <= NUM_CLASSES:
        raise PayloadError(f"top_k must be within 1..{NUM_CLASSES}, got {top_k}")
    ranked = sorted(range(NUM_CLASSES), key=lambda i: (-probs[i], i))[:top_k]
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "classification",
        "id": classification_id(source, frame_ref, model_sha256),
        "source": source,
        "frame_ref": frame_ref,
        "received_at": iso_utc(received_at),
        "classified_at": iso_utc(classified_at),
        "label": CLASS_NAMES[cid],
        "class_id": cid,
        "confidence": round(probs[cid], _PROB_DECIMALS),
        "probabilities": {
            name: round(p, _PROB_DECIMALS) for name, p in zip(CLASS_NAMES, probs, strict=True)
        },
        "top_k": [
            {"label": CLASS_NAMES[i], "class_id": i, "probability": round(probs[i], _PROB_DECIMALS)}
            for i in ranked
        ],
        "uncertain": bool(uncertain),
        "model": {"name": model_name, "sha256": model_sha256, "precision": precision},
        "latency_ms": _ms(latency_ms),
    }


def error_payload(
    source: str,
    frame_ref: str,
    reason: str,
    detail: str,
    quarantined_to: str | None,
    at: Timestamp | None = None,
) -> dict[str, Any]:
    """One rejected input, for the ``errors`` topic.

    ``reason`` is a short machine-readable word (``corrupt``, ``truncated``, ``oversized``,
    ``unsupported``, ...); ``detail`` the human-readable one-liner; ``quarantined_to`` where the
    file was moved, or None when there is no file (a camera frame, an MQTT frame).
    """
    if not reason:
        raise PayloadError("an error payload needs a non-empty reason")
    payload: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "type": "error",
        "id": stable_id(source, frame_ref, "error", reason),
        "source": source,
        "frame_ref": frame_ref,
        "reason": reason,
        "detail": detail,
        "quarantined_to": quarantined_to,
    }
    if at is not None:
        payload["at"] = iso_utc(at)
    return payload


def stats_payload(
    *,
    at: Timestamp,
    uptime_s: float,
    frames_in: int,
    frames_out: int,
    errors: int,
    fps_in: float,
    fps_out: float,
    latency_ms: Mapping[str, Mapping[str, float]],
    queue_depth: int,
    frames_dropped: Mapping[str, int],
    outbox_depth: int,
    outbox_bytes: int,
    outbox_dropped: Mapping[str, int],
    mqtt: Mapping[str, int],
) -> dict[str, Any]:
    """Periodic health report for the ``stats`` topic (QoS 0: the next one replaces it).

    Counters are totals since the agent started (``outbox_dropped`` since the outbox file was
    created); ``latency_ms`` maps a stage to percentiles, e.g. ``{"infer": {"p50": 3.1,
    "p99": 9.0}}``; ``frames_dropped`` counts frames a live source dropped, by source;
    ``mqtt`` holds the publisher's counters (published, acked, resent, rejected).
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "stats",
        "at": iso_utc(at),
        "uptime_s": round(float(uptime_s), 3),
        "frames": {"in": int(frames_in), "out": int(frames_out), "errors": int(errors)},
        "rates": {"fps_in": round(float(fps_in), 3), "fps_out": round(float(fps_out), 3)},
        "latency_ms": {str(stage): _ms(pcts) for stage, pcts in latency_ms.items()},
        "queue_depth": int(queue_depth),
        "frames_dropped": {str(k): int(v) for k, v in frames_dropped.items()},
        "outbox": {
            "depth": int(outbox_depth),
            "bytes": int(outbox_bytes),
            "dropped": {str(k): int(v) for k, v in outbox_dropped.items()},
        },
        "mqtt": {str(k): int(v) for k, v in mqtt.items()},
    }


def status_payload(
    state: str,
    model: Mapping[str, Any] | None,
    agent_version: str,
    device_id: str | None = None,
    at: Timestamp | None = None,
) -> dict[str, Any]:
    """Retained ``status``: ``online`` (birth, after each connect) or ``offline`` (will, stop).

    ``model`` is the loaded bundle's identity (name, sha256, precision, backend, ...), or None
    before a bundle is loaded. ``at`` is omitted from the last will: the broker sends it later
    than it was written, so a timestamp there would lie.
    """
    if state not in STATUS_STATES:
        raise PayloadError(f"status state must be one of {STATUS_STATES}, got {state!r}")
    payload: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "type": "status",
        "state": state,
        "agent_version": agent_version,
        "model": dict(model) if model is not None else None,
    }
    if device_id is not None:
        payload["device_id"] = device_id
    if at is not None:
        payload["at"] = iso_utc(at)
    return payload


def to_bytes(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON with sorted keys: the same dict always gives the same bytes."""
    try:
        text = json.dumps(
            payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"payload is not JSON-serialisable: {exc}") from exc
    return text.encode("utf-8")
