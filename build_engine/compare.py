"""Compare two models output for output on the same frames (in the spirit of Polygraphy).

Each side is an ONNX file (run by ONNX Runtime on the CPU, preprocessed by the CPU reference)
or a bundle directory (loaded by the edge agent's own backend factory, so a TensorRT bundle is
fed through its CUDA preprocessing kernels exactly as in production). Both get the same uint8
frames: labelled images from ``--images`` or random frames of odd sizes, which also exercise
the crop/resize path. Reported: max and mean absolute logit difference, max probability
difference and top-1 agreement; ``--atol``/``--min-agreement`` turn them into an exit code.
An ONNX side is preprocessed with the spec in its metadata (or ``--preprocess-spec``).

    build-engine-compare BUNDLE_OR_ONNX BUNDLE_OR_ONNX [--images PATH] [--count N]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from build_engine.errors import BuildEngineError, UsageError
from build_engine.options import positive, spec_file
from edge_agent import __version__
from edge_agent.contract import exit_codes
from edge_agent.contract.decode_config import DecodeSpec
from edge_agent.contract.errors import GalaxyEdgeError, ManifestError
from edge_agent.contract.preprocess import PreprocessSpec, preprocess_batch


class Runner(Protocol):
    name: str
    decode: DecodeSpec  # how the model's image files become pixels

    def infer_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 H x W x 3 RGB frames -> N x C float32 logits."""
        ...


class OnnxFileRunner:
    """An ONNX file in ONNX Runtime on the CPU, fed by the CPU preprocessing reference."""

    def __init__(self, path: Path, spec: PreprocessSpec | None = None) -> None:
        import onnxruntime as ort

        from build_engine.export import describe_onnx, load_onnx
        from build_engine.onnx_metadata import META_PREPROCESS, read_metadata

        model = load_onnx(path)
        info = describe_onnx(model, str(path))
        meta = read_metadata(model, str(path))
        recorded = meta.spec
        self.decode = meta.decode or DecodeSpec()  # absent: exported when all used the defaults
        chosen = recorded or spec
        if chosen is None:
            raise UsageError(
                f"{path}: no preprocessing spec in its metadata ({META_PREPROCESS}); "
                "give --preprocess-spec SPEC.json"
            )
        if chosen.input_size != info.input_size:
            raise UsageError(
                f"{path}: spec input_size {chosen.input_size} does not match the graph's "
                f"{info.input_size}"
            )
        self.name = str(path)
        self.spec = chosen
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = info.input_name

    def infer_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        batch = preprocess_batch(frames, self.spec, "RGB")
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)


class BundleRunner:
    """A verified bundle in the backend it was built for (the agent's factory)."""

    def __init__(self, bundle_dir: Path) -> None:
        from edge_agent.backends.factory import create_backend
        from edge_agent.contract.manifest import load_bundle

        manifest = load_bundle(bundle_dir)
        self.name = f"{bundle_dir} ({manifest.backend} {manifest.precision})"
        self.decode = manifest.decode
        self.backend = create_backend(bundle_dir, manifest)
        self.max_batch = self.backend.max_batch

    def infer_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        return np.asarray(self.backend.infer_frames(frames, "RGB").logits, dtype=np.float32)


def open_runner(path: Path, spec: PreprocessSpec | None = None) -> Runner:
    """A bundle directory or an ``.onnx`` file; anything else is a one-line error.

    ``spec`` is used for an ONNX file that does not carry its own.
    """
    path = Path(path)
    if path.is_dir():
        return BundleRunner(path)
    if path.is_file() and path.suffix == ".onnx":
        return OnnxFileRunner(path, spec)
    raise UsageError(f"{path}: neither a bundle directory nor an .onnx file")


