"""The demo model's artefacts for the benchmarks, made the way ``build-engine`` makes them.

* the FP32 ONNX: ``build_engine.export.export_checkpoint`` (weights' sha256 verified, opset 17,
  static size, dynamic batch, the training spec in its metadata);
* the INT8 Q/DQ ONNX: ``build_engine.quantize.quantize_int8`` (ModelOpt when installed,
  entropy calibration, LayerNorm/Softmax/residual adds kept FP32), calibrated on the run's
  TRAINING split: the file TensorRT and OpenVINO take alike;
* the held-out images: the run's validation + test splits (``split.json``) of the shared sample,
  preprocessed with the model's own spec: images neither training nor calibration saw;
* bundles (``build_engine.bundle.write_bundle``): ONNX Runtime, and OpenVINO with the compiled
  model cached (``build_engine.openvino_build.write_compiled``).

Everything is cached in a work folder under a key made of the checkpoint's sha256, so the
benchmarks export and quantize once. Imported by the scripts of ``bench/`` (run from the
repository root as ``python bench/NAME.py``, which puts this folder on ``sys.path``).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = ROOT / "models" / "demo"
SAMPLE_DIR = ROOT.parent / "shared" / "data" / "galaxy10-sample"
SAMPLE_CSV = SAMPLE_DIR / "labels.csv"
CALIB_IMAGES = 256


@dataclass(frozen=True)
class DemoArtefacts:
    """Paths of one checkpoint's benchmark artefacts (see the module docstring)."""

    work: Path
    model_name: str
    fp32_onnx: Path
    int8_onnx: Path
    heldout_images: Path  # N x 3 x S x S float32 (.npy)
    heldout_labels: Path  # N int64 (.npy)
    heldout_files: list[Path]  # the image files, for benchmarks that drop real files

    def heldout(self) -> tuple[np.ndarray, np.ndarray]:
        return np.load(self.heldout_images, mmap_mode="r"), np.load(self.heldout_labels)


