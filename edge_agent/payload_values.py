"""What every MQTT payload is made of: the schema version, timestamps, durations, the device.

The pieces :mod:`edge_agent.payloads` and :mod:`edge_agent.payload_stats` share; import them
from :mod:`edge_agent.payloads`, the contract's one entry point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone

from edge_agent.contract.errors import GalaxyEdgeError

#: Version 2 (2026-12-01): probabilities as a list in class-id order; device_id in every
#: payload and in the ids; stats rates and percentiles per interval; the plain ``available``
#: topic. See docs/mqtt.md, "Versioning".
SCHEMA_VERSION = 2

_MS_DECIMALS = 3

Timestamp = datetime | float  # aware datetime, or Unix seconds


class PayloadError(GalaxyEdgeError):
    """A value that cannot go into a published payload or topic."""


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


def durations_ms(latency_ms: Mapping[str, float]) -> dict[str, float]:
    """Stage -> milliseconds, rounded; a negative or non-finite one is a :class:`PayloadError`."""
    out = {}
    for stage, value in latency_ms.items():
        v = float(value)
        if not math.isfinite(v) or v < 0:
            raise PayloadError(f"latency of stage {stage!r} is {value}, not a duration in ms")
        out[str(stage)] = round(v, _MS_DECIMALS)
    return out


def checked_device_id(device_id: str) -> str:
    """``device_id`` as it goes into a payload: one topic level, never empty."""
    if not device_id or any(c in device_id for c in "/#+\0"):
        raise PayloadError(f"device_id {device_id!r} must be non-empty, without / + # or NUL")
    return device_id