@dataclass(frozen=True)
class Comparison:
    images: int
    max_abs_diff: float
    mean_abs_diff: float
    max_prob_diff: float
    top1_agreement: float

    def line(self) -> str:
        return (
            f"{self.images} frames: max |dlogit| {self.max_abs_diff:.3g}, mean {self.mean_abs_diff:.3g}, "
            f"max |dprob| {self.max_prob_diff:.3g}, top-1 agreement {self.top1_agreement:.2%}"
        )


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def compare(a: Runner, b: Runner, frames: Sequence[np.ndarray], batch: int = 8) -> Comparison:
    """Run both on ``frames`` in batches of ``batch`` and measure how far they differ."""
    la, lb = [], []
    for start in range(0, len(frames), batch):
        chunk = frames[start : start + batch]
        la.append(a.infer_frames(chunk))
        lb.append(b.infer_frames(chunk))
    x, y = np.concatenate(la), np.concatenate(lb)
    if x.shape != y.shape:
        raise BuildEngineError(f"outputs differ in shape: {x.shape} vs {y.shape}")
    diff = np.abs(x - y)
    return Comparison(
        images=len(x),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        max_prob_diff=float(np.abs(_softmax(x) - _softmax(y)).max()),
        top1_agreement=float(np.mean(x.argmax(1) == y.argmax(1))),
    )


def random_frames(count: int, seed: int = 0) -> list[np.ndarray]:
    """uint8 RGB frames of odd, varied sizes (square, wide, tall, smaller and larger than S)."""
    rng = np.random.default_rng(seed)
    sizes = [(256, 256), (301, 257), (199, 423), (513, 511), (97, 131)]
    return [
        rng.integers(0, 256, size=(*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(count)
    ]


def labelled_frames(path: Path, count: int, decode: DecodeSpec | None = None) -> list[np.ndarray]:
    """Up to ``count`` images of a labelled set, decoded with ``decode`` (the models' spec)."""
    from edge_agent.contract.labelled_data import open_labelled

    dataset = open_labelled(path, limit=count, decode=(decode or DecodeSpec()).decoder())
    return [dataset[i][0] for i in range(len(dataset))]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build-engine-compare",
        description="Compare two models (bundles or ONNX files) output for output on the same "
        "frames.",
        epilog=exit_codes.epilog(
            "exit 1 also when --atol or --min-agreement is given and the comparison misses it."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"build-engine-compare {__version__}")
    p.add_argument("a", type=Path, help="bundle directory or .onnx file (the reference)")
    p.add_argument("b", type=Path, help="bundle directory or .onnx file (the candidate)")
    p.add_argument(
        "--images", type=Path, help="labelled images (CSV, folders, .h5); default random frames"
    )
    p.add_argument("--count", type=positive, default=32, help="frames to compare (default 32)")
    p.add_argument("--batch", type=positive, default=8, help="frames per batch (default 8)")
    p.add_argument("--atol", type=float, default=None, help="fail when max |dlogit| exceeds this")
    p.add_argument(
        "--min-agreement", type=float, default=None, help="fail below this top-1 agreement (0..1)"
    )
    p.add_argument(
        "--preprocess-spec",
        type=spec_file,
        metavar="SPEC.json",
        help="spec for an .onnx side that does not carry one in its metadata",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or argparse's usage error (2)
        return exc.code if isinstance(exc.code, int) else exit_codes.USAGE
    try:
        a = open_runner(args.a, args.preprocess_spec)
        b = open_runner(args.b, args.preprocess_spec)
        if args.images and a.decode != b.decode:
            raise UsageError(
                f"{a.name} and {b.name} decode image files differently ({a.decode.model_dump_json()}"
                f" vs {b.decode.model_dump_json()}): the same file is other pixels for each; "
                "compare them on random frames (leave out --images)"
            )
        frames = (
            labelled_frames(args.images, args.count, a.decode)
            if args.images
            else random_frames(args.count)
        )
        result = compare(a, b, frames, batch=args.batch)
    except GalaxyEdgeError as exc:
        print(f"build-engine-compare: error: {exc}", file=sys.stderr)
        if isinstance(exc, UsageError):
            return exit_codes.USAGE
        return exit_codes.INVALID_BUNDLE if isinstance(exc, ManifestError) else exit_codes.FAILURE
    print(f"{a.name} vs {b.name}: {result.line()}")
    failed = (args.atol is not None and result.max_abs_diff > args.atol) or (
        args.min_agreement is not None and result.top1_agreement < args.min_agreement
    )
    return exit_codes.FAILURE if failed else exit_codes.OK


if __name__ == "__main__":
    sys.exit(main())
