"""Every shipped recipe file is a valid config (alone, or as a variant on the demo baseline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import make_config
from training.crossval import deep_merge

RECIPES = Path(__file__).resolve().parents[2] / "training" / "recipes"
BASELINE = RECIPES / "demo-baseline.json"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.json")), ids=lambda p: p.name)
def test_a_recipe_validates_on_the_baseline(path: Path, tmp_path: Path) -> None:
    recipe = json.loads(path.read_text(encoding="utf-8"))
    base = json.loads(BASELINE.read_text(encoding="utf-8"))
    values = deep_merge(base, recipe) | {"data": str(tmp_path), "out": str(tmp_path / "run")}
    config = make_config(values, path.name)
    for block in ("survey", "regularise", "augment"):
        for key, value in recipe.get(block, {}).items():
            assert getattr(getattr(config, block), key) == value, f"{path.name}: {block}.{key}"


def test_the_survey_variant_is_the_fine_tune_recipes_augmentation() -> None:
    """The knob crossval judged (survey.json) is the one the demo fine-tune ships."""
    survey = json.loads((RECIPES / "survey.json").read_text(encoding="utf-8"))
    fine_tune = json.loads((RECIPES / "demo-finetune-survey.json").read_text(encoding="utf-8"))
    assert survey["survey"] == fine_tune["survey"]
    assert survey["augment"] == fine_tune["augment"]
    assert "pretrained" not in fine_tune  # given on the command line: the weights it starts from
