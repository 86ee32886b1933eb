"""Distillation from an ensemble of trained runs (the teachers) into the model being trained.

The loss is Hinton's: ``alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * CE``, both
distributions softened by the temperature ``T``; the teachers' softened probabilities are
averaged. Teachers are galaxy-train run directories: their weights are verified against their
recorded sha256, they must take the student's input transform (a different input side is
resampled), and a teacher that trained on the student's test images is refused, since it would
carry those labels into the student.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edge_agent.contract.decode_config import DecodeSpec
from training.checkpoint import load_model_weights, resolve_weights
from training.errors import UsageError
from training.recipe_config import DistillConfig
from training.split import SPLIT_NAME, Split, labels_fingerprint, load_split

Echo = Callable[[str], None]


def distillation_kl(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(teacher || softmax(student / T))``, mean over the batch (0 when they agree)."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    teacher = teacher_probs.float()
    kl = (teacher * (torch.log(teacher.clamp_min(1e-12)) - log_student)).sum(dim=1)
    return kl.mean() * temperature**2


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    hard_loss: torch.Tensor,
    config: DistillConfig,
) -> torch.Tensor:
    """``alpha * T^2 * KL + (1 - alpha) * hard_loss`` (the hard loss: CE on the true labels)."""
    kl = distillation_kl(student_logits, teacher_probs, config.temperature)
    return config.alpha * kl + (1.0 - config.alpha) * hard_loss


class TeacherEnsemble:
    """Frozen teacher models on the training device; :meth:`probs` averages their softened outputs."""

    def __init__(self, models: list[torch.nn.Module], sizes: list[int], temperature: float) -> None:
        if not models:
            raise ValueError("a teacher ensemble needs at least one teacher")
        self.models = models
        self.sizes = sizes
        self.temperature = temperature

    @torch.no_grad()
    def probs(self, batch: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for model, size in zip(self.models, self.sizes, strict=True):
            inputs = batch
            if batch.shape[-1] != size:
                inputs = F.interpolate(
                    batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False
                )
            p = torch.softmax(model(inputs).float() / self.temperature, dim=1)
            total = p if total is None else total + p
        assert total is not None
        return total / len(self.models)


def check_teacher_split(teacher_dir: Path, labels: np.ndarray, test: np.ndarray) -> int:
    """How many of the student's test images the teacher trained or validated on.

    0 when the teacher's ``split.json`` is for other data (nothing to compare) or is absent.
    """
    path = teacher_dir / SPLIT_NAME
    if not path.is_file():
        return -1
    split: Split = load_split(path)
    if split.fingerprint != labels_fingerprint(labels):
        return -1
    seen = np.union1d(split.train, split.val)
    return int(np.intersect1d(seen, test).size)


def load_teachers(
    config: DistillConfig,
    *,
    input_size: int,
    spec_fields: dict[str, object],
    num_classes: int,
    device: torch.device,
    labels: np.ndarray | None = None,
    test: np.ndarray | None = None,
    echo: Echo = print,
    decode: DecodeSpec | None = None,
) -> TeacherEnsemble:
    """Verify and load the teachers of ``config`` onto ``device``, in eval mode and frozen.

    ``decode``: the student's decoding spec; a teacher trained on files decoded otherwise (another
    stretch of deep data, FITS HDU or bands) saw other pixels and is refused.

    ``spec_fields``: the student's preprocessing spec without ``input_size``; a teacher trained
    on another transform (scale, offset, crop) would see other inputs and is refused.
    """
    models: list[torch.nn.Module] = []
    sizes: list[int] = []
    for name in config.teachers:
        weights = resolve_weights(Path(name))
        model, teacher_config = load_model_weights(weights)
        theirs = teacher_config.spec.model_dump(exclude={"input_size"})
        if theirs != spec_fields:
            raise UsageError(
                f"{name}: teacher was trained for another input transform ({theirs}); "
                "distil only from runs with the student's preprocessing spec"
            )
        if decode is not None and teacher_config.decode != decode:
            raise UsageError(
                f"{name}: teacher was trained on files decoded otherwise "
                f"({teacher_config.decode.model_dump_json()}); distil only from runs with the "
                "student's decoding spec"
            )
        if teacher_config.num_classes != num_classes:
            raise UsageError(
                f"{name}: teacher has {teacher_config.num_classes} classes, the student {num_classes}"
            )
        if labels is not None and test is not None and len(test):
            leaked = check_teacher_split(weights.parent, labels, test)
            if leaked > 0:
                raise UsageError(
                    f"{name}: teacher trained or validated on {leaked} of the student's test "
                    "images; train the teachers on the student's split (same --seed and "
                    "fractions, or crossval's '{fold}' teachers)"
                )
            if leaked < 0:
                echo(f"{name}: teacher's split is for other data or absent; leakage not checked")
        for p in model.parameters():
            p.requires_grad_(False)
        models.append(model.to(device).eval())
        sizes.append(teacher_config.image_size)
        echo(f"teacher {name}: {teacher_config.model} at {teacher_config.image_size} px")
    return TeacherEnsemble(models, sizes, config.temperature)
