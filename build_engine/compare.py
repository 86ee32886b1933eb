"""Compare two models output for output on the same frames (in the spirit of Polygraphy).

Each side is an ONNX file (run by ONNX Runtime on the CPU, preprocessed by the CPU reference)
or a bundle directory (loaded by the edge agent's own backend factory, so a TensorRT bundle is
fed through its CUDA preprocessing kernels exactly as in production). Both get the same uint8
frames: labelled images from ``--images`` or random frames of odd sizes, which also exercise
the crop/resize path. Reported: max and mean absolute logit difference, max probability
difference and top-1 agreement; ``--atol``/``--min-agreement`` turn them into an exit code.

    python -m build_engine.compare BUNDLE_OR_ONNX BUNDLE_OR_ONNX [--images PATH] [--count N]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from build_engine.errors import BuildEngineError
from edge_agent.contract.errors import GalaxyEdgeError
from edge_agent.contract.preprocess import DEFAULT_SPEC, PreprocessSpec, preprocess_batch


class Runner(Protocol):
    name: str

    def infer_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 H x W x 3 RGB frames -> N x C float32 logits."""
        ...


class OnnxFileRunner:
    """An ONNX file in ONNX Runtime on the CPU, fed by the CPU preprocessing reference."""

    def __init__(self, path: Path, spec: PreprocessSpec = DEFAULT_SPEC) -> None:
        import onnxruntime as ort

        from build_engine.export import describe_onnx, load_onnx

        info = describe_onnx(load_onnx(path), str(path))
        self.name = str(path)
        self.spec = spec.model_copy(update={"input_size": info.input_size})
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
        self.backend = create_backend(bundle_dir, manifest)
        self.max_batch = self.backend.max_batch

    def infer_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        return np.asarray(self.backend.infer_frames(frames, "RGB").logits, dtype=np.float32)


def open_runner(path: Path) -> Runner:
    """A bundle directory or an ``.onnx`` file; anything else is a one-line error."""
    path = Path(path)
    if path.is_dir():
        return BundleRunner(path)
    if path.is_file() and path.suffix == ".onnx":
        return OnnxFileRunner(path)
    raise BuildEngineError(f"{path}: neither a bundle directory nor an .onnx file")


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


def labelled_frames(path: Path, count: int) -> list[np.ndarray]:
    from edge_agent.contract.labelled_data import open_labelled

    dataset = open_labelled(path, limit=count)
    return [dataset[i][0] for i in range(len(dataset))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m build_engine.compare", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("a", type=Path, help="bundle directory or .onnx file (the reference)")
    p.add_argument("b", type=Path, help="bundle directory or .onnx file (the candidate)")
    p.add_argument(
        "--images", type=Path, help="labelled images (CSV, folders, .h5); default random frames"
    )
    p.add_argument("--count", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--atol", type=float, default=None, help="fail when max |dlogit| exceeds this")
    p.add_argument(
        "--min-agreement", type=float, default=None, help="fail below this top-1 agreement (0..1)"
    )
    args = p.parse_args(argv)
    try:
        a, b = open_runner(args.a), open_runner(args.b)
        frames = (
            labelled_frames(args.images, args.count) if args.images else random_frames(args.count)
        )
        result = compare(a, b, frames, batch=args.batch)
    except GalaxyEdgeError as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 1
    print(f"{a.name} vs {b.name}: {result.line()}")
    failed = (args.atol is not None and result.max_abs_diff > args.atol) or (
        args.min_agreement is not None and result.top1_agreement < args.min_agreement
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
