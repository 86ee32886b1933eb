"""``build-engine``: turn a checkpoint or an ONNX file into a bundle the edge agent loads.

Thin on purpose: parses options, probes the device, calls :func:`build_engine.pipeline.build`
or :func:`build_engine.check.stale_reasons`, and turns typed errors into one line and an exit
code of :mod:`edge_agent.contract.exit_codes`. Progress goes to stderr; the result line to stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from build_engine.check import Wanted, stale_reasons
from build_engine.device import DeviceInfo, probe
from build_engine.errors import AccuracyGateError, StaleError, UsageError
from build_engine.export import checkpoint_sha256
from build_engine.gate import DEFAULT_MIN_IMAGES, DEFAULT_THRESHOLD_POINTS
from build_engine.options import decode_spec_file, positive, spec_file
from build_engine.pipeline import build
from build_engine.request import BuildRequest, default_precision, resolve_backend
from edge_agent import __version__
from edge_agent.contract import exit_codes
from edge_agent.contract.errors import GalaxyEdgeError, ManifestError
from edge_agent.contract.manifest import BatchProfile, sha256_file

EXIT_OK = exit_codes.OK
EXIT_ERROR = exit_codes.FAILURE
EXIT_USAGE = exit_codes.USAGE
EXIT_GATE = exit_codes.GATE_REFUSED
EXIT_STALE = exit_codes.INVALID_BUNDLE

NOTES = """\
Without TensorRT, --backend auto writes an OpenVINO bundle on an Intel CPU where openvino is
installed (extra [openvino]), else an ONNX Runtime bundle. An OpenVINO bundle without
--precision ships the fastest of FP32, BF16 (CPUs with AMX or AVX-512 BF16) and INT8 (with
--calib-data) that passes the accuracy gate on this CPU, and the log says which and why.
The accuracy gate compares the candidate with the FP32 model on the same held-out images and
passes it when the lower end of the 90% interval of (candidate - reference) top-1 (a one-sided
95% bound, Newcombe's paired method) is at least -THRESHOLD points: with 200 images and 1.0
point at most a candidate that agrees on every image passes; 500 or more images are advised."""
EPILOG = exit_codes.epilog(NOTES)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build-engine",
        description=(
            "Build a galaxy-edge bundle (TensorRT plan, OpenVINO compiled model or ONNX Runtime "
            "model, with its manifest)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"build-engine {__version__}")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--checkpoint",
        type=Path,
        help="training run directory or its .safetensors (verified against its recorded sha256)",
    )
    src.add_argument(
        "--onnx",
        type=Path,
        help="an FP32 ONNX model; exported by build-engine it carries its preprocessing spec",
    )
    p.add_argument(
        "--preprocess-spec",
        type=spec_file,
        metavar="SPEC.json",
        help="the preprocessing spec of an --onnx file that does not carry one (keys of "
        "edge_agent.contract.preprocess.PreprocessSpec: input_size, crop, scale, offset...)",
    )
    p.add_argument(
        "--decode-spec",
        type=decode_spec_file,
        metavar="DECODE.json",
        help="how image files became pixels for an --onnx file that does not record it (keys of "
        "edge_agent.contract.decode_config.DecodeSpec: stretch, fits); without it such a file "
        "gets the defaults, which every model used before the spec travelled",
    )
    p.add_argument("--out", type=Path, help="bundle directory to write (replaced atomically)")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16", "int8"),
        default=None,
        help="default: fp16 for TensorRT, fp32 for ONNX Runtime, the fastest that passes the gate "
        "for OpenVINO (bf16: OpenVINO on CPUs with AMX or AVX-512 BF16)",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "onnxruntime", "tensorrt", "openvino"),
        default="auto",
        help="auto: TensorRT where it imports, else OpenVINO on an Intel CPU where it is "
        "installed, else ONNX Runtime (default auto)",
    )
    p.add_argument("--calib-data", type=Path, help="labelled images for INT8: CSV, folders or .h5")
    p.add_argument(
        "--calib-size", type=positive, default=256, help="calibration images (default 256)"
    )
    p.add_argument(
        "--gate-data",
        type=Path,
        help="held-out labelled images for the gate (default: split from --calib-data)",
    )
    p.add_argument(
        "--gate-size",
        type=positive,
        default=500,
        help="held-out images for the gate, at most (default 500; half of --calib-data at most "
        "when split from it)",
    )
    p.add_argument(
        "--gate-min-images",
        type=positive,
        default=DEFAULT_MIN_IMAGES,
        help=f"refuse a gate set smaller than this (default {DEFAULT_MIN_IMAGES})",
    )
    p.add_argument(
        "--gate-threshold",
        type=float,
        default=DEFAULT_THRESHOLD_POINTS,
        help="largest top-1 drop the gate must rule out, in percentage points "
        f"(default {DEFAULT_THRESHOLD_POINTS:g})",
    )
    p.add_argument(
        "--fallback",
        choices=("fp16",),
        default=None,
        help="build FP16 when the gate refuses INT8 (said loudly, recorded)",
    )
    p.add_argument(
        "--quantizer",
        choices=("auto", "modelopt", "onnxruntime"),
        default="auto",
        help="INT8 quantizer: auto is NVIDIA ModelOpt where it imports, else ONNX Runtime's",
    )
    p.add_argument(
        "--calibration-method",
        choices=("entropy", "max"),
        default="entropy",
        help="how ModelOpt picks activation ranges (default entropy)",
    )
    p.add_argument(
        "--keep-sensitive",
        type=int,
        default=0,
        metavar="N",
        help="INT8 mixed precision: measure each layer's INT8 error on calibration-set images "
        "that are neither calibration nor gate images, keep the N worst in float (default 0; "
        "docs/int8.md)",
    )
    p.add_argument(
        "--sensitivity-size",
        type=positive,
        default=64,
        help="images for the sensitivity pass of --keep-sensitive (default 64)",
    )
    p.add_argument(
        "--sensitivity-mode",
        choices=("only", "without"),
        default="only",
        help="only: each layer alone in INT8 (default); without: all but that layer",
    )
    p.add_argument(
        "--reference",
        type=Path,
        metavar="RUN|FP32.onnx",
        help="for an --onnx that is INT8 already (galaxy-train qat): the FP32 model it came "
        "from, which the accuracy gate compares it with",
    )
    p.add_argument("--min-batch", type=positive, default=1, help="TensorRT profile minimum (1)")
    p.add_argument("--opt-batch", type=positive, default=8, help="TensorRT profile optimum (8)")
    p.add_argument("--max-batch", type=positive, default=16, help="largest batch (default 16)")
    p.add_argument(
        "--workspace-mb",
        type=positive,
        default=1024,
        help="TensorRT builder workspace in MiB (default 1024)",
    )
    p.add_argument(
        "--dla-core",
        type=int,
        default=None,
        help="build the plan for this DLA core (Orin NX/AGX: 0 or 1); default the GPU",
    )
    p.add_argument(
        "--timing-cache",
        type=Path,
        default=None,
        help="TensorRT timing cache file, read and updated (reused across builds)",
    )
    p.add_argument(
        "--plan-builder",
        choices=["tensorrt", "torch-tensorrt"],
        default="tensorrt",
        help="what compiles the TensorRT plan: TensorRT's ONNX parser (default), or torch-tensorrt "
        "from the --checkpoint's torch model (fp32/fp16; unverified: not installable here)",
    )
    p.add_argument(
        "--kernels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile the CUDA preprocessing kernels into the bundle (default: with TensorRT)",
    )
    p.add_argument(
        "--check",
        type=Path,
        metavar="BUNDLE",
        help="exit 0 if BUNDLE is valid for this device (and the given model), else 4",
    )
    p.add_argument("--if-stale", action="store_true", help="rebuild --out only when --check fails")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (export, calibration, gate, TensorRT build)",
    )
    return p


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def exit_code(exc: GalaxyEdgeError) -> int:
    """The exit code of a typed error (:mod:`edge_agent.contract.exit_codes`)."""
    if isinstance(exc, AccuracyGateError):
        return EXIT_GATE
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    if isinstance(exc, (StaleError, ManifestError)):
        return EXIT_STALE
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or argparse's usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return _run(args)
    except GalaxyEdgeError as exc:
        print(f"build-engine: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("build-engine: interrupted; no bundle was written", file=sys.stderr)
        return exit_codes.INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    if args.check is not None and (args.out is not None or args.if_stale):
        raise UsageError(
            "--check BUNDLE only checks; to rebuild when stale use --out BUNDLE --if-stale"
        )
    if args.check is None and args.out is None:
        raise UsageError("nothing to do: give --out BUNDLE_DIR to build, or --check BUNDLE")
    if args.check is None and args.checkpoint is None and args.onnx is None:
        raise UsageError("give --checkpoint RUN|FILE or --onnx FILE to build from")
    if args.if_stale and args.out is None:
        raise UsageError("--if-stale needs --out BUNDLE_DIR (the bundle to check and rebuild)")
    request = BuildRequest(
        out=args.out or Path("."),
        checkpoint=args.checkpoint,
        onnx=args.onnx,
        precision=args.precision,
        backend=args.backend,
        calib_data=args.calib_data,
        calib_size=args.calib_size,
        gate_data=args.gate_data,
        gate_size=args.gate_size,
        gate_threshold=args.gate_threshold,
        gate_min_images=args.gate_min_images,
        preprocess=args.preprocess_spec,
        decode=args.decode_spec,
        fallback=args.fallback,
        batch=BatchProfile(min=args.min_batch, opt=args.opt_batch, max=args.max_batch),
        workspace_mb=args.workspace_mb,
        dla_core=args.dla_core,
        timing_cache=args.timing_cache,
        kernels=args.kernels,
        quantizer=args.quantizer,
        calibration_method=args.calibration_method,
        keep_sensitive=args.keep_sensitive,
        sensitivity_size=args.sensitivity_size,
        sensitivity_mode=args.sensitivity_mode,
        reference=args.reference,
        progress=not args.no_progress,
        plan_builder=args.plan_builder,
    )
    device = probe()
    if args.check is not None:
        has_model = args.checkpoint is not None or args.onnx is not None
        reasons = stale_reasons(args.check, device, _wanted(request, device) if has_model else None)
        for reason in reasons:
            print(f"{args.check}: {reason}")
        if reasons:
            return EXIT_STALE
        print(f"{args.check}: valid for this device" + (" and model" if has_model else ""))
        return EXIT_OK
    if args.if_stale:
        reasons = stale_reasons(args.out, device, _wanted(request, device))
        if not reasons:
            print(f"{args.out}: up to date, not rebuilt")
            return EXIT_OK
        if not (args.out / "manifest.json").exists():
            _log(f"{args.out}: no bundle there yet: building")
        else:
            _log(f"{args.out}: rebuilding: " + "; ".join(reasons))
    manifest = build(request, device, _log)
    gate = manifest.accuracy_gate
    extra = f", gate delta {gate.delta_points:+.2f} points" if gate else ""
    print(
        f"{args.out}: {manifest.backend} {manifest.precision} bundle of {manifest.model.name}{extra}"
    )
    return EXIT_OK


def _wanted(request: BuildRequest, device: DeviceInfo) -> Wanted:
    """What a build with these options would produce, to compare with an existing bundle."""
    backend, _ = resolve_backend(request, device)
    source_sha = None
    if request.onnx is not None:
        if not request.onnx.is_file():
            raise UsageError(f"{request.onnx}: ONNX file not found; pass --onnx FILE")
        source_sha = sha256_file(request.onnx)
    ckpt_sha = None
    if request.checkpoint is not None:
        ckpt_sha = checkpoint_sha256(request.checkpoint)
        if ckpt_sha is None:
            raise UsageError(
                f"{request.checkpoint}: checkpoint not found; pass a training run directory"
            )
    return Wanted(
        source_onnx_sha256=source_sha,
        checkpoint_sha256=ckpt_sha,
        backend=backend,
        precision=request.precision or default_precision(backend),
        batch=request.batch,
        dla_core=request.dla_core,
        accept_fp16_fallback=request.fallback == "fp16",
        preprocess=request.preprocess,
        decode=request.decode,
    )


if __name__ == "__main__":
    sys.exit(main())
