"""galaxy-train compare: models trained alike, a table with parameters and CPU latency, a plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import pytest
import torch

from training.cli import main
from training.compare_models import (
    DEFAULT_MODELS,
    cpu_latency_ms,
    format_table,
    plot,
    profile_models,
)
from training.model import count_parameters, create_model


def test_default_models_are_timm_names() -> None:
    import timm

    assert DEFAULT_MODELS[0] == "mobilevit_s"
    assert all(timm.is_model(name) for name in DEFAULT_MODELS)


def test_latency_is_positive_and_grows_with_the_input() -> None:
    model = create_model("test_resnet", 10)
    small = cpu_latency_ms(model, 32, threads=1, warmup=1, repeats=5)
    large = cpu_latency_ms(model, 160, threads=1, warmup=1, repeats=5)
    assert 0 < small < large
    assert torch.get_num_threads() == 1  # restored (conftest sets 1)


def test_profile_counts_the_parameters_of_the_model_as_trained() -> None:
    base = {"data": "d", "image_size": 32, "drop_rate": 0.1}
    profile = profile_models(["test_resnet", "test_efficientnet"], base, threads=1, repeats=3)
    assert profile["test_resnet"]["parameters"] == count_parameters(create_model("test_resnet"))
    assert profile["test_efficientnet"]["image_size"] == 32


def _doc() -> dict[str, object]:
    summary = {
        "a": {"runs": 3, "accuracy_mean": 0.6, "accuracy_std": 0.02, "macro_f1_mean": 0.58,
              "macro_f1_std": 0.03},
        "b": {"runs": 3, "accuracy_mean": 0.5, "accuracy_std": 0.04, "macro_f1_mean": 0.47,
              "macro_f1_std": 0.05},
    }  # fmt: skip
    comparisons = [
        {"variant": "b", "metric": "accuracy", "mean_diff": -0.1, "low": -0.2, "high": -0.01,
         "verdict": "hurts"},
    ]  # fmt: skip
    return {
        "models": ["a", "b"],
        "cpu": "test cpu",
        "threads": 2,
        "timing_repeats": 15,
        "profile": {
            "a": {"parameters": 4_900_000, "cpu_ms_per_image": 30.0, "image_size": 256},
            "b": {"parameters": 11_200_000, "cpu_ms_per_image": 20.0, "image_size": 256},
        },
        "crossval": {"folds": 3, "repeats": 1, "data": "x", "images": 90,
                     "summary": summary, "comparisons": comparisons},
    }  # fmt: skip


def test_table_has_each_model_with_its_figures_and_verdict(tmp_path: Path) -> None:
    table = format_table(_doc())
    assert "| a | 4.90 M | 3 | 0.600 ± 0.020 | 0.580 ± 0.030 | 30.0 | (reference) |" in table
    assert "| b | 11.20 M | 3 | 0.500 ± 0.040 |" in table and "hurts" in table
    assert "2 threads on test cpu" in table
    plot(_doc(), tmp_path / "p.png")
    image = cv2.imread(str(tmp_path / "p.png"))
    assert image is not None and image.shape[0] > 300 and image.std() > 5


def test_compare_command_end_to_end(
    easy_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    config = tmp_path / "base.json"
    config.write_text(json.dumps({"image_size": 32, "batch_size": 16, "val_fraction": 0.2}))
    common = ["compare", "--data", str(easy_folder), "--out", str(out), "--config", str(config),
              "--folds", "2", "--epochs", "1", "--device", "cpu", "--threads", "1",
              "--timing-repeats", "3"]  # fmt: skip
    code = main([*common, "--models", "test_efficientnet,test_resnet", "--no-progress"])
    assert code == 0
    doc = json.loads((out / "compare.json").read_text())
    assert doc["models"] == ["test_efficientnet", "test_resnet"]
    for name in doc["models"]:
        assert doc["crossval"]["summary"][name]["runs"] == 2
        assert math.isfinite(doc["crossval"]["summary"][name]["accuracy_mean"])
        assert doc["profile"][name]["cpu_ms_per_image"] > 0
        assert (out / name / "r0f1" / "best.safetensors").is_file()
    assert "| test_resnet |" in (out / "compare.md").read_text()
    assert (out / "compare.png").stat().st_size > 1000

    # a cut comparison reports its finished folds without training
    (out / "test_resnet" / "r0f1" / "metrics.json").unlink()
    code = main([*common, "--models", "test_efficientnet,test_resnet", "--report-only"])
    assert code == 0
    partial = json.loads((out / "compare.json").read_text())
    assert partial["crossval"]["summary"]["test_resnet"]["runs"] == 1
    assert not (out / "test_resnet" / "r0f1" / "metrics.json").exists()  # not trained again
    assert "| test_resnet | " in (out / "compare.md").read_text()
    assert " | 1 | " in (out / "compare.md").read_text()
    code = main([*common, "--models", "test_efficientnet,test_convnext", "--report-only"])
    assert code == 2  # test_convnext has no finished fold
    assert "no finished fold of test_convnext" in capsys.readouterr().err


def test_compare_needs_two_models(easy_folder: Path, tmp_path: Path) -> None:
    code = main(
        ["compare", "--data", str(easy_folder), "--out", str(tmp_path), "--models", "resnet18"]
    )
    assert code == 2


@pytest.mark.parametrize("models", ["resnet18,not_a_model"])
def test_unknown_model_fails_before_training(
    easy_folder: Path, tmp_path: Path, models: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["compare", "--data", str(easy_folder), "--out", str(tmp_path / "o"),
                 "--models", models, "--device", "cpu"])  # fmt: skip
    assert code == 2
    assert "not_a_model" in capsys.readouterr().err
    assert not (tmp_path / "o" / "resnet18").exists()
