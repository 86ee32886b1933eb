"""Distillation: the KL term vanishes when the student agrees, teachers are checked, runs train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from training_testkit import tiny_config_values

from training.config import make_config
from training.distill import TeacherEnsemble, distillation_kl, distillation_loss, load_teachers
from training.errors import UsageError
from training.recipe_config import DistillConfig
from training.split import load_split
from training.train import train

QUIET = lambda _: None  # noqa: E731


def test_kl_is_zero_when_the_student_equals_the_teacher_and_positive_otherwise() -> None:
    logits = torch.randn(8, 10) * 3
    for t in (1.0, 4.0):
        teacher = torch.softmax(logits / t, dim=1)
        assert float(distillation_kl(logits, teacher, t)) == pytest.approx(0.0, abs=1e-6)
        assert float(distillation_kl(logits + torch.randn(8, 10), teacher, t)) > 1e-3


def test_kl_matches_torch_and_scales_with_t_squared() -> None:
    student, teacher_logits = torch.randn(5, 10), torch.randn(5, 10)
    t = 3.0
    teacher = torch.softmax(teacher_logits / t, dim=1)
    reference = F.kl_div(F.log_softmax(student / t, dim=1), teacher, reduction="batchmean")
    torch.testing.assert_close(distillation_kl(student, teacher, t), reference * t**2)


def test_loss_weights_kl_and_hard_loss_by_alpha() -> None:
    student, teacher = torch.randn(4, 10), torch.softmax(torch.randn(4, 10), 1)
    hard = torch.tensor(2.0)
    config = DistillConfig(teachers=["x"], temperature=2.0, alpha=0.25)
    kl = distillation_kl(student, teacher, 2.0)
    torch.testing.assert_close(
        distillation_loss(student, teacher, hard, config), 0.25 * kl + 0.75 * hard
    )
    same = torch.softmax(student / 2.0, 1)
    only_hard = distillation_loss(student, same, hard, config)
    assert float(only_hard) == pytest.approx(0.75 * 2.0, abs=1e-5)


def test_ensemble_averages_softened_probabilities_and_resamples_inputs() -> None:
    class Fixed(torch.nn.Module):
        def __init__(self, logits: torch.Tensor) -> None:
            super().__init__()
            self.logits = logits
            self.seen: list[int] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.append(x.shape[-1])
            return self.logits.expand(x.shape[0], -1)

    a, b = Fixed(torch.tensor([[2.0, 0.0, 0.0]])), Fixed(torch.tensor([[0.0, 0.0, 4.0]]))
    ensemble = TeacherEnsemble([a, b], [16, 32], temperature=2.0)
    probs = ensemble.probs(torch.zeros(3, 3, 16, 16))
    expected = (torch.softmax(a.logits / 2, 1) + torch.softmax(b.logits / 2, 1)) / 2
    torch.testing.assert_close(probs, expected.expand(3, -1))
    assert a.seen == [16] and b.seen == [32]


def test_a_student_learns_from_teachers_with_the_whole_recipe(
    easy_folder: Path, tmp_path: Path
) -> None:
    teacher_dir = tmp_path / "teacher"
    train(make_config(tiny_config_values(easy_folder, teacher_dir, epochs=2)), echo=QUIET)
    values = tiny_config_values(
        easy_folder,
        tmp_path / "student",
        epochs=2,
        model="test_resnet",
        survey={"p_psf": 0.5, "p_noise": 0.5, "p_colour": 0.5},
        regularise={"ema_decay": 0.9, "mixup_alpha": 0.2, "cutmix_alpha": 1.0},
        distill={"teachers": [str(teacher_dir)], "temperature": 2.0, "alpha": 0.5},
    )
    messages: list[str] = []
    metrics = train(make_config(values), echo=messages.append)
    assert any("teacher" in m and "test_efficientnet" in m for m in messages)
    assert metrics["test"]["images"] > 0
    saved = json.loads((tmp_path / "student" / "config.json").read_text())
    assert saved["distill"]["teachers"] == [str(teacher_dir)]
    state = torch.load(tmp_path / "student" / "last.pt", weights_only=False)
    assert state["recipe"]["ema"]["updates"] == 2 * 4  # 72 training images, batch 16: 4 steps


def test_a_teacher_that_saw_the_students_test_images_is_refused(
    easy_folder: Path, tmp_path: Path
) -> None:
    teacher_dir = tmp_path / "teacher"
    train(make_config(tiny_config_values(easy_folder, teacher_dir, epochs=1)), echo=QUIET)
    teacher_split = load_split(teacher_dir / "split.json")
    from edge_agent.contract.labelled_data import open_labelled

    labels = open_labelled(easy_folder).labels
    config = DistillConfig(teachers=[str(teacher_dir)])
    common = {
        "input_size": 32,
        "spec_fields": make_config(tiny_config_values(easy_folder, tmp_path / "x")).spec.model_dump(
            exclude={"input_size"}
        ),
        "num_classes": 10,
        "device": torch.device("cpu"),
        "labels": labels,
        "echo": QUIET,
    }
    # The student's test part is the teacher's own test part: allowed.
    ensemble = load_teachers(config, test=teacher_split.test, **common)  # type: ignore[arg-type]
    assert len(ensemble.models) == 1
    assert not any(p.requires_grad for p in ensemble.models[0].parameters())
    # A student tested on images the teacher trained on: refused.
    with pytest.raises(UsageError, match="trained or validated on 3 of the student's test"):
        load_teachers(config, test=teacher_split.train[:3], **common)  # type: ignore[arg-type]


def test_a_teacher_with_another_input_transform_is_refused(
    easy_folder: Path, tmp_path: Path
) -> None:
    teacher_dir = tmp_path / "teacher"
    train(make_config(tiny_config_values(easy_folder, teacher_dir, epochs=1)), echo=QUIET)
    student = make_config(tiny_config_values(easy_folder, tmp_path / "s"))
    fields = student.spec.model_dump(exclude={"input_size"})
    fields["scale"] = 1.0 / 255.0
    with pytest.raises(UsageError, match="another input transform"):
        load_teachers(
            DistillConfig(teachers=[str(teacher_dir)]),
            input_size=32,
            spec_fields=fields,
            num_classes=10,
            device=torch.device("cpu"),
            echo=QUIET,
        )
