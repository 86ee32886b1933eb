"""The temperature of a calibrated model, carried from the checkpoint through the ONNX file.

``galaxy-train`` stores it in the checkpoint (:mod:`training.calibration`); the export copies
it into the ONNX ``metadata_props`` under :data:`META_CALIBRATION`, so that a later
``build-engine --onnx`` on the device (without the checkpoint) still finds it; every build reads
it from the source ONNX into the manifest's ``calibration``, and the agent applies it. A model
without one is shipped uncalibrated (raw softmax, ``calibrated: false`` on the wire).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from build_engine.errors import ExportError
from edge_agent.contract.manifest import Calibration

if TYPE_CHECKING:
    import onnx

META_CALIBRATION = "galaxy_edge.calibration"


def write_calibration_metadata(onnx_path: Path, calibration: Calibration | None) -> None:
    """Record ``calibration`` in the ONNX file (or remove a stale one when it is None)."""
    import onnx

    model = onnx.load(str(onnx_path))
    kept = [p for p in model.metadata_props if p.key != META_CALIBRATION]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if calibration is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = META_CALIBRATION, calibration.model_dump_json()
    onnx.save(model, str(onnx_path))


def read_calibration_metadata(model: onnx.ModelProto, where: str) -> Calibration | None:
    """The record of :func:`write_calibration_metadata`; one that does not validate is an error."""
    raw = next((p.value for p in model.metadata_props if p.key == META_CALIBRATION), None)
    if raw is None:
        return None
    try:
        return Calibration.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ExportError(
            f"{where}: metadata {META_CALIBRATION} is not a valid calibration record "
            f"({'.'.join(str(p) for p in first['loc'])}: {first['msg']}); re-export it with "
            "build-engine --checkpoint"
        ) from exc
