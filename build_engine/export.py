"""ONNX export from a training checkpoint, and the checks every ONNX file goes through.

The exported graph has a static spatial size (MobileViT's unfold is traced with Python
arithmetic on the shape, so H and W cannot be dynamic) and a dynamic batch, input ``input`` and
output ``logits`` (readers take the names from the graph, :func:`describe_onnx`, never from
these constants). It is checked with ``onnx.checker``, simplified with onnxsim when onnxsim
succeeds (the report says whether it did), and its outputs are compared with PyTorch's on the
same inputs: an export that does not reproduce the model is an error, not a warning.

What the model needs travels inside the file as ``metadata_props`` (the preprocessing and decoding
specs, name, parameter count, training provenance: :mod:`build_engine.onnx_metadata`), written
here and read back by ``build-engine --onnx``.

torch, timm and the ``training`` package are imported only inside :func:`export_checkpoint` and
:func:`export_module`: an ONNX-only build (``--onnx``) on the device needs neither.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from build_engine.errors import ExportError
from build_engine.onnx_metadata import read_metadata as read_metadata  # bench/ imports it here
from build_engine.onnx_metadata import write_metadata
from edge_agent.contract.classes import NUM_CLASSES
from edge_agent.contract.decode_config import DecodeSpec
from edge_agent.contract.manifest import TrainingProvenance
from edge_agent.contract.preprocess import PreprocessSpec

if TYPE_CHECKING:
    import onnx
    import torch

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17
# |onnx - torch| <= ATOL + RTOL * |torch| on every logit. Measured: 1.2e-7 for mobilevit_s;
# ONNX Runtime's fused kernels change the summation order, hence more than float32 epsilon.
EXPORT_ATOL = 1e-4
EXPORT_RTOL = 1e-3

Step = Callable[[str], None]


def _no_step(name: str) -> None:
    """The default progress hook of the export: report nothing."""


@dataclass(frozen=True)
class OnnxInfo:
    """The facts of an ONNX classifier that a bundle depends on."""

    input_name: str
    output_name: str
    input_size: int
    num_classes: int
    dynamic_batch: bool
    opset: int


@dataclass
class ExportReport:
    """What :func:`export_module` produced and how closely it matches PyTorch."""

    onnx_path: Path
    info: OnnxInfo
    max_abs_diff: float
    simplified: bool
    simplify_note: str = ""
    model_name: str = "unknown"
    parameters: int | None = None
    provenance: TrainingProvenance = field(default_factory=TrainingProvenance)
    spec: PreprocessSpec | None = None
    decode: DecodeSpec | None = None


def load_onnx(path: Path) -> onnx.ModelProto:
    """Read and check an ONNX file; one-line :class:`ExportError` when it is missing or corrupt."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: ONNX file not found; pass --onnx FILE or --checkpoint RUN")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, DecodeError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path}: not a valid ONNX model ({first}); re-export it") from exc
    return model


def _dims(value_info: Any) -> list[int | str]:
    dims: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return dims


def describe_onnx(model: onnx.ModelProto, where: str) -> OnnxInfo:
    """Check that ``model`` is a Galaxy10 classifier (N x 3 x S x S -> N x 10) and describe it."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ExportError(
            f"{where}: expected one input and one output, found {len(inputs)} and "
            f"{len(graph.output)}; export with build-engine --checkpoint"
        )
    inp, out = inputs[0], graph.output[0]
    in_dims, out_dims = _dims(inp), _dims(out)
    if (
        len(in_dims) != 4
        or in_dims[1] != 3
        or in_dims[2] != in_dims[3]
        or not isinstance(in_dims[2], int)
    ):
        raise ExportError(
            f"{where}: input {inp.name!r} has shape {in_dims}, expected [N, 3, S, S] with a "
            "static S; re-export with build-engine --checkpoint"
        )
    if len(out_dims) != 2 or out_dims[1] != NUM_CLASSES:
        raise ExportError(
            f"{where}: output {out.name!r} has shape {out_dims}, expected [N, {NUM_CLASSES}] "
            f"(the {NUM_CLASSES} Galaxy10 DECaLS classes); retrain with num_classes={NUM_CLASSES}"
        )
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return OnnxInfo(
        input_name=inp.name,
        output_name=out.name,
        input_size=int(in_dims[2]),
        num_classes=NUM_CLASSES,
        dynamic_batch=not isinstance(in_dims[0], int),
        opset=opset,
    )


def run_onnx(path: Path, batch: np.ndarray) -> np.ndarray:
    """Logits of ``batch`` from ONNX Runtime on the CPU (the reference runtime of every check)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: batch})[0], dtype=np.float32)


def _simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool, str]:
    """onnxsim's result when it succeeds and checks out; the input and the reason otherwise."""
    try:
        import onnxsim
    except ImportError:
        return model, False, "onnxsim is not installed"
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises bare RuntimeError/ValueError/... from C++
        return model, False, f"onnxsim failed: {type(exc).__name__}: {exc}".splitlines()[0]
    if not ok:
        return model, False, "onnxsim could not validate its result"
    return simplified, True, ""


