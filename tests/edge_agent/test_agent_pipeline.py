from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.backends.base import BackendError
from edge_agent.backends.factory import create_backend
from edge_agent.manifest import load_bundle
from edge_agent.pipeline import preprocess_cpu, uses_gpu_preprocessing
from edge_agent.preprocess import DEFAULT_SPEC, PreprocessSpec, preprocess_frame


@pytest.mark.parametrize(
    ("shape", "spec"),
    [
        ((256, 256, 3), DEFAULT_SPEC),
        ((64, 64, 3), PreprocessSpec(input_size=64, scale=1 / 255, offset=0.0, crop="none")),
        ((300, 256, 3), DEFAULT_SPEC),  # not square: the reference itself
        ((100, 90, 3), PreprocessSpec(input_size=64)),
    ],
)
def test_fast_path_bit_identical_to_reference(
    shape: tuple[int, int, int], spec: PreprocessSpec
) -> None:
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    fast = preprocess_cpu(image, spec)
    ref = preprocess_frame(image, spec)
    assert fast.dtype == np.float32 and fast.tobytes() == ref.tobytes()


def test_cuda_preprocessing_needs_a_gpu_backend(tiny_bundle: Path) -> None:
    backend = create_backend(tiny_bundle, load_bundle(tiny_bundle))
    assert not uses_gpu_preprocessing(backend, "auto")
    with pytest.raises(BackendError, match="preprocess_device"):
        uses_gpu_preprocessing(backend, "cuda")
