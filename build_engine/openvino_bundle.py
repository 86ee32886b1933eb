"""An OpenVINO bundle: FP32, BF16 or INT8, each gated through OpenVINO, the fastest that passes.

The build path of ``--backend openvino`` (or ``auto`` on an Intel CPU without TensorRT): the
source as every path reads it (:mod:`build_engine.source`), the INT8 candidate when calibration
images are given (:mod:`build_engine.lower_precision`), then the choice among the candidates
(:mod:`build_engine.openvino_choice`) and the compiled model for this CPU
(:mod:`build_engine.openvino_build`), written into the bundle beside the ONNX it came from.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from build_engine import openvino_choice as choice
from build_engine.bundle import write_bundle
from build_engine.export import describe_onnx, load_onnx
from build_engine.images import LabelledBatch, load_gate_only
from build_engine.lower_precision import Candidate, int8_candidate
from build_engine.openvino_build import openvino_host, write_compiled
from build_engine.request import BuildRequest
from build_engine.source import load_source
from edge_agent.contract.manifest import Manifest, Quantization


def build_openvino(
    request: BuildRequest, log: Callable[[str], None], notice: str | None
) -> Manifest:
    """Build the OpenVINO bundle ``request`` asks for (validated already); returns its manifest."""
    host = openvino_host()
    if notice:
        log(notice)
    wanted = request.precision
    with tempfile.TemporaryDirectory(prefix="build-engine-") as tmp:
        scratch = Path(tmp)
        source = load_source(request, scratch, log)
        spec = source.spec
        source.log_specs(log)
        int8: Candidate | None = None
        gate_data: LabelledBatch | None = None
        if request.calib_data is not None and wanted in (None, "int8"):
            int8, gate_data = int8_candidate(request, "openvino", source, scratch, log)
        elif request.calib_data is not None and wanted == "bf16":
            gate_data = load_gate_only(
                request.calib_data, request.gate_size, spec, source.decode.decoder()
            )
        if request.gate_data is not None and gate_data is None:
            gate_data = load_gate_only(
                request.gate_data, request.gate_size, spec, source.decode.decoder()
            )
        found = choice.candidates(
            wanted, source.path, int8.path if int8 else None, gate_data, host, log
        )
        choice.gate_and_time(
            found,
            source.path,
            gate_data,
            choice.GateSettings(request.gate_threshold, request.gate_min_images, request.progress),
            input_size=spec.input_size,
            opt=request.batch.opt,
            log=log,
        )
        best = choice.choose(found, log)
        quantization = (
            int8.quantization
            if best.precision == "int8" and int8 is not None
            else Quantization.model_validate({})
        )
        compiled, info = write_compiled(best.onnx, scratch, best.hint, host)
        shipped = describe_onnx(load_onnx(best.onnx), str(best.onnx))
        manifest = source.manifest(
            backend="openvino",
            precision=best.precision,
            model_file=info.compiled_file,
            input_name=shipped.input_name,
            output_name=shipped.output_name,
            batch=request.batch,
            quantization=quantization,
            accuracy_gate=best.accuracy,
            openvino=info,
        )
        files = {"model.onnx": best.onnx, info.compiled_file: compiled}
        written = write_bundle(request.out, files, manifest)
    log(f"wrote openvino {best.precision} bundle to {request.out}")
    return written
