"""An ONNX file that is INT8 already (Q/DQ from quantization-aware training), gated as it is.

``galaxy-train qat`` writes an ONNX with explicit Q/DQ. build-engine must not quantize it again,
and cannot gate it against itself: the reference of its accuracy gate is the FP32 model it was
fine-tuned from, given with ``--reference RUN|FP32.onnx``. Rules, checked before anything slow:

- a Q/DQ ``--onnx`` needs ``--precision int8``, ``--reference`` (else it would be gated
  against itself, which always passes: refused) and held-out labelled images for the gate;
- ``--reference`` is only for such a file;
- a reference checkpoint must be the one the QAT run started from (its weights' sha256 is in
  the QAT file's metadata), when the file says.

The Q/DQ graph must pass the same check as build-engine's own quantization
(:func:`build_engine.qdq_graph.check_qdq`: symmetric, zero points 0, LayerNorm/Softmax/Add not
reading INT8).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from build_engine.errors import ExportError, UsageError
from build_engine.export import load_onnx
from edge_agent.contract.decode_config import DecodeSpec

if TYPE_CHECKING:
    from build_engine.images import LabelledBatch
    from build_engine.request import BuildRequest
    from edge_agent.contract.manifest import Quantization
    from edge_agent.contract.preprocess import PreprocessSpec

META_QAT = "galaxy_edge.qat"  # written by training/qat.py


def has_qdq(path: Path) -> bool:
    """Whether the ONNX file at ``path`` holds QuantizeLinear/DequantizeLinear nodes.

    A file that is no ONNX model at all is not pre-quantized here: the option checks go on, and
    the build reports the broken file where it loads it (usage mistakes first, exit 2).
    """
    try:
        model = load_onnx(path)
    except ExportError:
        return False
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def qat_metadata(path: Path) -> dict[str, object]:
    """The QAT run's record in the file's metadata (empty when it has none)."""
    model = load_onnx(path)
    for prop in model.metadata_props:
        if prop.key == META_QAT:
            try:
                value = json.loads(prop.value)
            except json.JSONDecodeError:
                return {}
            return value if isinstance(value, dict) else {}
    return {}


def check_request(request: BuildRequest, precision: str | None) -> bool:
    """Raise :class:`UsageError` on a wrong combination; returns whether ``--onnx`` is pre-quantized."""
    onnx, reference = request.onnx, request.reference
    quantized = onnx is not None and Path(onnx).is_file() and has_qdq(Path(onnx))
    if not quantized:
        if reference is not None:
            raise UsageError(
                "--reference is for an --onnx file that is INT8 already (Q/DQ, e.g. from "
                "galaxy-train qat); drop it"
            )
        return False
    if precision != "int8":
        raise UsageError(
            f"{onnx} is INT8 already (Q/DQ nodes): build it with --precision int8 (it is not "
            "converted to another precision)"
        )
    if reference is None:
        raise UsageError(
            f"{onnx} is INT8 already (Q/DQ nodes): give the FP32 model it came from with "
            "--reference RUN|FP32.onnx, so the accuracy gate compares it with that model "
            "(gating it against itself would always pass)"
        )
    if not Path(reference).exists():
        raise UsageError(f"--reference {reference}: not found")
    if request.calib_data is None and request.gate_data is None:
        raise UsageError(
            "an INT8 Q/DQ --onnx needs held-out labelled images for the accuracy gate: "
            "--gate-data PATH (or --calib-data PATH to split them from)"
        )
    return True


def reference_onnx(reference: Path, candidate: Path, scratch: Path) -> Path:
    """The FP32 reference as an ONNX file: ``reference`` itself, or exported from a checkpoint.

    A checkpoint must be the one the QAT run started from, when the candidate records it.
    """
    from build_engine.export import checkpoint_sha256, export_checkpoint

    reference = Path(reference)
    if reference.suffix == ".onnx":
        if has_qdq(reference):
            raise UsageError(f"--reference {reference} has Q/DQ nodes; give the FP32 model")
        return reference
    started_from = qat_metadata(candidate).get("source_checkpoint_sha256")
    sha = checkpoint_sha256(reference)
    if started_from and sha != started_from:
        raise UsageError(
            f"--reference {reference} (weights sha256 {str(sha)[:12]}...) is not the run "
            f"{candidate} was fine-tuned from ({str(started_from)[:12]}...); give that run"
        )
    out = scratch / "reference_fp32.onnx"
    export_checkpoint(reference, out)
    return out


def take_as_is(src: Path, dst: Path) -> int:
    """Check the Q/DQ graph of ``src`` and copy it to ``dst`` unchanged; returns its quantizers."""
    from build_engine.qdq_graph import check_qdq

    pairs = check_qdq(load_onnx(src))
    shutil.copyfile(src, dst)
    return pairs


def prequantized_candidate(
    request: BuildRequest,
    source: Path,
    spec: PreprocessSpec,
    scratch: Path,
    log: Callable[[str], None],
    *,
    decode: DecodeSpec | None = None,
) -> tuple[Path, Path, Quantization, LabelledBatch]:
    """(candidate, FP32 reference, quantization record, gate images) for a Q/DQ ``source``."""
    from build_engine import gate as gate_mod
    from build_engine.images import load_calibration_and_gate, load_gate_only
    from edge_agent.contract.manifest import Quantization

    assert request.reference is not None
    decoder = (decode or DecodeSpec()).decoder()  # the pixels the model was trained on
    if request.gate_data is not None:
        gate_data = load_gate_only(request.gate_data, request.gate_size, spec, decoder)
    else:
        assert request.calib_data is not None
        _, gate_data = load_calibration_and_gate(
            request.calib_data, request.calib_size, request.gate_size, spec=spec, decode=decoder
        )
    gate_mod.check_size(len(gate_data), request.gate_min_images)
    candidate = scratch / "model_int8.onnx"
    pairs = take_as_is(source, candidate)
    reference = reference_onnx(request.reference, source, scratch)
    record = qat_metadata(source)
    log(
        f"INT8 Q/DQ taken as it is from {source} ({pairs} quantizers"
        + (f", QAT: {record.get('steps')} steps from {request.reference}" if record else "")
        + f"); gated against {request.reference} on {len(gate_data)} held-out images"
    )
    quantization = Quantization.model_validate(
        {
            "method": "qdq-qat" if record else "qdq-external",
            "calibration_source": f"quantization-aware training ({json.dumps(record, sort_keys=True)})"
            if record
            else f"{source} (quantized elsewhere)",
            "calibration_images": record.get("calibration_images") if record else None,
            "calibration_method": "qat" if record else None,
        }
    )
    return candidate, reference, quantization, gate_data
