"""What a model carries inside its ONNX file, so that a build from the file alone knows it.

The export (:mod:`build_engine.export`) records in ``metadata_props``: the preprocessing spec the
model was trained with (``galaxy_edge.preprocess``), the decoding spec its image files were read
with (``galaxy_edge.decode``: stretch of deep data, FITS HDU and bands), its name, parameter count
and training provenance. ``build-engine --onnx`` reads them back into the manifest
(:func:`read_metadata`). ``galaxy-train qat`` writes the same keys into its Q/DQ file
(training/qat.py keeps its own copy of them: build_engine may import training, not the
reverse). The calibration temperature travels the same way (:mod:`build_engine.calibration_metadata`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from build_engine.errors import ExportError
from edge_agent.contract.decode_config import DecodeSpec
from edge_agent.contract.manifest import TrainingProvenance
from edge_agent.contract.preprocess import PreprocessSpec

if TYPE_CHECKING:
    import onnx

META_MODEL_NAME = "galaxy_edge.model_name"
META_PROVENANCE = "galaxy_edge.training_provenance"
META_PARAMETERS = "galaxy_edge.parameters"
META_PREPROCESS = "galaxy_edge.preprocess"
META_DECODE = "galaxy_edge.decode"
_Spec = TypeVar("_Spec", PreprocessSpec, DecodeSpec)


@dataclass(frozen=True)
class OnnxMetadata:
    """What :func:`write_metadata` recorded in an ONNX file; ``spec`` and ``decode`` are None
    when absent (``decode`` is absent from files exported before it travelled: the defaults)."""

    model_name: str
    provenance: TrainingProvenance
    parameters: int | None
    spec: PreprocessSpec | None
    decode: DecodeSpec | None = None


def write_metadata(
    path: Path,
    model_name: str,
    provenance: TrainingProvenance,
    parameters: int | None,
    spec: PreprocessSpec,
    decode: DecodeSpec,
) -> None:
    """Record the preprocessing and decoding specs, model name and training provenance inside
    the ONNX file.

    A later ``build-engine --onnx`` (on the device, without the checkpoint) reads them back
    into the manifest; metadata does not change the graph, so the export check still holds.
    """
    import onnx

    model = onnx.load(str(path))
    props = {
        META_MODEL_NAME: model_name,
        META_PROVENANCE: provenance.model_dump_json(),
        META_PARAMETERS: str(parameters) if parameters is not None else "",
        META_PREPROCESS: spec.model_dump_json(),
        META_DECODE: decode.model_dump_json(),
    }
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def read_metadata(model: onnx.ModelProto, where: str = "ONNX model") -> OnnxMetadata:
    """What :func:`write_metadata` recorded; name, provenance and parameters default when absent.

    A missing spec or decoding spec is ``None`` (the caller decides); one that is present but
    does not validate is an :class:`ExportError`, never silently replaced by a default.
    """
    from pydantic import ValidationError

    props = {p.key: p.value for p in model.metadata_props}
    name = props.get(META_MODEL_NAME) or "unknown"
    try:
        provenance = TrainingProvenance.model_validate_json(props.get(META_PROVENANCE) or "{}")
    except ValidationError:
        provenance = TrainingProvenance()
    raw = props.get(META_PARAMETERS, "")
    spec = _metadata_spec(props, META_PREPROCESS, PreprocessSpec, "preprocessing spec", where)
    decode = _metadata_spec(props, META_DECODE, DecodeSpec, "decoding spec", where)
    return OnnxMetadata(name, provenance, int(raw) if raw.isdigit() else None, spec, decode)


def _metadata_spec(
    props: dict[str, str], key: str, model: type[_Spec], what: str, where: str
) -> _Spec | None:
    """The spec recorded under ``key``, ``None`` when absent; :class:`ExportError` when invalid."""
    from pydantic import ValidationError

    if not props.get(key):
        return None
    try:
        return model.model_validate_json(props[key])
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ExportError(
            f"{where}: metadata {key} is not a valid {what} "
            f"({'.'.join(str(p) for p in first['loc'])}: {first['msg']}); re-export it with "
            "build-engine --checkpoint"
        ) from exc
