"""The interface every inference backend implements.

A backend is created from a verified bundle (its directory and manifest). It takes frames
(uint8 H x W x 3) or an already preprocessed batch and returns logits. A backend that
preprocesses on its device (the bundle's CUDA kernels) says so in
:attr:`Backend.preprocesses_on_device`, per loaded bundle, and its :meth:`Backend.infer_frames`
does it; the pipeline reads that declaration and never guesses from which methods a class
overrides. The default preprocesses on the CPU with the reference implementation.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.contract.errors import GalaxyEdgeError
from edge_agent.contract.manifest import Manifest
from edge_agent.contract.preprocess import ChannelOrder, preprocess_batch


class BackendError(GalaxyEdgeError):
    """A backend that cannot be created or cannot run a batch."""


@dataclass
class BatchResult:
    """Logits (N x C float32) and the seconds each stage of this batch took."""

    logits: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


class Backend(ABC):
    """One loaded model. Not thread-safe: one pipeline thread calls it."""

    name: str = "abstract"

    def __init__(self, bundle_dir: Path, manifest: Manifest) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest

    @property
    def max_batch(self) -> int:
        return self.manifest.batch.max

    @property
    def preprocesses_on_device(self) -> bool:
        """Whether :meth:`infer_frames` preprocesses on the device, for this loaded bundle.

        ``False`` here: the pipeline then hands :meth:`infer` CPU tensors. A backend answers
        for the bundle it loaded (a TensorRT bundle without kernels answers ``False``).
        """
        return False

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """N x 3 x S x S float32 model input -> N x C float32 logits (N <= max_batch)."""

    def infer_frames(
        self, frames: Sequence[np.ndarray], frame_order: ChannelOrder = "RGB"
    ) -> BatchResult:
        """Preprocess ``frames`` (CPU reference) and run them; timings in seconds per stage."""
        t0 = time.perf_counter()
        batch = preprocess_batch(frames, self.manifest.preprocess, frame_order)
        t1 = time.perf_counter()
        logits = self.infer(batch)
        t2 = time.perf_counter()
        return BatchResult(logits=logits, timings={"preprocess": t1 - t0, "infer": t2 - t1})

    def warmup(self) -> None:
        """Run one batch of zeros so the first real frame does not pay for lazy set-up."""
        s = self.manifest.preprocess.input_size
        self.infer(np.zeros((1, 3, s, s), dtype=np.float32))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device memory and handles."""
