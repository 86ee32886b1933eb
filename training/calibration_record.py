"""The calibration record in a checkpoint: ``T`` in the metadata of ``best.safetensors``.

It is stored under :data:`CALIBRATION_KEY` beside the training config, so the weights file alone
carries it; the recorded sha256 is rewritten with it. No torch at import: ``build-engine`` reads
the record before it pays for it.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from edge_agent.contract.manifest import Calibration
from training.errors import CheckpointError
from training.weights import record_weights, verify_weights

CALIBRATION_KEY = "galaxy_edge_calibration"


def _metadata(weights: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="numpy") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: corrupt safetensors file ({exc})") from exc


def read_calibration(weights: Path) -> Calibration | None:
    """The temperature recorded in a checkpoint's metadata, or None for an uncalibrated one."""
    raw = _metadata(Path(weights)).get(CALIBRATION_KEY)
    if raw is None:
        return None
    try:
        return Calibration.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise CheckpointError(
            f"{weights}: metadata {CALIBRATION_KEY} does not validate ({where}: {first['msg']}); "
            "refit it with galaxy-train calibrate --checkpoint RUN --data DATA"
        ) from exc


def write_calibration(weights: Path, calibration: Calibration) -> str:
    """Store ``calibration`` in the metadata of ``weights`` and re-record its sha256.

    The weights are verified against their record first (never bless a tampered file), rewritten
    to a temporary file with the same tensors and the other metadata unchanged, renamed over
    the original, and the new hash recorded. Returns the new sha256.
    """
    from safetensors.numpy import load_file, save_file

    weights = Path(weights)
    verify_weights(weights)
    metadata = _metadata(weights)
    metadata[CALIBRATION_KEY] = calibration.model_dump_json()
    tensors = load_file(str(weights))
    tmp = weights.with_name(weights.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, weights.stat().st_mode & 0o7777)  # safetensors writes 0600
        os.replace(tmp, weights)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{weights}: cannot rewrite with its temperature ({exc})") from exc
    return record_weights(weights)
