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
from datetime import datetime, timezone
from typing import Any, Literal

from edge_agent.contract.classes import CLASS_NAMES, NUM_CLASSES, class_name
from edge_agent.contract.decode import Reason as DecodeReason
from edge_agent.contract.errors import GalaxyEdgeError
from edge_agent.results import Classification

#: Version 2 (2026-12-01): probabilities as a list in class-id order; device_id in every
#: payload and in the ids; stats rates and percentiles per interval; the plain ``available``
#: topic. See docs/mqtt.md, "Versioning".
SCHEMA_VERSION = 2

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
_MS_DECIMALS = 3

Timestamp = datetime | float  # aware datetime, or Unix seconds


class PayloadError(GalaxyEdgeError):
    """A value that cannot go into a published payload or topic."""


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


def _probabilities(probabilities: Any) -> list[float]:
    values = [float(p) for p in probabilities]
    if len(values) != NUM_CLASSES:
        raise PayloadError(f"expected {NUM_CLASSES} class probabilities, got {len(values)}")
    for name, p in zip(CLASS_NAMES, values, strict=True):
        if not math.isfinite(p) or p < 0.0 or p > 1.0 + 1e-6:
            raise PayloadError(f"probability of {name!r} is {p}, outside [0, 1]")
    return [min(round(p, _PROB_DECIMALS), 1.0) for p in values]


def _ms(latency_ms: Mapping[str, float]) -> dict[str, float]:
    out = {}
    for stage, value in latency_ms.items():
        v = float(value)
        if not math.isfinite(v) or v < 0:
            raise PayloadError(f"latency of stage {stage!r} is {value}, not a duration in ms")
        out[str(stage)] = round(v, _MS_DECIMALS)
    return out


def _device(device_id: str) -> str:
    if not device_id or any(c in device_id for c in "/#+\0"):
        raise PayloadError(f"device_id {device_id!r} must be non-empty, without / + # or NUL")
    return device_id


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
        "device_id": _device(device_id),
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
        "latency_ms": _ms(latency_ms),
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
        "device_id": _device(device_id),
        "id": stable_id(device_id, source, frame_ref, "frame_summary"),
        "source": source,
        "frame_ref": frame_ref,
        "received_at": iso_utc(received_at),
        "at": iso_utc(at),
        **body,
        "timings_ms": _ms(timings),
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
        "device_id": _device(device_id),
        "id": error_id(device_id, source, frame_ref, reason),
        "source": source,
        "frame_ref": frame_ref,
        "reason": reason,
        "detail": detail,
        "quarantined_to": quarantined_to,
        "at": iso_utc(at),
    }


def _counts(frames_in: int, frames_out: int, errors: int) -> dict[str, int]:
    return {"in": int(frames_in), "out": int(frames_out), "errors": int(errors)}


def _source_health(health: Mapping[str, Any]) -> dict[str, Any]:
    """A source's health with its times in the payloads' one timestamp format."""
    out = dict(health)
    since = out.get("problem_since")
    out["problem_since"] = iso_utc(since) if since is not None else None
    return out


def _with_times(health: Mapping[str, Any] | None, *time_keys: str) -> dict[str, Any]:
    """A health mapping with its Unix times in the payloads' one timestamp format."""
    out = dict(health or {})
    for key in time_keys:
        if key in out:
            out[key] = iso_utc(out[key]) if out[key] is not None else None
    return out


def stats_payload(
    *,
    device_id: str,
    at: Timestamp,
    uptime_s: float,
    interval_s: float,
    frames: tuple[int, int, int],
    interval_frames: tuple[int, int, int],
    latency_ms: Mapping[str, Mapping[str, float]],
    queue_depth: int,
    frames_dropped: Mapping[str, int],
    outbox_depth: int,
    outbox_bytes: int,
    outbox_dropped: Mapping[str, int],
    mqtt: Mapping[str, int],
    sources: Mapping[str, Mapping[str, Any]] | None = None,
    outbox_health: Mapping[str, Any] | None = None,
    mqtt_health: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Periodic health report for the ``stats`` topic (QoS 0: the next one replaces it).

    ``frames`` and ``interval_frames`` are (in, out, errors): totals since the agent started,
    and counts within the ``interval_s`` seconds since the previous report. The rates are
    ``interval_frames / interval_s``; ``latency_ms`` maps a stage to percentiles over the
    interval's frames, e.g. ``{"infer": {"p50": 3.1, "p99": 9.0, "max": 9.4}}``.
    ``frames_dropped`` counts frames a live source dropped, by source, since start;
    ``outbox_dropped`` what the outbox limits dropped since the outbox file was created;
    ``mqtt`` the publisher's counters since start; ``sources`` the health of the sources that
    report one (a camera: connected, last error and since when), by source name.
    ``outbox_health`` (``full``, ``full_since``, ``error``, ``acked_unremoved``) and
    ``mqtt_health`` (``connected``, ``since``, ``last_error``, ``failed_attempts``,
    ``refused_topics``) join the ``outbox`` and ``mqtt`` objects; times are Unix seconds.
    """
    seconds = float(interval_s)
    if not math.isfinite(seconds) or seconds < 0:
        raise PayloadError(f"interval_s is {interval_s}, not a duration")
    n_in, n_out, _ = interval_frames
    per_s = 1.0 / seconds if seconds > 0 else 0.0
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "stats",
        "device_id": _device(device_id),
        "at": iso_utc(at),
        "uptime_s": round(float(uptime_s), 3),
        "interval_s": round(seconds, 3),
        "frames": _counts(*frames),
        "interval_frames": _counts(*interval_frames),
        "rates": {"fps_in": round(n_in * per_s, 3), "fps_out": round(n_out * per_s, 3)},
        "latency_ms": {str(stage): _ms(pcts) for stage, pcts in latency_ms.items()},
        "queue_depth": int(queue_depth),
        "frames_dropped": {str(k): int(v) for k, v in frames_dropped.items()},
        "outbox": {
            "depth": int(outbox_depth),
            "bytes": int(outbox_bytes),
            "dropped": {str(k): int(v) for k, v in outbox_dropped.items()},
            **_with_times(outbox_health, "full_since"),
        },
        "mqtt": {**{str(k): int(v) for k, v in mqtt.items()}, **_with_times(mqtt_health, "since")},
        "sources": {str(k): _source_health(v) for k, v in (sources or {}).items()},
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
        "device_id": _device(device_id),
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
