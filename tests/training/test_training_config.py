"""The config is strict: unknown keys and bad values are one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.contract.preprocess import DEFAULT_SPEC
from training.config import TrainConfig, load_config, make_config, save_config
from training.errors import TrainingError


def test_defaults_are_the_paper_recipe() -> None:
    config = make_config({"data": "g.h5", "out": "run"})
    assert (config.model, config.lr, config.weight_decay, config.batch_size) == (
        "mobilevit_s",
        0.002,
        0.01,
        32,
    )
    assert (config.lr_decay_rate, config.lr_decay_steps, config.epochs, config.patience) == (
        0.01,
        10000,
        100,
        5,
    )
    assert config.label_smoothing == 0.0 and config.drop_rate == 0.2
    assert config.spec == DEFAULT_SPEC  # 256 px, centre square crop, x / 127.5 - 1
    assert config.augment.rotate and config.augment.flip


def test_saved_config_round_trips(tmp_path: Path) -> None:
    config = make_config(
        {"data": "g.h5", "out": "run", "image_size": 64, "model_kwargs": {"img_size": 64}}
    )
    loaded = load_config(save_config(config, tmp_path))
    assert loaded == config and isinstance(loaded, TrainConfig)
    assert loaded.spec.input_size == 64


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"lr": -1.0}, "lr"),
        ({"epochs": "ten"}, "epochs"),
        ({"augment": {"zoom_min": 2.0, "zoom_max": 1.0}}, "augment"),
        ({"augmnet": {}}, "augmnet"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "val_fraction + test_fraction"),
    ],
)
def test_bad_values_name_the_key(values: dict[str, object], where: str) -> None:
    with pytest.raises(TrainingError) as info:
        make_config({"data": "g.h5", "out": "run", **values}, "cfg.json")
    text = str(info.value)
    assert text.startswith("cfg.json: ") and where in text and "\n" not in text
