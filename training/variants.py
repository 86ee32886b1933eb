"""The configs a comparison trains: the base config, each variant's overrides and the options
forced by the command line, merged into the config values of one variant on one fold."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.kfold import Fold

BASELINE = "base"


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, Any]


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; nested dicts (survey, regularise, ...) merge key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def variant_values(
    base: dict[str, Any], variant: Variant, forced: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The base with the variant's overrides, then ``forced`` (the command line's options, which
    win over the base and every variant)."""
    values = deep_merge(deep_merge(base, variant.overrides), forced or {})
    if forced and "image_size" in forced and isinstance(values.get("preprocess"), dict):
        values["preprocess"] = {**values["preprocess"], "input_size": forced["image_size"]}
    return values


def fold_values(
    base: dict[str, Any],
    variant: Variant,
    fold: Fold,
    out: Path,
    forced: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The config values of one variant on one fold: its own run directory and init seed, and
    '{fold}' and '{out}' in teacher paths replaced by the fold's name and ``out``, so a variant
    distils from an earlier variant's run on the same fold (which never saw its test part)."""
    values = variant_values(base, variant, forced)
    values["out"] = str(out / variant.name / fold.name)
    values["seed"] = int(values.get("seed", 42)) + 1000 * fold.repeat + fold.index
    distill = values.get("distill")
    if isinstance(distill, dict) and distill.get("teachers"):
        distill = dict(distill)
        distill["teachers"] = [
            str(t).replace("{fold}", fold.name).replace("{out}", str(out))
            for t in distill["teachers"]
        ]
        values["distill"] = distill
    return values
