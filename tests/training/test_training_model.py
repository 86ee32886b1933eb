"""Models by timm name, with pretrained weights from a local file; clear errors otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from training.errors import ModelError
from training.model import create_model


def test_head_dropout_and_output() -> None:
    model = create_model("test_efficientnet", num_classes=10, drop_rate=0.3).eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert model.drop_rate == pytest.approx(0.3)


def test_local_pretrained_file_loads_the_backbone_and_new_head(tmp_path: Path) -> None:
    source = timm.create_model("test_efficientnet", num_classes=1000)
    weights = tmp_path / "imagenet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    model = create_model("test_efficientnet", num_classes=10, pretrained=str(weights))
    theirs, ours = source.state_dict(), model.state_dict()
    backbone = [k for k in ours if not k.startswith("classifier")]
    assert backbone and all(torch.equal(ours[k], theirs[k]) for k in backbone)
    assert ours["classifier.weight"].shape == (10, theirs["classifier.weight"].shape[1])


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown timm model 'mobilevit_zz'"):
        create_model("mobilevit_zz")
    with pytest.raises(ModelError, match="does not exist"):
        create_model("test_efficientnet", pretrained=str(tmp_path / "none.pth"))
    other = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(3)}, str(other))
    with pytest.raises(ModelError, match="weights do not fit test_efficientnet") as info:
        create_model("test_efficientnet", pretrained=str(other))
    assert "\n" not in str(info.value)
