"""The generalisation recipe's hooks in the training loop, in one object.

:class:`Recipe` holds what a run's ``survey``, ``regularise`` and ``distill`` settings need
(teacher models, the weight average) and gives the loop four calls: :meth:`prepare` (survey
augmentation, then mixing), :meth:`teach` (the teachers' softened probabilities),
:meth:`loss` and :meth:`after_step`; :meth:`scored` is the model that validation, early
stopping and ``best.safetensors`` see (the average when EMA is on). With every setting off it
is the plain loop: same inputs, ``F.cross_entropy`` with label smoothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.config import TrainConfig
from training.distill import TeacherEnsemble, distillation_loss, load_teachers
from training.regularise import WeightEma, mix_batch, soft_cross_entropy
from training.survey_augment import survey_augment

Echo = Callable[[str], None]


class Recipe:
    def __init__(
        self,
        config: TrainConfig,
        model: torch.nn.Module,
        device: torch.device,
        *,
        labels: np.ndarray | None = None,
        test: np.ndarray | None = None,
        echo: Echo = print,
    ) -> None:
        self.config = config
        self.ema: WeightEma | None = None
        if config.regularise.ema_decay is not None:
            self.ema = WeightEma(model, config.regularise.ema_decay, config.regularise.ema_warmup)
        self.teachers: TeacherEnsemble | None = None
        if config.distill.teachers:
            self.teachers = load_teachers(
                config.distill,
                input_size=config.image_size,
                spec_fields=config.spec.model_dump(exclude={"input_size"}),
                decode=config.decode,
                num_classes=config.num_classes,
                device=device,
                labels=labels,
                test=test,
                echo=echo,
            )

    def prepare(
        self,
        batch: torch.Tensor,
        target: torch.Tensor,
        generator: torch.Generator | None,
        input_range: tuple[float, float],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Survey augmentation then mixup/cutmix; returns (images, soft targets or None)."""
        batch = survey_augment(batch, self.config.survey, generator, input_range)
        mixed, soft, _ = mix_batch(
            batch,
            target,
            self.config.num_classes,
            self.config.regularise,
            generator,
            self.config.label_smoothing,
        )
        return mixed, soft

    def teach(self, batch: torch.Tensor) -> torch.Tensor | None:
        return None if self.teachers is None else self.teachers.probs(batch)

    def loss(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        soft: torch.Tensor | None,
        teacher_probs: torch.Tensor | None,
    ) -> torch.Tensor:
        logits = logits.float()
        if soft is None:
            hard = F.cross_entropy(logits, target, label_smoothing=self.config.label_smoothing)
        else:
            hard = soft_cross_entropy(logits, soft)
        if teacher_probs is None:
            return hard
        return distillation_loss(logits, teacher_probs, hard, self.config.distill)

    def after_step(self, model: torch.nn.Module) -> None:
        if self.ema is not None:
            self.ema.update(model)

    def scored(self, model: torch.nn.Module) -> torch.nn.Module:
        """The weights validation and the checkpoint use: the average when EMA is on."""
        return self.ema.module if self.ema is not None else model

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict() if self.ema is not None else None}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.ema is not None and state and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
