"""The paper's learning-rate schedule: ``lr = base * rate ** (step / decay_steps)``.

Keras' ExponentialDecay without staircase, stepped once per optimizer step (not per epoch), so
the default ``0.002 * 0.01 ** (step / 10000)`` falls a hundredfold over 10,000 steps.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_at(step: int, base_lr: float = 0.002, rate: float = 0.01, decay_steps: int = 10000) -> float:
    """The learning rate the optimizer uses for optimizer step ``step`` (0-based)."""
    return base_lr * rate ** (step / decay_steps)


def exponential_decay(
    optimizer: torch.optim.Optimizer, rate: float = 0.01, decay_steps: int = 10000
) -> LambdaLR:
    """A scheduler to ``step()`` after every ``optimizer.step()``; base lr from the optimizer."""
    return LambdaLR(optimizer, lambda step: rate ** (step / decay_steps))