def export_module(
    model: torch.nn.Module,
    out_path: Path,
    *,
    input_size: int = 256,
    opset: int = OPSET,
    simplify: bool = True,
    atol: float = EXPORT_ATOL,
    rtol: float = EXPORT_RTOL,
    seed: int = 0,
    step: Step = _no_step,
) -> ExportReport:
    """Export ``model`` (eval, CPU, float32) to ``out_path`` and prove it reproduces the model.

    ``step`` is called after each of the three steps (trace, simplify, check) with its name.
    """
    import onnx
    import torch

    out_path = Path(out_path)
    model = model.eval().cpu().float()
    gen = torch.Generator().manual_seed(seed)
    sample = torch.rand((2, 3, input_size, input_size), generator=gen) * 2 - 1
    try:
        with warnings.catch_warnings():
            # MobileViT's unfold computes patch counts from the traced shape; H and W are static
            # here on purpose and the numeric check below proves the trace, so these warnings
            # (and the deprecation note of the TorchScript exporter) would only alarm operators.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (sample,),
                str(out_path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ExportError(f"torch.onnx.export failed: {exc}".splitlines()[0]) from exc
    step("traced")
    exported = load_onnx(out_path)
    note = ""
    simplified = False
    if simplify:
        exported, simplified, note = _simplify(exported)
        if simplified:
            onnx.checker.check_model(exported)
            onnx.save(exported, str(out_path))
    step("simplified" if simplified else "not simplified")
    info = describe_onnx(exported, str(out_path))
    # Three images, not two: a batch size other than the traced one proves the batch is dynamic.
    check = torch.rand((3, 3, input_size, input_size), generator=gen) * 2 - 1
    with torch.no_grad():
        expected = model(check).numpy()
    actual = run_onnx(out_path, check.numpy())
    diff = float(np.max(np.abs(actual - expected)))
    if not np.allclose(actual, expected, atol=atol, rtol=rtol):
        raise ExportError(
            f"{out_path}: ONNX logits differ from PyTorch by up to {diff:.3g} "
            f"(allowed {atol:g} + {rtol:g}*|x|); the model has ops that do not export faithfully"
        )
    step("checked against PyTorch")
    return ExportReport(
        onnx_path=out_path,
        info=info,
        max_abs_diff=diff,
        simplified=simplified,
        simplify_note=note,
        parameters=sum(int(p.numel()) for p in model.parameters()),
    )


def _checkpoint_file(path: Path) -> Path:
    return path / "best.safetensors" if path.is_dir() else path


def checkpoint_sha256(path: Path) -> str | None:
    """sha256 of the checkpoint's weights file (a run directory's ``best.safetensors``)."""
    from edge_agent.contract.manifest import sha256_file

    target = _checkpoint_file(Path(path))
    return sha256_file(target) if target.is_file() else None


EXPORT_STEPS = 4  # load, trace, simplify, check: the ``step`` calls of export_checkpoint


def export_checkpoint(
    checkpoint: Path, out_path: Path, *, simplify: bool = True, step: Step = _no_step
) -> ExportReport:
    """Load a training run (directory) or ``.safetensors`` file and export it to ``out_path``.

    The weights are verified against the sha256 the run recorded (a mismatch is an
    :class:`ExportError`); the spec the model was trained with goes into the ONNX metadata.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise ExportError(
            f"{checkpoint}: checkpoint not found; pass a training run directory or its .safetensors file"
        )
    try:
        from training.checkpoint import load_for_export
    except ImportError as exc:
        raise ExportError(
            f"cannot export {checkpoint}: the training package does not import ({exc}); "
            "install galaxy-edge[train] or pass --onnx FILE"
        ) from exc
    try:
        loaded = load_for_export(checkpoint)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExportError(
            f"{checkpoint}: cannot load checkpoint ({first}); check the run directory"
        ) from exc
    except Exception as exc:
        # training raises its own GalaxyEdgeError subclasses; keep their one-line message.
        from edge_agent.contract.errors import GalaxyEdgeError

        if isinstance(exc, GalaxyEdgeError):
            raise ExportError(str(exc)) from exc
        raise
    if loaded.num_classes != NUM_CLASSES:
        raise ExportError(
            f"{checkpoint}: model has {loaded.num_classes} classes, a bundle needs {NUM_CLASSES} "
            "(the Galaxy10 DECaLS classes); retrain with num_classes=10"
        )
    step("checkpoint loaded")
    report = export_module(
        loaded.model, out_path, input_size=loaded.input_size, simplify=simplify, step=step
    )
    provenance = loaded.provenance
    if provenance.checkpoint_sha256 is None:
        provenance = provenance.model_copy(
            update={"checkpoint_sha256": checkpoint_sha256(checkpoint)}
        )
    report.model_name = loaded.model_name
    report.provenance = provenance
    report.spec = loaded.spec
    report.decode = loaded.decode
    write_metadata(
        out_path, loaded.model_name, provenance, report.parameters, loaded.spec, loaded.decode
    )
    # The temperature of a calibrated run travels in the ONNX too (build_engine/calibration_metadata).
    from build_engine.calibration_metadata import write_calibration_metadata

    write_calibration_metadata(out_path, loaded.calibration)
    return report
