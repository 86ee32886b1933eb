"""Weight averaging (EMA) and label mixing (mixup, cutmix) for the training loop.

Label smoothing is ``TrainConfig.label_smoothing`` (cross-entropy's own ``label_smoothing``); with
mixing it is applied to the mixed targets by :func:`soft_cross_entropy`'s caller, as timm does.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.recipe_config import RegulariseConfig


class WeightEma:
    """An exponential moving average of a model's weights, updated after each optimizer step.

    ``ema = d * ema + (1 - d) * weights`` for floating-point parameters and buffers (BatchNorm
    statistics included); integer buffers (step counters) are copied. With ``warmup`` the decay
    at update ``n`` (0-based) is ``min(d, (1 + n) / (10 + n))``.
    """

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.current_decay()
        own = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = own[name]
            if target.dtype.is_floating_point:
                target.mul_(d).add_(value.detach().to(target.dtype), alpha=1.0 - d)
            else:
                target.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["module"])


def one_hot(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """N x K targets, ``1 - smoothing + smoothing / K`` on the class and ``smoothing / K`` off it
    (cross-entropy's ``label_smoothing`` convention)."""
    hot = F.one_hot(target.long(), num_classes).float()
    return hot * (1.0 - smoothing) + smoothing / num_classes


def soft_cross_entropy(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum(soft * log_softmax(logits))``."""
    return -(soft * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    """A Beta(alpha, alpha) draw seeded from ``generator`` (torch's Beta takes no generator)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=_device_of(generator)))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _device_of(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def cut_box(
    height: int, width: int, lam: float, generator: torch.Generator | None
) -> tuple[int, int, int, int]:
    """A box (y0, y1, x0, x1) of about ``1 - lam`` of the image, centred at random, clipped."""
    ratio = float(np.sqrt(1.0 - lam))
    ch, cw = int(height * ratio), int(width * ratio)
    dev = _device_of(generator)
    cy = int(torch.randint(0, height, (1,), generator=generator, device=dev))
    cx = int(torch.randint(0, width, (1,), generator=generator, device=dev))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, height)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, width)
    return y0, y1, x0, x1


def mix_batch(
    batch: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    config: RegulariseConfig,
    generator: torch.Generator | None = None,
    smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Mixup or cutmix of a batch with a permutation of itself.

    Returns (images, soft targets N x K or None when the batch was left alone, lambda). The
    targets are ``lam * y + (1 - lam) * y[perm]`` (smoothed), lambda being the share of the
    image that stayed (for cutmix, recomputed from the clipped box), so each row sums to 1.
    """
    n = batch.shape[0]
    dev = _device_of(generator)
    if not config.mixing or n < 2:
        return batch, None, 1.0
    if float(torch.rand(1, generator=generator, device=dev)) >= config.mix_prob:
        return batch, None, 1.0
    use_cutmix = config.cutmix_alpha > 0 and (
        config.mixup_alpha <= 0
        or float(torch.rand(1, generator=generator, device=dev)) < config.switch_prob
    )
    perm = torch.randperm(n, generator=generator, device=dev).to(batch.device)
    if use_cutmix:
        lam = _beta(config.cutmix_alpha, generator)
        h, w = batch.shape[-2:]
        y0, y1, x0, x1 = cut_box(h, w, lam, generator)
        mixed = batch.clone()
        mixed[..., y0:y1, x0:x1] = batch[perm][..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
        lam = _beta(config.mixup_alpha, generator)
        mixed = batch * lam + batch[perm] * (1.0 - lam)
    hot = one_hot(target, num_classes, smoothing)
    soft = hot * lam + hot[perm] * (1.0 - lam)
    return mixed, soft, lam
