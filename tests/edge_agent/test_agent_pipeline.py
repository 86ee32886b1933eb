from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.backends.base import BackendError
from edge_agent.backends.factory import create_backend
from edge_agent.contract.manifest import load_bundle
from edge_agent.pipeline import uses_gpu_preprocessing


def test_cuda_preprocessing_needs_a_gpu_backend(tiny_bundle: Path) -> None:
    backend = create_backend(tiny_bundle, load_bundle(tiny_bundle))
    assert not uses_gpu_preprocessing(backend, "auto")
    with pytest.raises(BackendError, match="preprocess_device"):
        uses_gpu_preprocessing(backend, "cuda")