def _say(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def _splits(checkpoint: Path) -> tuple[list[int], list[int]]:
    """Positions of the run's training split and of its validation + test splits."""
    doc = json.loads((checkpoint / "split.json").read_text(encoding="utf-8"))
    return sorted(doc["train"]), sorted(doc["val"] + doc["test"])


def prepare(
    work: Path, checkpoint: Path = DEMO_CHECKPOINT, sample_csv: Path = SAMPLE_CSV
) -> DemoArtefacts:
    """Export, quantize and preprocess once per checkpoint (cached under ``work``)."""
    from build_engine.export import export_checkpoint, load_onnx, read_metadata
    from edge_agent.contract.labelled_data import open_labelled
    from edge_agent.contract.preprocess import preprocess_frame

    if not sample_csv.is_file():
        raise SystemExit(f"bench: the shared sample is not at {sample_csv} (see README)")
    sha = (checkpoint / "best.safetensors.sha256").read_text().split()[0][:12]
    work = work / f"demo-{sha}"
    work.mkdir(parents=True, exist_ok=True)
    fp32, int8 = work / "model_fp32.onnx", work / "model_int8_qdq.onnx"
    if not fp32.is_file():
        _say(f"exporting {checkpoint} to ONNX")
        export_checkpoint(checkpoint, work / "export.onnx")
        (work / "export.onnx").rename(fp32)
    meta = read_metadata(load_onnx(fp32), str(fp32))
    assert meta.spec is not None, "export_checkpoint records the spec"
    dataset = open_labelled(sample_csv)
    train, heldout = _splits(checkpoint)
    images, labels = work / "heldout.npy", work / "heldout_labels.npy"
    if not images.is_file():
        _say(f"preprocessing {len(heldout)} held-out images (validation + test splits)")
        s = meta.spec.input_size
        batch = np.empty((len(heldout), 3, s, s), dtype=np.float32)
        for k, pos in enumerate(heldout):
            preprocess_frame(dataset[pos][0], meta.spec, "RGB", out=batch[k])
        np.save(images, batch)
        np.save(labels, dataset.labels[heldout].astype(np.int64))
    if not int8.is_file():
        from build_engine.quantize import quantize_int8

        calib_pos = train[:: max(1, len(train) // CALIB_IMAGES)][:CALIB_IMAGES]
        s = meta.spec.input_size
        calib = np.empty((len(calib_pos), 3, s, s), dtype=np.float32)
        for k, pos in enumerate(calib_pos):
            preprocess_frame(dataset[pos][0], meta.spec, "RGB", out=calib[k])
        _say(f"quantizing to INT8 Q/DQ on {len(calib)} training images (minutes)")
        t0 = time.perf_counter()
        report = quantize_int8(fp32, work / "int8.tmp.onnx", calib)
        (work / "int8.tmp.onnx").rename(int8)
        _say(
            f"INT8 by {report.method}: {report.qdq_pairs} quantizers, {time.perf_counter() - t0:.0f} s"
        )
    files = [sample_csv.parent / dataset.ref(pos) for pos in heldout]
    return DemoArtefacts(work, meta.model_name, fp32, int8, images, labels, files)


Hint = Literal["f32", "bf16"]


def make_bundle(
    out: Path,
    onnx: Path,
    backend: Literal["onnxruntime", "openvino"],
    *,
    precision: Literal["fp32", "bf16", "int8"] = "fp32",
    max_batch: int = 16,
) -> Path:
    """A bundle of ``onnx`` for ``backend`` (OpenVINO: compiled for this CPU, hint from precision).

    No accuracy gate in the manifest: the benchmarks measure the gate's figures themselves.
    """
    from build_engine.bundle import write_bundle
    from build_engine.export import load_onnx, read_metadata
    from edge_agent.contract.manifest import (
        BatchProfile,
        Manifest,
        ModelInfo,
        official_classes,
        sha256_file,
    )

    if (out / "manifest.json").is_file():
        return out
    meta = read_metadata(load_onnx(onnx), str(onnx))
    assert meta.spec is not None
    files = {"model.onnx": onnx}
    openvino = None
    if backend == "openvino":
        from build_engine.openvino_build import openvino_host, write_compiled

        scratch = out.parent / f".{out.name}.compiled"
        scratch.mkdir(parents=True, exist_ok=True)
        hint: Hint = "bf16" if precision == "bf16" else "f32"
        blob, openvino = write_compiled(onnx, scratch, hint, openvino_host())
        files[blob.name] = blob
    manifest = Manifest(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        builder="bench/demo_models.py",
        model=ModelInfo(name=meta.model_name, classes=official_classes()),
        preprocess=meta.spec,
        backend=backend,
        precision=precision,
        model_file="model.onnx",
        batch=BatchProfile.model_validate({"min": 1, "opt": max_batch, "max": max(16, max_batch)}),
        source_onnx_sha256=sha256_file(onnx),
        openvino=openvino,
    )
    write_bundle(out, files, manifest)
    return out


@dataclass(frozen=True)
class Target:
    """A backend and precision to benchmark, from ``onnxruntime`` or ``openvino[:PRECISION]``."""

    backend: Literal["onnxruntime", "openvino"]
    precision: Literal["fp32", "bf16", "int8"]
    label: str

    @property
    def hint(self) -> Hint:
        return "bf16" if self.precision == "bf16" else "f32"

    def onnx(self, art: DemoArtefacts) -> Path:
        return art.int8_onnx if self.precision == "int8" else art.fp32_onnx

    @property
    def key(self) -> str:
        return f"{self.backend}-{self.precision}"


def parse_target(text: str) -> Target:
    """``onnxruntime`` (FP32), ``openvino`` (BF16) or ``openvino:fp32|bf16|int8``."""
    backend, _, precision = text.partition(":")
    if backend == "onnxruntime" and precision in ("", "fp32"):
        return Target("onnxruntime", "fp32", "ONNX Runtime FP32")
    if backend == "openvino" and precision in ("", "fp32", "bf16", "int8"):
        p = precision or "bf16"
        return Target("openvino", p, f"OpenVINO {p.upper()}")  # type: ignore[arg-type]
    raise SystemExit(
        f"bench: unknown target {text!r}; use onnxruntime or openvino[:fp32|bf16|int8]"
    )
