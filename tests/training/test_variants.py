"""The config values of a variant on a fold: merged overrides, own run dir, seed and teachers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.kfold import Fold
from training.variants import Variant, deep_merge, fold_values


def test_fold_values_give_each_fold_its_dir_seed_and_teachers() -> None:
    fold = Fold(1, 2, np.arange(3), np.arange(3, 4), np.arange(4, 6))
    base = {"data": "d", "seed": 5, "regularise": {"ema_decay": 0.99, "mixup_alpha": 0.2}}
    variant = Variant(
        "kd",
        {
            "regularise": {"mixup_alpha": 0.0},
            "distill": {"teachers": ["/t/{fold}", "{out}/big/{fold}"]},
        },
    )
    values = fold_values(base, variant, fold, Path("/o"))
    assert values["out"] == "/o/kd/r1f2"
    assert values["seed"] == 5 + 1000 + 2
    assert values["regularise"] == {"ema_decay": 0.99, "mixup_alpha": 0.0}  # merged, not replaced
    assert values["distill"]["teachers"] == ["/t/r1f2", "/o/big/r1f2"]
    assert deep_merge({"a": {"b": 1}}, {"a": 2}) == {"a": 2}
    # Command-line options win over the base and the variant (a full recipe file as a variant).
    recipe = Variant("full", {"epochs": 200, "image_size": 256, "preprocess": {"input_size": 256}})
    forced = fold_values(base, recipe, fold, Path("/o"), {"epochs": 3, "image_size": 64})
    assert forced["epochs"] == 3 and forced["image_size"] == 64
    assert forced["preprocess"]["input_size"] == 64
