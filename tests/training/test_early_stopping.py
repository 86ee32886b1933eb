"""Early stopping on val accuracy, patience 5, restoring the best epoch's weights."""

from __future__ import annotations

import torch

from training.early_stopping import EarlyStopping


def test_stops_after_patience_and_restores_best_epoch() -> None:
    model = torch.nn.Linear(3, 2)
    stopper = EarlyStopping(patience=5)
    values = [0.40, 0.55, 0.71, 0.70, 0.71, 0.65, 0.69, 0.70, 0.99]
    stopped_at = None
    for epoch, value in enumerate(values, start=1):
        with torch.no_grad():
            model.weight.fill_(epoch)  # each epoch's weights are recognisable
        stopper.step(value, epoch, model)
        if stopper.should_stop:
            stopped_at = epoch
            break
    # Best is epoch 3 (0.71; a later equal value is not an improvement); 5 epochs later it stops.
    assert stopped_at == 8
    assert stopper.best_epoch == 3 and stopper.best_value == 0.71
    stopper.restore(model)
    assert torch.all(model.weight == 3)


def test_state_round_trip_keeps_counting() -> None:
    model = torch.nn.Linear(2, 2)
    first = EarlyStopping(patience=2)
    first.step(0.5, 1, model)
    first.step(0.4, 2, model)
    second = EarlyStopping(patience=99)
    second.load_state_dict(first.state_dict())
    assert second.patience == 2 and second.bad_epochs == 1 and not second.should_stop
    second.step(0.3, 3, model)
    assert second.should_stop and second.best_epoch == 1
