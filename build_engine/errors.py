"""Typed exceptions of ``build-engine``.

Library code raises these; only :func:`build_engine.cli.main` turns them into one-line messages
and exit codes (:func:`build_engine.cli.exit_code`: :class:`UsageError` and its subclasses 2,
:class:`AccuracyGateError` 3, :class:`StaleError` and the contract's ``ManifestError`` 4,
everything else 1). Each message names the file or option at fault and what to do about it.
"""

from edge_agent.contract.errors import GalaxyEdgeError


class BuildEngineError(GalaxyEdgeError):
    """Base class of every error ``build-engine`` raises on purpose."""


class UsageError(BuildEngineError):
    """Options or inputs that are wrong before any work starts: contradictory or missing
    options, a path that does not exist, a spec that does not fit (exit status 2, like argparse)."""


class ExportError(BuildEngineError):
    """A checkpoint or ONNX file that cannot be exported, read or checked."""


class PrecisionError(UsageError):
    """A precision (or DLA core) that this device or backend cannot provide."""


class CalibrationError(BuildEngineError):
    """A calibration or gate data set that is missing, empty or unlabelled, or a failed quantization."""


class GateDataError(UsageError):
    """A gate set too small (or empty) for the accuracy gate to decide anything."""


class AccuracyGateError(BuildEngineError):
    """A quantized model whose top-1 fell further than the threshold below the FP32 reference."""


class KernelBuildError(BuildEngineError):
    """The CUDA preprocessing kernels did not compile (or spilled registers)."""


class TensorRTBuildError(BuildEngineError):
    """TensorRT could not parse the ONNX or build a plan from it."""


class BundleError(BuildEngineError):
    """A bundle that cannot be written (e.g. an unwritable output directory)."""


class StaleError(BuildEngineError):
    """A bundle that is not valid for this device, TensorRT version or model."""
