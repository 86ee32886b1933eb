"""The ``stats`` payload: the agent's periodic health report (docs/mqtt.md, ``stats``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from edge_agent.payload_values import (
    SCHEMA_VERSION,
    PayloadError,
    Timestamp,
    checked_device_id,
    durations_ms,
    iso_utc,
)


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
        "device_id": checked_device_id(device_id),
        "at": iso_utc(at),
        "uptime_s": round(float(uptime_s), 3),
        "interval_s": round(seconds, 3),
        "frames": _counts(*frames),
        "interval_frames": _counts(*interval_frames),
        "rates": {"fps_in": round(n_in * per_s, 3), "fps_out": round(n_out * per_s, 3)},
        "latency_ms": {str(stage): durations_ms(pcts) for stage, pcts in latency_ms.items()},
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
