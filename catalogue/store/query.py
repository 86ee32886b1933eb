"""What a reader asks the catalogue for: a :class:`Query`, optionally within a :class:`Cone`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from catalogue.errors import QueryError


@dataclass(frozen=True)
class Cone:
    ra: float  # degrees
    dec: float
    radius: float  # degrees

    def __post_init__(self) -> None:
        if not (0.0 <= self.ra < 360.0 and -90.0 <= self.dec <= 90.0):
            raise QueryError(f"cone centre out of range: ra={self.ra} dec={self.dec} (degrees)")
        if not 0.0 < self.radius <= 180.0:
            raise QueryError(f"cone radius must be in (0, 180] degrees, got {self.radius}")


@dataclass(frozen=True)
class Query:
    cone: Cone | None = None
    label: str | None = None
    device: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    min_confidence: float | None = None
    limit: int | None = None
    newest_first: bool = False


def angular_separation(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Great-circle distance in degrees (haversine: exact for small separations)."""
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    h = math.sin((d2 - d1) / 2) ** 2 + math.cos(d1) * math.cos(d2) * math.sin((r2 - r1) / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(h))))
