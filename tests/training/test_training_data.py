"""The training eval transform IS the inference contract; augmentation is batch-wise and sane."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge_agent.contract.labelled_data import open_labelled
from edge_agent.contract.preprocess import PreprocessSpec, preprocess_batch
from training.config import AugmentConfig, make_config
from training.data import PreprocessedImages, augment_batch, make_loader


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (90, 41)])
def test_eval_transform_equals_the_cpu_reference(tmp_path: Path, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(3)]
    for i, frame in enumerate(frames):
        folder = tmp_path / "round-smooth"
        folder.mkdir(exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), frame[:, :, ::-1])
    config = make_config({"data": str(tmp_path), "out": str(tmp_path / "r"), "image_size": 32})
    assert config.spec == PreprocessSpec(input_size=32)  # the contract's defaults, saved in runs
    images = open_labelled(tmp_path)
    dataset = PreprocessedImages(images, np.arange(len(images)), config.spec)
    loader = make_loader(dataset, 2, shuffle=False, workers=0, device=torch.device("cpu"), seed=0)
    batched = torch.cat([x for x, _ in loader]).numpy()
    reference = preprocess_batch([images[i][0] for i in range(len(images))], config.spec)
    assert batched.dtype == np.float32
    np.testing.assert_array_equal(batched, reference)  # bit-exact, not merely close


def test_augmentation_is_per_image_reproducible_and_in_range() -> None:
    gen = torch.Generator().manual_seed(0)
    batch = torch.rand(6, 3, 32, 32, generator=gen) * 2 - 1
    batch = batch.expand(6, 3, 32, 32).clone()
    batch[:] = batch[0]  # six copies of one image
    config = AugmentConfig()
    out1 = augment_batch(batch, config, torch.Generator().manual_seed(5))
    out2 = augment_batch(batch, config, torch.Generator().manual_seed(5))
    assert out1.shape == batch.shape and out1.dtype == torch.float32
    torch.testing.assert_close(out1, out2, rtol=0, atol=0)
    assert out1.min() >= -1.0 and out1.max() <= 1.0
    assert not torch.allclose(out1[0], out1[1])  # each image gets its own transform


def test_rotation_keeps_a_centred_disc_and_zoom_scales_it() -> None:
    s = 64
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    r = torch.hypot(xx - (s - 1) / 2, yy - (s - 1) / 2)
    disc = torch.where(r < 12, 1.0, -1.0).expand(8, 3, s, s).clone()
    still = AugmentConfig(zoom_min=1.0, zoom_max=1.0, translate=0.0)
    rotated = augment_batch(disc, still, torch.Generator().manual_seed(1))
    # A disc is unchanged by rotation and flips apart from its anti-aliased rim.
    assert (rotated - disc).abs().gt(0.5).float().mean() < 0.02
    zoomed = augment_batch(disc, AugmentConfig(zoom_min=2.0, zoom_max=2.0, translate=0.0))
    area = (rotated[0, 0] > 0).float().sum()
    assert (zoomed[0, 0] > 0).float().sum() / area == pytest.approx(4.0, rel=0.1)


def test_rotation_covers_the_full_circle() -> None:
    # A single bright dot off-centre: its angle after augmentation reveals the rotation drawn.
    s = 33
    img = -torch.ones(1, 3, s, s)
    img[0, :, 16, 28] = 1.0
    batch = img.expand(400, 3, s, s).clone()
    config = AugmentConfig(flip=False, zoom_min=1.0, zoom_max=1.0, translate=0.0)
    out = augment_batch(batch, config, torch.Generator().manual_seed(2))[:, 0]
    flat = out.reshape(400, -1).argmax(1)
    ys, xs = (flat // s).float() - 16, (flat % s).float() - 16
    angles = torch.atan2(ys, xs) % (2 * math.pi)
    hist = torch.histc(angles, bins=8, min=0, max=2 * math.pi)
    assert hist.min() > 20  # every 45-degree sector is reached
