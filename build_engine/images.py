"""Labelled images for calibration and for the accuracy gate, and the split between them.

The gate must measure on images that calibration never saw, or a quantizer that overfits its
calibration set would pass it. With one labelled set the split is a seeded permutation (the
same set always splits the same way); with a separate ``--gate-data`` set the two are checked
for shared files. Every file is decoded by the agent's decoder (through
:func:`edge_agent.contract.labelled_data.open_labelled`) and goes through the bundle's own
preprocessing spec, so the quantizer's ranges and the gate's images are those the device will feed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from build_engine.errors import CalibrationError
from edge_agent.contract.decode_config import DecodeConfig
from edge_agent.contract.errors import GalaxyEdgeError
from edge_agent.contract.labelled_data import LabelledImages, open_labelled
from edge_agent.contract.preprocess import DEFAULT_SPEC, PreprocessSpec, preprocess_frame

SPLIT_SEED = 20261126


@dataclass
class LabelledBatch:
    """Preprocessed images (N x 3 x S x S float32), their official class ids and origins."""

    images: np.ndarray
    labels: np.ndarray
    refs: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.labels)


def _open(path: Path, limit: int | None, role: str, decode: DecodeConfig | None) -> LabelledImages:
    path = Path(path)
    if not path.exists():
        raise CalibrationError(
            f"{path}: {role} data not found; pass a labels CSV, a class-folder tree or an .h5"
        )
    try:
        return open_labelled(path, limit=limit, decode=decode)
    except GalaxyEdgeError as exc:
        raise CalibrationError(f"{role} data: {exc}") from exc


def _load(
    dataset: LabelledImages, positions: np.ndarray, spec: PreprocessSpec, source: str
) -> LabelledBatch:
    s = spec.input_size
    images = np.empty((len(positions), 3, s, s), dtype=np.float32)
    labels = np.empty(len(positions), dtype=np.int64)
    refs: list[str] = []
    for k, pos in enumerate(positions):
        try:
            frame, label = dataset[int(pos)]
            preprocess_frame(frame, spec, "RGB", out=images[k])
        except GalaxyEdgeError as exc:
            raise CalibrationError(f"{dataset.ref(int(pos))}: {exc}") from exc
        labels[k] = label
        refs.append(dataset.ref(int(pos)))
    return LabelledBatch(images=images, labels=labels, refs=refs, source=source)


def split_indices(
    n: int, calib_size: int, gate_size: int, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (calibration, gate) positions of an ``n``-image set, the same for the same ``n``.

    The gate gets ``min(gate_size, n // 2)`` images and calibration at most the rest.
    """
    if n < 2:
        raise CalibrationError(
            f"need at least 2 labelled images (calibration and gate), got {n}; give a larger set"
        )
    order = np.random.default_rng(seed).permutation(n)
    gate_n = max(1, min(gate_size, n // 2))
    calib_n = max(1, min(calib_size, n - gate_n))
    return np.sort(order[gate_n : gate_n + calib_n]), np.sort(order[:gate_n])


def load_calibration_and_gate(
    calib_path: Path,
    calib_size: int,
    gate_size: int,
    *,
    gate_path: Path | None = None,
    spec: PreprocessSpec = DEFAULT_SPEC,
    decode: DecodeConfig | None = None,
) -> tuple[LabelledBatch, LabelledBatch]:
    """Calibration and gate images: split from one set, or from two sets checked to be disjoint.

    ``decode`` reads the image files as the agent does (default: the agent's default settings).
    """
    if calib_size < 1 or gate_size < 1:
        raise CalibrationError("--calib-size and --gate-size must be at least 1")
    if gate_path is None:
        dataset = _open(calib_path, calib_size + gate_size, "calibration", decode)
        calib_pos, gate_pos = split_indices(len(dataset), calib_size, gate_size)
        source = str(calib_path)
        calib = _load(dataset, calib_pos, spec, f"{source} (split {SPLIT_SEED}, calibration part)")
        gate = _load(dataset, gate_pos, spec, f"{source} (split {SPLIT_SEED}, held-out part)")
        return calib, gate
    calib_set = _open(calib_path, calib_size, "calibration", decode)
    gate_set = _open(gate_path, gate_size, "gate", decode)
    calib = _load(calib_set, np.arange(len(calib_set)), spec, str(calib_path))
    gate = _load(gate_set, np.arange(len(gate_set)), spec, str(gate_path))
    shared = set(calib.refs) & set(gate.refs)
    if shared:
        raise CalibrationError(
            f"gate data shares {len(shared)} image(s) with the calibration data (e.g. "
            f"{sorted(shared)[0]}); give a --gate-data set that calibration never saw"
        )
    return calib, gate


def load_gate_only(
    path: Path,
    size: int,
    spec: PreprocessSpec = DEFAULT_SPEC,
    decode: DecodeConfig | None = None,
) -> LabelledBatch:
    """Labelled images for gating an FP16 build (no calibration involved)."""
    dataset = _open(path, size, "gate", decode)
    return _load(dataset, np.arange(len(dataset)), spec, str(path))
