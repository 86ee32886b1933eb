"""What the training config models share: the strict base and the shapes of bounded fields.

Torch-free, as :mod:`training.config` and :mod:`training.recipe_config`, which build on it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StrictConfig(BaseModel):
    """Unknown keys are errors, values are not coerced, assignments are validated."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


def chance(description: str, default: float = 0.0) -> Any:
    """A probability: a float in [0, 1], off (0) unless given another default."""
    return Field(default=default, ge=0.0, le=1.0, description=description)


def up_to(default: float, most: float, description: str) -> Any:
    """A non-negative float no larger than ``most`` (a strength, a share or a weight)."""
    return Field(default=default, ge=0.0, le=most, description=description)
