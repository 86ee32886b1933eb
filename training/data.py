"""Torch datasets over the labelled readers, and batch-wise augmentation on the device.

Every item goes through exactly the inference transform (:func:`edge_agent.contract.preprocess.preprocess_frame`),
so validation, test and evaluation see what the deployed model sees. Training adds augmentation
after that, on whole batches on the training device (the GPU when there is one): one
``affine_grid``/``grid_sample`` per batch composes rotation over the full circle (galaxies have no
preferred orientation), flips, zoom (rescale) and a random shift (crop). Edges are filled by
reflection, as Keras' augmentation layers do, because zero in ``[-1, 1]`` space is mid-grey sky.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from edge_agent.contract.labelled_data import LabelledImages
from edge_agent.contract.preprocess import PreprocessSpec, preprocess_frame
from training.config import AugmentConfig


class PreprocessedImages(Dataset[tuple[torch.Tensor, int]]):
    """Items ``indices`` of a labelled set, each as (float32 3 x S x S eval input, class id)."""

    def __init__(self, images: LabelledImages, indices: np.ndarray, spec: PreprocessSpec) -> None:
        self.images = images
        self.indices = np.asarray(indices, dtype=np.int64)
        self.spec = spec

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        pixels, label = self.images[int(self.indices[i])]
        return torch.from_numpy(preprocess_frame(pixels, self.spec, "RGB")), label

    @property
    def labels(self) -> np.ndarray:
        result: np.ndarray = self.images.labels[self.indices]
        return result


def default_workers(device: torch.device) -> int:
    """No worker processes on the CPU (the cores are busy training); up to 8 feeding a GPU."""
    if device.type != "cuda":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def make_loader(
    dataset: PreprocessedImages,
    batch_size: int,
    *,
    shuffle: bool,
    workers: int,
    device: torch.device,
    seed: int,
    distributed: bool = False,
    drop_last: bool = False,
) -> DataLoader[tuple[torch.Tensor, int]]:
    generator = torch.Generator().manual_seed(seed)
    sampler: DistributedSampler[tuple[torch.Tensor, int]] | None = (
        DistributedSampler(dataset, shuffle=shuffle, seed=seed) if distributed else None
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=generator,
        drop_last=drop_last,
    )


def value_range(spec: PreprocessSpec) -> tuple[float, float]:
    """The model-input values of pixels 0 and 255 under ``spec``, lowest first."""
    ends = (spec.offset, 255.0 * spec.scale + spec.offset)
    return min(ends), max(ends)


def augment_batch(
    batch: torch.Tensor,
    config: AugmentConfig,
    generator: torch.Generator | None = None,
    input_range: tuple[float, float] = (-1.0, 1.0),
) -> torch.Tensor:
    """Random rotation, flips, zoom and shift of an N x 3 x S x S batch, per image, on its device.

    ``generator`` (on the batch's device) makes it reproducible; values stay in the input range
    because bilinear sampling interpolates and reflection pads. ``input_range`` is the range of
    the spec's inputs (:func:`value_range`): jitter is scaled to it and clamped back into it.
    """
    n = batch.shape[0]
    dev = batch.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, device=dev, generator=generator) * (hi - lo) + lo

    angle = uniform(0.0, 2.0 * math.pi) if config.rotate else torch.zeros(n, device=dev)
    # theta maps output to input coordinates: a zoom factor z > 1 samples a smaller region.
    inv_zoom = 1.0 / uniform(config.zoom_min, config.zoom_max)
    if config.flip:
        flip_x = torch.where(torch.rand(n, device=dev, generator=generator) < 0.5, -1.0, 1.0)
        flip_y = torch.where(torch.rand(n, device=dev, generator=generator) < 0.5, -1.0, 1.0)
    else:
        flip_x = flip_y = torch.ones(n, device=dev)
    cos, sin = torch.cos(angle) * inv_zoom, torch.sin(angle) * inv_zoom
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = cos * flip_x
    theta[:, 0, 1] = -sin * flip_y
    theta[:, 1, 0] = sin * flip_x
    theta[:, 1, 1] = cos * flip_y
    shift = 2.0 * config.translate
    theta[:, 0, 2] = uniform(-shift, shift)
    theta[:, 1, 2] = uniform(-shift, shift)
    source = batch.float()
    grid = F.affine_grid(theta, list(source.shape), align_corners=False)
    out = F.grid_sample(
        source, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    lo, hi = input_range
    if config.contrast > 0:  # around the middle of the range, as it is 0 for [-1, 1]
        middle = (lo + hi) / 2.0
        out = middle + (out - middle) * uniform(1.0 - config.contrast, 1.0 + config.contrast).view(
            n, 1, 1, 1
        )
    if config.brightness > 0:
        out = out + uniform(-config.brightness, config.brightness).view(n, 1, 1, 1) * (hi - lo)
    if config.noise > 0:  # std given on [-1, 1] input: scaled with the range's width
        out = out + torch.randn(out.shape, device=dev, generator=generator) * (
            config.noise * (hi - lo) / 2.0
        )
    if config.contrast > 0 or config.brightness > 0 or config.noise > 0:
        out = out.clamp(lo, hi)
    return out
