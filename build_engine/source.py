"""The model a build starts from, and what travels with it into the manifest.

A build starts from a training checkpoint (exported to ONNX here, :func:`checkpoint_source`) or
from an ONNX file (:func:`onnx_source`). Either way the preprocessing spec in the manifest is the
one the model was trained with: read from the checkpoint's config, or from the ONNX file's
metadata (written at export); an ONNX file without it is refused unless the caller gives the
spec explicitly. The decoding spec (stretch of deep data, FITS HDU/bands) travels the same way and
is what calibration and the gate decode their images with; an ONNX file without it was exported
before it travelled and gets the defaults (or ``--decode-spec``). The model's name, parameter
count, training provenance and probability calibration come along, and
:meth:`ModelSource.manifest` puts them into every bundle's manifest in one place.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from build_engine.calibration_metadata import read_calibration_metadata
from build_engine.errors import UsageError
from build_engine.export import (
    EXPORT_STEPS,
    ExportReport,
    OnnxInfo,
    describe_onnx,
    export_checkpoint,
    load_onnx,
)
from build_engine.onnx_metadata import META_DECODE, META_PREPROCESS, read_metadata
from build_engine.progress import bar
from edge_agent.contract.decode_config import DEFAULT_DECODE, DecodeSpec
from edge_agent.contract.manifest import (
    Calibration,
    Manifest,
    ModelInfo,
    TrainingProvenance,
    official_classes,
    sha256_file,
)
from edge_agent.contract.preprocess import PreprocessSpec

if TYPE_CHECKING:
    from build_engine.request import BuildRequest

NO_SPEC = (
    "{path}: no preprocessing spec in its metadata ({key}), so the pixels the model expects are "
    "unknown; export it with build-engine --checkpoint RUN (which records the spec it was "
    "trained with), or give it explicitly: --preprocess-spec SPEC.json, e.g. "
    '{{"input_size": {size}, "crop": "center_square", "scale": 0.00784313725490196, '
    '"offset": -1.0}}'
)
FROM_CHECKPOINT = "the checkpoint's training config"


@dataclass
class ModelSource:
    """The FP32 ONNX a build starts from, and what the model carries with it."""

    path: Path
    model_name: str
    parameters: int | None
    provenance: TrainingProvenance
    info: OnnxInfo
    spec: PreprocessSpec
    spec_origin: str
    decode: DecodeSpec = field(default_factory=DecodeSpec)
    decode_origin: str = "the defaults"
    calibration: Calibration | None = None

    def log_specs(self, log: Callable[[str], None]) -> None:
        """Say which preprocessing and decoding specs the build uses, and where they came from."""
        log(f"preprocessing spec from {self.spec_origin}: {spec_line(self.spec)}")
        log(f"decoding spec from {self.decode_origin}: {decode_line(self.decode)}")

    def manifest(self, **built: Any) -> Manifest:
        """The bundle's manifest: what travels with the model from here, the rest from ``built``
        (backend, precision, model file, tensor names, batch, quantization, gate, backend info)."""
        return Manifest(
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            builder=builder_name(),
            model=ModelInfo(
                name=self.model_name, classes=official_classes(), parameters=self.parameters
            ),
            preprocess=self.spec,
            decode=self.decode,
            source_onnx_sha256=sha256_file(self.path),
            training=self.provenance,
            calibration=self.calibration,
            **built,
        )


def builder_name() -> str:
    """The manifest's ``builder``: this package and its version."""
    try:
        return f"galaxy-edge {importlib.metadata.version('galaxy-edge')}"
    except importlib.metadata.PackageNotFoundError:
        return "galaxy-edge (not installed)"


def exported_source(report: ExportReport) -> ModelSource:
    """The source of a checkpoint exported by :func:`build_engine.export.export_checkpoint`."""
    assert report.spec is not None and report.decode is not None
    where = str(report.onnx_path)
    return ModelSource(
        report.onnx_path,
        report.model_name,
        report.parameters,
        report.provenance,
        report.info,
        report.spec,
        FROM_CHECKPOINT,
        report.decode,
        FROM_CHECKPOINT,
        read_calibration_metadata(load_onnx(report.onnx_path), where),
    )


