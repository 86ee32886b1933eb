"""Fixtures of the training tests: one thread for torch, an easy synthetic labelled set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_testkit import write_easy_folder


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def easy_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class-folder tree of 3 x 40 easy 32 x 32 PNGs (ids 2, 5 and 8)."""
    return write_easy_folder(tmp_path_factory.mktemp("easy"), per_class=40)
