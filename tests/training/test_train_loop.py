"""The training loop learns an easy task, writes its run directory, and resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from training_testkit import EASY_CLASSES, tiny_config_values

from training.config import make_config
from training.errors import TrainingError
from training.schedule import lr_at
from training.split import load_split
from training.train import train


def test_short_run_learns_easy_task_and_writes_the_run(easy_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = make_config(tiny_config_values(easy_folder, out, epochs=10, patience=10))
    metrics = train(config, echo=lambda _: None)

    for name in ("best.safetensors", "last.pt", "config.json", "metrics.json", "split.json",
                 "confusion_matrix.png", "curves.png"):  # fmt: skip
        assert (out / name).is_file(), name
    test = metrics["test"]
    # 3 classes: chance is 1/3. The task is easy, so demand far more.
    assert test["accuracy"] >= 0.85, metrics["history"]
    assert metrics["best_val_acc"] >= 0.85
    supports = {row["id"]: row["support"] for row in test["per_class"]}
    assert {i for i, s in supports.items() if s} == set(EASY_CLASSES)
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in ("history", "seconds_per_epoch", "peak_rss_bytes", "conflicts_excluded", "dataset"):
        assert key in on_disk
    assert on_disk["test"]["macro_f1"] == pytest.approx(test["macro_f1"])
    assert on_disk["split"]["seed"] == config.seed
    # lr is stepped per optimizer step: 3*24 training images, batch 16, drop_last -> 4 steps/epoch.
    steps = len(metrics["history"]) * (len(load_split(out / "split.json").train) // 16)
    assert metrics["history"][-1]["lr"] == pytest.approx(lr_at(steps))
    # best.safetensors holds the best epoch's weights, which are the ones restored at the end.
    assert metrics["history"][metrics["best_epoch"] - 1]["val_acc"] == metrics["best_val_acc"]


def test_resume_continues_from_the_saved_epoch_and_matches_a_straight_run(
    easy_folder: Path, tmp_path: Path
) -> None:
    quiet = lambda _: None  # noqa: E731
    straight = make_config(tiny_config_values(easy_folder, tmp_path / "a", epochs=3, patience=9))
    train(straight, echo=quiet)

    first = make_config(tiny_config_values(easy_folder, tmp_path / "b", epochs=2, patience=9))
    train(first, echo=quiet)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["epoch"] == 2
    resumed = make_config(tiny_config_values(easy_folder, tmp_path / "b", epochs=3, patience=9))
    messages: list[str] = []
    metrics = train(resumed, resume=True, echo=messages.append)

    assert any("resuming" in m and "after epoch 2" in m for m in messages)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    best_a = load_file(str(tmp_path / "a" / "best.safetensors"))
    best_b = load_file(str(tmp_path / "b" / "best.safetensors"))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def test_existing_run_needs_resume_and_resume_needs_a_run(
    easy_folder: Path, tmp_path: Path
) -> None:
    config = make_config(tiny_config_values(easy_folder, tmp_path / "r", epochs=1))
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(config, resume=True)
    train(config, echo=lambda _: None)
    with pytest.raises(TrainingError, match="already holds a run"):
        train(config)


def test_split_file_guards_against_other_data(easy_folder: Path, tmp_path: Path) -> None:
    config = make_config(tiny_config_values(easy_folder, tmp_path / "r", epochs=1))
    train(config, echo=lambda _: None)
    other = make_config(tiny_config_values(easy_folder, tmp_path / "r", epochs=2, limit=60))
    with pytest.raises(TrainingError, match="another data set"):
        train(other, resume=True)
    assert np.isfinite(json.loads((tmp_path / "r" / "metrics.json").read_text())["best_val_acc"])
