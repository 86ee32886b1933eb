"""The learning rate follows 0.002 * 0.01 ** (step / 10000), stepped per optimizer step."""

from __future__ import annotations

import pytest
import torch

from training.schedule import exponential_decay, lr_at


def test_scheduler_equals_the_formula_per_step() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=0.002, weight_decay=0.01)
    scheduler = exponential_decay(optimizer)
    checkpoints = {0, 1, 2, 137, 5000, 10000, 15000}
    seen = {}
    for step in range(15001):
        if step in checkpoints:
            seen[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    for step, lr in seen.items():
        assert lr == pytest.approx(0.002 * 0.01 ** (step / 10000), rel=1e-9), step
    assert seen[10000] == pytest.approx(2e-5)


def test_lr_at_parameters() -> None:
    assert lr_at(0) == 0.002
    assert lr_at(500, base_lr=1.0, rate=0.5, decay_steps=1000) == pytest.approx(0.5**0.5)
