"""Distillation and the decoding spec: a teacher trained on files decoded otherwise is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_testkit import tiny_config_values

from edge_agent.contract.decode_config import DecodeSpec, StretchConfig
from training.config import make_config
from training.distill import load_teachers
from training.errors import UsageError
from training.recipe_config import DistillConfig
from training.train import train


def test_a_teacher_with_another_decoding_spec_is_refused(easy_folder: Path, tmp_path: Path) -> None:
    teacher_dir = tmp_path / "teacher"
    train(make_config(tiny_config_values(easy_folder, teacher_dir, epochs=1)), echo=lambda _: None)
    student = make_config(tiny_config_values(easy_folder, tmp_path / "s"))
    common = {
        "input_size": 32,
        "spec_fields": student.spec.model_dump(exclude={"input_size"}),
        "num_classes": 10,
        "device": torch.device("cpu"),
        "echo": lambda _: None,
    }
    config = DistillConfig(teachers=[str(teacher_dir)])
    assert len(load_teachers(config, decode=DecodeSpec(), **common).models) == 1  # type: ignore[arg-type]
    linear = DecodeSpec(stretch=StretchConfig(method="linear"))
    with pytest.raises(UsageError, match="teacher was trained on files decoded otherwise"):
        load_teachers(config, decode=linear, **common)  # type: ignore[arg-type]