def checkpoint_source(
    request: BuildRequest, scratch: Path, log: Callable[[str], None]
) -> ModelSource:
    """Export ``request.checkpoint`` to ``scratch/source.onnx`` (checked against PyTorch)."""
    assert request.checkpoint is not None
    log(f"exporting {request.checkpoint} to ONNX (opset 17, static size, dynamic batch)")
    with bar("export", EXPORT_STEPS, request.progress) as shown:

        def step(name: str) -> None:
            shown.set_postfix_str(name, refresh=False)
            shown.update()

        report: ExportReport = export_checkpoint(
            request.checkpoint, scratch / "source.onnx", step=step
        )
    simplified = "simplified" if report.simplified else f"not simplified ({report.simplify_note})"
    log(f"export checked: max |onnx - torch| = {report.max_abs_diff:.2e} on 3 images, {simplified}")
    return exported_source(report)


def onnx_source(request: BuildRequest) -> ModelSource:
    """``request.onnx`` with the specs it records, or the ones the request gives for it."""
    assert request.onnx is not None
    where = str(request.onnx)
    model = load_onnx(request.onnx)
    info = describe_onnx(model, where)
    meta = read_metadata(model, where)
    explicit = request.preprocess
    if meta.spec is not None and explicit is not None and meta.spec != explicit:
        raise UsageError(
            f"{where} records the spec it was trained with ({meta.spec.model_dump_json()}), "
            f"--preprocess-spec differs ({explicit.model_dump_json()}); drop the option"
        )
    spec = meta.spec or explicit
    if spec is None:
        raise UsageError(NO_SPEC.format(path=where, key=META_PREPROCESS, size=info.input_size))
    if spec.input_size != info.input_size:
        raise UsageError(
            f"{where}: the preprocessing spec's input_size {spec.input_size} does not match the "
            f"graph's input {info.input_name!r} of {info.input_size}x{info.input_size}; fix the spec"
        )
    origin = "the ONNX file's metadata" if meta.spec is not None else "--preprocess-spec"
    if meta.decode is not None and request.decode is not None and meta.decode != request.decode:
        raise UsageError(
            f"{where} records the decoding spec it was trained with "
            f"({meta.decode.model_dump_json()}), --decode-spec differs "
            f"({request.decode.model_dump_json()}); drop the option"
        )
    decode = DEFAULT_DECODE
    decode_origin = f"the defaults (no {META_DECODE} in {where}: exported before it travelled)"
    if meta.decode is not None:
        decode, decode_origin = meta.decode, "the ONNX file's metadata"
    elif request.decode is not None:
        decode, decode_origin = request.decode, "--decode-spec"
    return ModelSource(
        Path(request.onnx),
        meta.model_name,
        meta.parameters,
        meta.provenance,
        info,
        spec,
        origin,
        decode,
        decode_origin,
        read_calibration_metadata(model, where),
    )


def load_source(request: BuildRequest, scratch: Path, log: Callable[[str], None]) -> ModelSource:
    """The source of ``request``: its checkpoint exported into ``scratch``, or its ONNX file."""
    if request.checkpoint is not None:
        return checkpoint_source(request, scratch, log)
    return onnx_source(request)


def decode_line(decode: DecodeSpec) -> str:
    s, f = decode.stretch, decode.fits
    return (
        f"stretch {s.method} {s.low_percentile:g}-{s.high_percentile:g}%"
        + (f" (a {s.asinh_a:g})" if s.method == "asinh" else "")
        + f", FITS HDU {'first image' if f.hdu is None else f.hdu}"
        + (f", bands {f.bands}" if f.bands is not None else "")
    )


def spec_line(spec: PreprocessSpec) -> str:
    return (
        f"{spec.input_size}x{spec.input_size}, crop {spec.crop}, {spec.interpolation}, "
        f"{spec.channel_order}, x * {spec.scale:.6g} + {spec.offset:g}"
    )
