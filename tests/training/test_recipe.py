"""The recipe's hooks: with every knob off the loop is the plain one; each knob does its part."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.config import make_config
from training.recipe import Recipe


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))


def test_with_everything_off_inputs_and_loss_are_the_plain_loops() -> None:
    config = make_config({"data": "d", "out": "o", "label_smoothing": 0.1})
    model = _model()
    recipe = Recipe(config, model, torch.device("cpu"))
    batch, target = torch.rand(4, 3, 8, 8) * 2 - 1, torch.tensor([1, 2, 3, 4])
    prepared, soft = recipe.prepare(batch, target, torch.Generator().manual_seed(0), (-1.0, 1.0))
    assert prepared is batch and soft is None
    assert recipe.teach(batch) is None
    logits = model(batch)
    torch.testing.assert_close(
        recipe.loss(logits, target, soft, None),
        F.cross_entropy(logits, target, label_smoothing=0.1),
    )
    assert recipe.scored(model) is model
    assert recipe.state_dict() == {"ema": None}


def test_knobs_on_change_inputs_targets_and_the_scored_model() -> None:
    values = {
        "data": "d",
        "out": "o",
        "survey": {"p_noise": 1.0},
        "regularise": {"ema_decay": 0.5, "mixup_alpha": 1.0},
    }
    model = _model()
    recipe = Recipe(make_config(values), model, torch.device("cpu"))
    batch, target = torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    prepared, soft = recipe.prepare(batch, target, torch.Generator().manual_seed(1), (-1.0, 1.0))
    assert float((prepared - batch).abs().max()) > 0
    assert soft is not None
    torch.testing.assert_close(soft.sum(1), torch.ones(4))
    assert recipe.scored(model) is not model
    recipe.after_step(model)
    assert recipe.state_dict()["ema"]["updates"] == 1
