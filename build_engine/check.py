"""Is a bundle valid for this device, this TensorRT and this model? And if not, why not.

``build-engine --check BUNDLE`` prints the reasons and exits non-zero when there are any;
``--if-stale`` rebuilds only then (the systemd build unit runs it at every boot, so a JetPack
update or a new model triggers a rebuild and nothing else does). A reason is one line that says
what differs and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from build_engine.device import DeviceInfo
from edge_agent.contract.decode_config import DecodeSpec
from edge_agent.contract.errors import ManifestError, StaleBundleError
from edge_agent.contract.manifest import BatchProfile, Manifest, check_device, load_bundle
from edge_agent.contract.preprocess import PreprocessSpec


@dataclass(frozen=True)
class Wanted:
    """What the caller would build now; ``None`` fields are not compared."""

    source_onnx_sha256: str | None = None
    checkpoint_sha256: str | None = None
    backend: str | None = None
    precision: str | None = None
    batch: BatchProfile | None = None
    dla_core: int | None = None
    accept_fp16_fallback: bool = False
    preprocess: PreprocessSpec | None = None  # an explicit --preprocess-spec
    decode: DecodeSpec | None = None  # an explicit --decode-spec


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _device_reasons(manifest: Manifest, device: DeviceInfo) -> list[str]:
    reasons: list[str] = []
    try:
        check_device(
            manifest,
            tensorrt_version=device.tensorrt_version,
            gpu_name=device.gpu_name,
            compute_capability=device.compute_capability,
        )
    except StaleBundleError as exc:
        reasons.append(str(exc))
    except ManifestError as exc:
        reasons.append(str(exc))
    if manifest.backend == "openvino":
        from edge_agent.backends.openvino_host import probe as probe_openvino
        from edge_agent.contract.manifest import check_openvino

        host = probe_openvino()
        try:
            check_openvino(manifest, version=host.version, isa=host.isa)
        except ManifestError as exc:  # StaleBundleError included
            reasons.append(str(exc))
    trt = manifest.tensorrt
    if trt is not None:
        if trt.l4t_release and device.l4t_release and trt.l4t_release != device.l4t_release:
            reasons.append(
                f"plan was built on L4T {trt.l4t_release}, this device runs {device.l4t_release}; "
                "run build-engine on this device"
            )
        if trt.dla_core is not None and trt.dla_core >= device.dla_cores:
            reasons.append(
                f"plan uses DLA core {trt.dla_core}, this device has {device.dla_cores}; "
                "rebuild without --dla-core"
            )
    kernels = manifest.kernels
    if kernels is not None:
        if device.arch is not None and kernels.arch != device.arch:
            reasons.append(
                f"preprocessing kernels are for {kernels.arch}, this GPU is {device.arch}; "
                "run build-engine on this device"
            )
        if device.cuda_version and _major_minor(kernels.cuda_version) != _major_minor(
            device.cuda_version
        ):
            reasons.append(
                f"preprocessing kernels were compiled with CUDA {kernels.cuda_version}, this device "
                f"has {device.cuda_version}; run build-engine on this device"
            )
    return reasons


def _wanted_reasons(manifest: Manifest, wanted: Wanted) -> list[str]:
    reasons: list[str] = []
    if wanted.source_onnx_sha256 and manifest.source_onnx_sha256 != wanted.source_onnx_sha256:
        reasons.append(
            f"bundle was built from ONNX {manifest.source_onnx_sha256[:12]}…, the given model is "
            f"{wanted.source_onnx_sha256[:12]}…; rebuild"
        )
    built_from = manifest.training.checkpoint_sha256
    if wanted.checkpoint_sha256 and built_from != wanted.checkpoint_sha256:
        reasons.append(
            f"bundle was built from checkpoint {(built_from or 'unknown')[:12]}…, the given one is "
            f"{wanted.checkpoint_sha256[:12]}…; rebuild"
        )
    if wanted.preprocess is not None and manifest.preprocess != wanted.preprocess:
        reasons.append(
            f"bundle preprocessing spec is {manifest.preprocess.model_dump_json()}, wanted "
            f"{wanted.preprocess.model_dump_json()}; rebuild"
        )
    if wanted.decode is not None and manifest.decode != wanted.decode:
        reasons.append(
            f"bundle decoding spec is {manifest.decode.model_dump_json()}, wanted "
            f"{wanted.decode.model_dump_json()}; rebuild"
        )
    if wanted.backend and manifest.backend != wanted.backend:
        reasons.append(f"bundle backend is {manifest.backend}, wanted {wanted.backend}")
    if wanted.precision and manifest.precision != wanted.precision:
        fallback_ok = (
            wanted.precision == "int8"
            and wanted.accept_fp16_fallback
            and manifest.precision == "fp16"
        )
        if not fallback_ok:
            reasons.append(f"bundle precision is {manifest.precision}, wanted {wanted.precision}")
    if wanted.batch and manifest.backend == "tensorrt" and manifest.batch != wanted.batch:
        reasons.append(
            f"bundle batch profile is {manifest.batch.model_dump()}, wanted {wanted.batch.model_dump()}"
        )
    if manifest.backend == "tensorrt" and wanted.backend == "tensorrt":
        built_dla = manifest.tensorrt.dla_core if manifest.tensorrt else None
        if built_dla != wanted.dla_core:
            reasons.append(f"bundle DLA core is {built_dla}, wanted {wanted.dla_core}")
    return reasons


def stale_reasons(bundle_dir: Path, device: DeviceInfo, wanted: Wanted | None = None) -> list[str]:
    """Every reason the bundle in ``bundle_dir`` should not be used here; empty when valid."""
    try:
        manifest = load_bundle(Path(bundle_dir))
    except ManifestError as exc:
        return [str(exc)]
    reasons = _device_reasons(manifest, device)
    if wanted is not None:
        reasons.extend(_wanted_reasons(manifest, wanted))
    return reasons
