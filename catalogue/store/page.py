"""What the live page shows, read from the catalogue in one go (``Store.page_state``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PageState:
    """Everything the live page shows, read in one go."""

    devices: list[dict[str, Any]] = field(default_factory=list)
    latest: list[dict[str, Any]] = field(default_factory=list)
    histogram: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)


def stats_summary(text: str | None) -> dict[str, Any]:
    """fps and outbox depth from the last ``stats`` payload, whatever its minor layout."""
    out: dict[str, Any] = {"fps": None, "outbox_depth": None, "frames_out": None}
    if not text:
        return out
    try:
        body = json.loads(text)
    except ValueError:
        return out
    rates = body.get("rates") if isinstance(body.get("rates"), dict) else {}
    outbox = body.get("outbox") if isinstance(body.get("outbox"), dict) else {}
    frames = body.get("frames") if isinstance(body.get("frames"), dict) else {}
    out["fps"] = rates.get("fps_out", rates.get("fps_in"))
    out["outbox_depth"] = outbox.get("depth")
    out["frames_out"] = frames.get("out")
    return out
