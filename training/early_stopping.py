"""Early stopping on validation accuracy that restores the best epoch's weights.

Keras' ``EarlyStopping(monitor="val_accuracy", patience=5, restore_best_weights=True)``, the
paper's setting: training stops after ``patience`` epochs without a strictly better value and the
model ends with the weights of the best epoch, not the last.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


class EarlyStopping:
    def __init__(self, patience: int = 5) -> None:
        self.patience = patience
        self.best_value = float("-inf")
        self.best_epoch = 0
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def step(self, value: float, epoch: int, model: torch.nn.Module) -> bool:
        """Record epoch ``epoch``'s metric; returns True when it is a new best.

        The best weights are copied to the CPU so a restore never depends on the device.
        """
        if value > self.best_value:
            self.best_value = value
            self.best_epoch = epoch
            self.bad_epochs = 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        """Load the best epoch's weights into ``model`` (no-op before the first step)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {
            "patience": self.patience,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.patience = int(state["patience"])
        self.best_value = float(state["best_value"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.best_state = copy.copy(state["best_state"])
