"""EMA tracks the weights with its decay; mixed targets are distributions that match the pixels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from training_testkit import tiny_config_values

from training.config import make_config
from training.recipe_config import RegulariseConfig
from training.regularise import WeightEma, cut_box, mix_batch, one_hot, soft_cross_entropy
from training.train import train


def _net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def _weight(module: torch.nn.Module) -> torch.Tensor:
    weight = module.get_parameter("0.weight")
    return weight


def test_ema_follows_the_stated_decay_exactly() -> None:
    model = _net()
    ema = WeightEma(model, decay=0.9, warmup=False)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()
    model(torch.randn(8, 4))  # moves the BatchNorm running statistics
    ema.update(model)
    now = model.state_dict()
    for name, value in ema.module.state_dict().items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, 0.9 * start[name] + 0.1 * now[name])
        else:
            assert torch.equal(value, now[name])  # num_batches_tracked copied
    # Held constant, the model's weights pull the average in geometrically: gap * 0.9 ** k.
    gap0 = float((_weight(ema.module) - _weight(model)).detach().abs().max())
    for _ in range(10):
        ema.update(model)
    gap10 = float((_weight(ema.module) - _weight(model)).detach().abs().max())
    assert gap10 == pytest.approx(gap0 * 0.9**10, rel=1e-4)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_warmup_uses_the_smaller_decay_early() -> None:
    ema = WeightEma(_net(), decay=0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)
    ema.updates = 90
    assert ema.current_decay() == pytest.approx(91 / 100)
    ema.updates = 10**6
    assert ema.current_decay() == pytest.approx(0.999)


def test_ema_state_round_trips() -> None:
    model = _net()
    ema = WeightEma(model, decay=0.5, warmup=False)
    with torch.no_grad():
        _weight(model).mul_(3)
    ema.update(model)
    other = WeightEma(_net(), decay=0.5, warmup=False)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1
    torch.testing.assert_close(_weight(other.module), _weight(ema.module))


@pytest.mark.parametrize("mode", ["mixup", "cutmix", "both"])
def test_mixed_targets_are_distributions_weighted_by_lambda(mode: str) -> None:
    config = RegulariseConfig(
        mixup_alpha=0.4 if mode != "cutmix" else 0.0,
        cutmix_alpha=1.0 if mode != "mixup" else 0.0,
    )
    gen = torch.Generator().manual_seed(0)
    batch = torch.randn(16, 3, 24, 24)
    target = torch.arange(16) % 10
    for _ in range(20):
        mixed, soft, lam = mix_batch(batch, target, 10, config, gen, smoothing=0.1)
        assert soft is not None and soft.shape == (16, 10)
        torch.testing.assert_close(soft.sum(1), torch.ones(16))
        assert 0.0 <= lam <= 1.0
        assert float(soft.min()) >= 0.1 / 10 - 1e-6  # smoothing keeps every class possible
        # The own class holds lam of the mass (plus smoothing), unless the partner shares it.
        own = soft[torch.arange(16), target]
        assert float(own.min()) >= lam * 0.9 + 0.01 - 1e-5
        assert mixed.shape == batch.shape


def test_cutmix_lambda_is_the_share_of_pixels_kept() -> None:
    config = RegulariseConfig(cutmix_alpha=1.0)
    gen = torch.Generator().manual_seed(1)
    batch = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 20, 20).clone()
    for _ in range(10):
        mixed, soft, lam = mix_batch(batch, torch.arange(4), 10, config, gen)
        assert soft is not None
        kept = (mixed == batch).float().mean(dim=(1, 2, 3))  # images differ: changed = pasted
        own = soft[torch.arange(4), torch.arange(4)]
        expected = torch.where(own > 1 - 1e-6, 1.0, lam)  # an image paired with itself is whole
        torch.testing.assert_close(kept, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(own[own < 1 - 1e-6], torch.full_like(own[own < 1 - 1e-6], lam))


def test_mixup_blends_pixels_with_lambda() -> None:
    config = RegulariseConfig(mixup_alpha=1.0)
    gen = torch.Generator().manual_seed(2)
    batch = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 3, 4, 4).clone()
    mixed, soft, lam = mix_batch(batch, torch.arange(5), 5, config, gen)
    assert soft is not None
    # Each image is lam * itself + (1 - lam) * its partner; the targets say who the partner is.
    partner = soft.clone()
    partner[torch.arange(5), torch.arange(5)] -= lam
    partner_id = partner.argmax(1).float()
    expected = lam * torch.arange(5.0) + (1 - lam) * partner_id
    torch.testing.assert_close(mixed[:, 0, 0, 0], expected)


def test_no_mixing_when_off_or_not_drawn() -> None:
    batch, target = torch.randn(4, 3, 8, 8), torch.arange(4)
    assert mix_batch(batch, target, 10, RegulariseConfig())[1] is None
    never = RegulariseConfig(mixup_alpha=1.0, mix_prob=0.0)
    assert mix_batch(batch, target, 10, never)[1] is None


def test_cut_box_covers_about_one_minus_lambda() -> None:
    gen = torch.Generator().manual_seed(3)
    h0, h1, w0, w1 = cut_box(100, 100, 0.75, gen)
    assert (h1 - h0) * (w1 - w0) <= 2500 and h1 - h0 <= 50 and w1 - w0 <= 50


def test_soft_cross_entropy_equals_torch_with_label_smoothing() -> None:
    logits, target = torch.randn(6, 10), torch.randint(0, 10, (6,))
    ours = soft_cross_entropy(logits, one_hot(target, 10, 0.1))
    torch.testing.assert_close(ours, F.cross_entropy(logits, target, label_smoothing=0.1))


def test_a_run_with_ema_saves_and_resumes_the_average(easy_folder: Path, tmp_path: Path) -> None:
    quiet = lambda _: None  # noqa: E731
    ema = {"regularise": {"ema_decay": 0.9}}
    one = make_config(tiny_config_values(easy_folder, tmp_path / "one", epochs=1, **ema))
    train(one, echo=quiet)
    state = torch.load(tmp_path / "one" / "last.pt", weights_only=False)
    best = load_file(str(tmp_path / "one" / "best.safetensors"))
    average = state["recipe"]["ema"]["module"]
    assert state["recipe"]["ema"]["updates"] == 4  # 72 training images, batch 16, drop_last
    name = next(k for k, v in best.items() if v.dtype.is_floating_point and v.numel() > 100)
    torch.testing.assert_close(best[name], average[name])  # epoch 1 is the best: its average
    assert not torch.equal(best[name], state["model"][name])  # not the raw weights

    straight = make_config(tiny_config_values(easy_folder, tmp_path / "a", epochs=2, **ema))
    train(straight, echo=quiet)
    first = make_config(tiny_config_values(easy_folder, tmp_path / "b", epochs=1, **ema))
    train(first, echo=quiet)
    resumed = make_config(tiny_config_values(easy_folder, tmp_path / "b", epochs=2, **ema))
    train(resumed, resume=True, echo=quiet)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["recipe"]["ema"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["recipe"]["ema"]
    assert a["updates"] == b["updates"] == 8
    torch.testing.assert_close(a["module"][name], b["module"][name])
