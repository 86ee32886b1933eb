"""The bundle manifest: what ``build-engine`` writes and ``edge-agent`` loads.

A bundle is a directory holding ``manifest.json`` and the files it names. The manifest is
validated strictly (an unknown key is an error) and every file's sha256 is checked on load.
Change this schema deliberately: bump :data:`FORMAT_VERSION` and say so in the changelog.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.contract.classes import CLASS_NAMES
from edge_agent.contract.decode_config import DecodeSpec
from edge_agent.contract.errors import ManifestError, StaleBundleError
from edge_agent.contract.preprocess import PreprocessSpec

# 2: OpenVINO bundles (backend, ``openvino``, precision bf16), the gate's paired interval and
#    the model's calibration; a version-1 manifest is a subset and still reads.
# 3: ``decode``, the decoding spec (stretch, FITS HDU/bands) the model was trained with; older
#    manifests lack it and read as the defaults, which every stage used before it travelled.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MANIFEST_NAME = "manifest.json"

Precision = Literal["fp32", "fp16", "bf16", "int8"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassEntry(_Strict):
    id: int = Field(ge=0)
    name: str


class ModelInfo(_Strict):
    name: str = Field(description="timm architecture name, e.g. mobilevit_s")
    classes: list[ClassEntry]
    parameters: int | None = None


class BatchProfile(_Strict):
    min: int = Field(1, ge=1)
    opt: int = Field(8, ge=1)
    max: int = Field(16, ge=1)


class Quantization(_Strict):
    method: Literal[
        "none", "fp16-convert", "qdq-modelopt", "qdq-onnxruntime", "qdq-qat", "qdq-external"
    ] = "none"
    calibration_source: str | None = None
    calibration_images: int | None = Field(None, ge=1)
    excluded_ops: list[str] = Field(default_factory=list)
    calibration_method: str | None = Field(
        None, description="how activation ranges were chosen, e.g. entropy, max, minmax, qat"
    )
    excluded_nodes: list[str] = Field(
        default_factory=list,
        description="layers kept out of INT8 by the per-layer sensitivity pass (most sensitive first)",
    )
    sensitivity: str | None = Field(
        None, description="how excluded_nodes were chosen: mode, images, scores, in one line"
    )


class AccuracyGate(_Strict):
    reference: str = Field(
        description="what the candidate was compared with, e.g. fp32 onnxruntime"
    )
    images: int = Field(ge=1)
    source: str
    reference_top1: float = Field(ge=0.0, le=1.0)
    candidate_top1: float = Field(ge=0.0, le=1.0)
    delta_points: float = Field(description="(reference - candidate) top-1, in percentage points")
    agreement: float = Field(ge=0.0, le=1.0, description="share of images with equal top-1")
    threshold_points: float
    passed: bool
    # What the gate could show (absent in bundles built before the paired interval).
    min_images: int | None = Field(None, ge=1, description="smallest gate set build-engine accepts")
    both_correct: int | None = Field(None, ge=0, description="images both models got right")
    candidate_only_correct: int | None = Field(
        None, ge=0, description="discordant: the candidate right, the reference wrong"
    )
    reference_only_correct: int | None = Field(
        None, ge=0, description="discordant: the reference right, the candidate wrong"
    )
    interval_low_points: float | None = Field(
        None, description="lower end of the interval of candidate - reference top-1, in points"
    )
    interval_high_points: float | None = Field(
        None, description="upper end of the interval of candidate - reference top-1, in points"
    )
    interval_level: float | None = Field(
        None, gt=0.0, lt=1.0, description="two-sided level of the interval, e.g. 0.9"
    )
    interval_method: str | None = Field(None, description="how the interval was computed")
    rule: str | None = Field(None, description="the decision rule, in words")
    finding: str | None = Field(
        None, description="what the gate could and could not show, in one sentence"
    )


class TensorRTInfo(_Strict):
    version: str
    gpu_name: str
    compute_capability: str = Field(description="e.g. '8.7'")
    dla_core: int | None = None
    l4t_release: str | None = None
    workspace_bytes: int | None = None
    timing_cache: str | None = None
    plan_builder: str | None = Field(
        default=None,  # a keyword: pyright's dataclass_transform reads only default=
        description="what compiled the plan: None or 'tensorrt' for TensorRT's ONNX parser "
        "(build_engine/tensorrt_build.py), 'torch-tensorrt <version>' for an ExportedProgram "
        "compiled by torch-tensorrt (build_engine/torch_tensorrt_build.py)",
    )


class OpenVinoInfo(_Strict):
    """The compiled model an OpenVINO bundle caches, and what it was compiled for.

    A compiled model only loads on the OpenVINO version that wrote it and is tuned (and gated)
    for the CPU's instruction sets: both are its key, like a TensorRT plan's.
    """

    version: str = Field(description="openvino.__version__ that compiled the model")
    device: str = Field("CPU", description="OpenVINO device name")
    cpu_name: str = Field(description="FULL_DEVICE_NAME of the CPU")
    isa: list[str] = Field(description="the CPU's instruction sets that change the kernels")
    inference_precision: Literal["f32", "bf16"] = Field(
        description="INFERENCE_PRECISION_HINT: precision of the layers not quantized in the ONNX"
    )
    compiled_file: str = Field(description="the exported compiled model (Core.import_model)")


class KernelInfo(_Strict):
    source_sha256: str
    cuda_version: str
    arch: str = Field(description="e.g. sm_87")
    cubin: str | None = None
    ptx: str | None = None


class TrainingProvenance(_Strict):
    dataset: str | None = None
    split_seed: int | None = None
    test_accuracy: float | None = None
    macro_f1: float | None = None
    checkpoint_sha256: str | None = None


class Calibration(_Strict):
    """How the model's probabilities are calibrated: ``softmax(logits / temperature)``.

    Temperature scaling (Guo et al. 2017): one scalar fitted after training by minimising the
    negative log-likelihood on held-out images (the run's validation split). It changes no
    prediction, only how far the confidence can be trusted; the ECE figures say how far.
    """

    method: Literal["temperature"] = "temperature"
    temperature: float = Field(gt=0.0, description="T of softmax(logits / T); 1 changes nothing")
    fitted_on: str = Field(description="the labelled images T was fitted on, in words")
    images: int = Field(ge=1, description="how many images T was fitted on")
    bins: int = Field(15, ge=1, description="equal-width confidence bins of the ECE figures")
    ece_before: float = Field(ge=0.0, le=1.0, description="ECE of softmax(logits) on fitted_on")
    ece_after: float = Field(ge=0.0, le=1.0, description="ECE of softmax(logits / T) there")
    test_images: int | None = Field(None, ge=1, description="held-out test images, if any")
    test_ece_before: float | None = Field(None, ge=0.0, le=1.0, description="ECE on the test")
    test_ece_after: float | None = Field(None, ge=0.0, le=1.0, description="ECE on it with T")


class Manifest(_Strict):
    format_version: int = FORMAT_VERSION
    created: str = Field(description="ISO 8601 UTC time of the build")
    builder: str = Field(description="galaxy-edge version that wrote the bundle")
    model: ModelInfo
    preprocess: PreprocessSpec
    decode: DecodeSpec = Field(
        default_factory=DecodeSpec,
        description="how files become pixels (stretch of deep data, FITS HDU/bands) as the model "
        "was trained; absent in bundles before format 3, which read as the defaults",
    )
    backend: Literal["onnxruntime", "tensorrt", "openvino"]
    precision: Precision
    model_file: str = Field(description="the file the backend loads: an .onnx or a .plan")
    input_name: str = "input"
    output_name: str = "logits"
    batch: BatchProfile = Field(default_factory=BatchProfile)
    source_onnx_sha256: str
    quantization: Quantization = Field(default_factory=Quantization)
    accuracy_gate: AccuracyGate | None = None
    tensorrt: TensorRTInfo | None = None
    openvino: OpenVinoInfo | None = None
    kernels: KernelInfo | None = None
    training: TrainingProvenance = Field(default_factory=TrainingProvenance)
    calibration: Calibration | None = Field(
        None, description="temperature scaling of the probabilities; None: raw softmax"
    )
    files: dict[str, str] = Field(default_factory=dict, description="file name -> sha256")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def official_classes() -> list[ClassEntry]:
    return [ClassEntry(id=i, name=n) for i, n in enumerate(CLASS_NAMES)]


def write_manifest(bundle_dir: Path, manifest: Manifest) -> Manifest:
    """Hash every regular file of ``bundle_dir`` into ``files`` and write ``manifest.json``.

    The manifest is written to a temporary file and renamed, so a reader never sees half of it.
    Returns the manifest as written.
    """
    bundle_dir = Path(bundle_dir)
    files = {
        p.name: sha256_file(p)
        for p in sorted(bundle_dir.iterdir())
        if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(".")
    }
    if manifest.model_file not in files:
        raise ManifestError(f"model file {manifest.model_file!r} is not in {bundle_dir}")
    final = manifest.model_copy(update={"files": files})
    text = json.dumps(final.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=bundle_dir, prefix=".manifest.", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, bundle_dir / MANIFEST_NAME)
    return final


def read_manifest(bundle_dir: Path) -> Manifest:
    """Parse and validate ``manifest.json``; does not check file hashes (see :func:`load_bundle`)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: no bundle manifest here; run build-engine to make a bundle")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(
            f"{path}: unreadable manifest ({exc}); rebuild with build-engine"
        ) from exc
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version not in READABLE_VERSIONS:
        raise ManifestError(
            f"{path}: manifest format {version!r}, this agent reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}; "
            "rebuild the bundle with this version's build-engine"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ManifestError(f"{path}: {where}: {first['msg']}; rebuild with build-engine") from exc
    if [(c.id, c.name) for c in manifest.model.classes] != list(enumerate(CLASS_NAMES)):
        raise ManifestError(
            f"{path}: class list differs from the official Galaxy10 DECaLS ids; "
            "retrain or rebuild with this version"
        )
    return manifest


def verify_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Raise :class:`ManifestError` unless every listed file exists with its recorded sha256."""
    bundle_dir = Path(bundle_dir)
    if manifest.model_file not in manifest.files:
        raise ManifestError(
            f"{bundle_dir}: model file {manifest.model_file!r} has no recorded hash"
        )
    for name, expected in manifest.files.items():
        path = bundle_dir / name
        if not path.is_file():
            raise ManifestError(f"{path}: missing from the bundle; run build-engine again")
        actual = sha256_file(path)
        if actual != expected:
            raise ManifestError(
                f"{path}: sha256 {actual[:12]}… does not match the manifest's {expected[:12]}…; "
                "the bundle was modified or corrupted, run build-engine again"
            )


def load_bundle(bundle_dir: Path) -> Manifest:
    """Read the manifest and verify every file's hash."""
    manifest = read_manifest(bundle_dir)
    verify_files(bundle_dir, manifest)
    return manifest


def check_device(
    manifest: Manifest,
    *,
    tensorrt_version: str | None,
    gpu_name: str | None,
    compute_capability: str | None,
) -> None:
    """Raise :class:`StaleBundleError` when a TensorRT plan was built for another setup.

    ONNX Runtime bundles run anywhere and always pass.
    """
    if manifest.backend != "tensorrt":
        return
    info = manifest.tensorrt
    if info is None:
        raise ManifestError("TensorRT bundle without its tensorrt section; run build-engine again")
    mismatches = []
    if tensorrt_version is None:
        raise StaleBundleError(
            "bundle holds a TensorRT plan but TensorRT does not import here; "
            "use an ONNX Runtime bundle (build-engine --backend onnxruntime)"
        )
    if info.version != tensorrt_version:
        mismatches.append(f"TensorRT {info.version} (here {tensorrt_version})")
    if gpu_name is not None and info.gpu_name != gpu_name:
        mismatches.append(f"GPU {info.gpu_name!r} (here {gpu_name!r})")
    if compute_capability is not None and info.compute_capability != compute_capability:
        mismatches.append(
            f"compute capability {info.compute_capability} (here {compute_capability})"
        )
    if mismatches:
        raise StaleBundleError(
            "plan was built for " + ", ".join(mismatches) + "; run build-engine on this device"
        )


def check_openvino(manifest: Manifest, *, version: str | None, isa: list[str]) -> None:
    """Raise :class:`StaleBundleError` when an OpenVINO bundle was compiled for another setup.

    Other bundles always pass. ``isa`` is this CPU's list (see ``OpenVinoInfo.isa``).
    """
    if manifest.backend != "openvino":
        return
    info = manifest.openvino
    if info is None:
        raise ManifestError("OpenVINO bundle without its openvino section; run build-engine again")
    if version is None:
        raise StaleBundleError(
            "bundle holds an OpenVINO compiled model but openvino does not import here; "
            "install galaxy-edge[openvino] or use an ONNX Runtime bundle"
        )
    mismatches = []
    if info.version != version:
        mismatches.append(f"OpenVINO {info.version} (here {version})")
    if sorted(info.isa) != sorted(isa):
        missing = sorted(set(info.isa) - set(isa))
        extra = sorted(set(isa) - set(info.isa))
        what = ", ".join([*(f"-{f}" for f in missing), *(f"+{f}" for f in extra)])
        mismatches.append(f"another CPU ({what})")
    if mismatches:
        raise StaleBundleError(
            "compiled model was built for "
            + ", ".join(mismatches)
            + "; run build-engine --if-stale on this host"
        )
