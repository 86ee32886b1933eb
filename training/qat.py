"""Quantization-aware fine-tuning (QAT) with NVIDIA ModelOpt, exported as an INT8 Q/DQ ONNX file.

``galaxy-train qat --checkpoint RUN --data DATA --out RUN2`` starts from a trained run's weights:

1. ModelOpt's PyTorch quantization (``modelopt.torch.quantization``, config ``INT8_DEFAULT_CFG``:
   symmetric INT8, weights per output channel, activations per tensor, ``max`` calibration)
   inserts fake-quant on the inputs and weights of every Conv and Linear and calibrates their
   ranges on images of the run's TRAINING split;
2. the fake-quantized model is fine-tuned for a few epochs on the training split, at a small
   learning rate, with the run's own augmentation and label smoothing, so the weights adapt to
   INT8 rounding (the straight-through estimator carries the gradient through it);
3. it is exported to ONNX (opset 17, dynamic batch) with explicit symmetric QuantizeLinear /
   DequantizeLinear pairs, zero points 0, and the run's preprocessing spec in its metadata.

The validation and test splits are never used: there is no model selection here (a fixed number
of epochs), so both stay held out for the accuracy gate. ``build-engine --onnx RUN2/model_qat.onnx
--precision int8 --reference RUN`` takes the file as it is (no re-quantization) and gates it
against the FP32 model it started from, like any INT8 candidate.

LayerNorm, Softmax and residual additions get no quantizer: ModelOpt quantizes module inputs and
weights of Conv and Linear layers only.

The export is in :mod:`training.qat_onnx`, the command line in :mod:`training.qat_cli`; their
names are re-exported here, where they were first defined.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.errors import TrainingError, UsageError
from training.qat_cli import DESCRIPTION, add_parser, run
from training.qat_onnx import OPSET, export_qat_onnx, fold_constant_casts

if TYPE_CHECKING:
    import torch

ONNX_NAME = "model_qat.onnx"
REPORT_NAME = "qat.json"
# The ONNX metadata keys build_engine.onnx_metadata reads (build_engine may import training, not the
# reverse; tests/training/test_qat.py proves build-engine reads what is written here).
META_MODEL_NAME = "galaxy_edge.model_name"
META_PROVENANCE = "galaxy_edge.training_provenance"
META_PARAMETERS = "galaxy_edge.parameters"
META_PREPROCESS = "galaxy_edge.preprocess"
META_DECODE = "galaxy_edge.decode"
META_QAT = "galaxy_edge.qat"

__all__ = [
    "DESCRIPTION",
    "META_DECODE",
    "META_MODEL_NAME",
    "META_PARAMETERS",
    "META_PREPROCESS",
    "META_PROVENANCE",
    "META_QAT",
    "ONNX_NAME",
    "OPSET",
    "REPORT_NAME",
    "QatOptions",
    "QatReport",
    "add_parser",
    "export_qat_onnx",
    "fold_constant_casts",
    "qat_config",
    "run",
    "run_qat",
]

Echo = Callable[[str], None]


@dataclass
class QatOptions:
    """What ``galaxy-train qat`` was asked to do."""

    checkpoint: Path
    data: Path
    out: Path
    epochs: int = 2
    lr: float = 1e-5
    batch_size: int = 16
    calib_images: int = 256
    max_steps: int | None = None  # per run, for smoke tests and short CPU runs
    limit: int | None = None  # training images, spread evenly (smoke runs)
    seed: int = 0
    device: str = "auto"
    progress: bool = True


@dataclass
class QatReport:
    """What the run did, written to ``qat.json`` beside the ONNX file."""

    source_checkpoint: str
    source_checkpoint_sha256: str
    onnx: str
    quantizers: int
    qdq_pairs: int
    calibration_images: int
    train_images: int
    epochs: int
    steps: int
    lr: float
    batch_size: int
    losses: list[float]
    train_accuracy: list[float]
    seconds: float
    fake_quant_vs_onnx_max_abs_diff: float


def _import_modelopt() -> Any:
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as exc:
        first = str(exc).splitlines()[0]
        raise UsageError(
            f"galaxy-train qat needs NVIDIA ModelOpt ({first}); install the project's [int8] "
            "extra: pip install -e '.[train,int8]'"
        ) from exc
    return mtq


def _check_options(opts: QatOptions) -> None:
    if not Path(opts.data).exists():
        raise UsageError(f"{opts.data}: does not exist; --data takes the run's labelled data")
    if opts.epochs < 1 or opts.batch_size < 1 or opts.calib_images < 1:
        raise UsageError("--epochs, --batch-size and --calib-images must be at least 1")
    if not opts.lr > 0:
        raise UsageError(f"--lr {opts.lr}: must be positive")
    if opts.max_steps is not None and opts.max_steps < 1:
        raise UsageError("--max-steps must be at least 1")
    out = Path(opts.out)
    if (out / ONNX_NAME).exists():
        raise UsageError(f"{out / ONNX_NAME}: already exists; choose another --out")
    if out.resolve() == Path(opts.checkpoint).resolve():
        raise UsageError("--out must not be the source run directory")


def qat_config(mtq: Any) -> dict[str, Any]:
    """ModelOpt's ``INT8_DEFAULT_CFG`` with LayerNorm left out of INT8 (Softmax has no quantizer).

    The default config also quantizes LayerNorm inputs (a measured demo export had a
    QuantizeLinear before every transformer LayerNorm), which TensorRT runs better in higher
    precision and build-engine's Q/DQ check refuses.
    """
    config = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    for kind in ("nn.LayerNorm",):
        config["quant_cfg"].append({"quantizer_name": "*", "parent_class": kind, "enable": False})
    return config


def run_qat(opts: QatOptions, echo: Echo = print) -> QatReport:
    """Fine-tune ``opts.checkpoint`` with INT8 fake-quant and export ``opts.out/model_qat.onnx``."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from edge_agent.contract.errors import GalaxyEdgeError
    from edge_agent.contract.labelled_data import open_labelled
    from training.checkpoint import load_for_export
    from training.data import PreprocessedImages, augment_batch, make_loader, value_range
    from training.runtime import resolve_device, seed_everything
    from training.split import SPLIT_NAME, load_split

    _check_options(opts)
    mtq = _import_modelopt()
    started = time.perf_counter()
    source = load_for_export(opts.checkpoint)  # weights verified against their sha256
    run_dir = (
        Path(opts.checkpoint) if Path(opts.checkpoint).is_dir() else Path(opts.checkpoint).parent
    )
    try:
        images = open_labelled(opts.data, decode=source.decode.decoder())  # the run's pixels
    except GalaxyEdgeError as exc:
        raise UsageError(f"--data {opts.data}: {exc}") from exc
    split = load_split(run_dir / SPLIT_NAME, images.labels)  # the run's own split, checked
    train_idx = np.asarray(split.train, dtype=np.int64)
    if opts.limit is not None and opts.limit < len(train_idx):
        train_idx = train_idx[
            np.unique(np.linspace(0, len(train_idx) - 1, opts.limit).round().astype(np.int64))
        ]
    if len(train_idx) == 0:
        raise UsageError(f"{run_dir / SPLIT_NAME}: no training images to fine-tune on")
    seed_everything(opts.seed)
    device = resolve_device(opts.device)
    spec, config = source.spec, source.config
    dataset = PreprocessedImages(images, train_idx, spec)
    calib_idx = train_idx[
        np.unique(
            np.linspace(0, len(train_idx) - 1, min(opts.calib_images, len(train_idx)))
            .round()
            .astype(np.int64)
        )
    ]
    calib_loader = make_loader(
        PreprocessedImages(images, calib_idx, spec), opts.batch_size, shuffle=False, workers=0,
        device=device, seed=opts.seed,
    )  # fmt: skip
    model = source.model.to(device)

    def forward_loop(m: torch.nn.Module) -> None:
        with torch.no_grad():
            for batch, _ in calib_loader:
                m(batch.to(device))

    echo(f"qat: calibrating INT8 fake-quant on {len(calib_idx)} training images (ModelOpt, max)")
    model = mtq.quantize(model, qat_config(mtq), forward_loop)
    quantizers = sum(
        1
        for name, module in model.named_modules()
        if name.endswith("_quantizer") and getattr(module, "is_enabled", False)
    )
    loader = make_loader(
        dataset, opts.batch_size, shuffle=True, workers=0, device=device, seed=opts.seed,
        drop_last=len(dataset) > opts.batch_size,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=config.weight_decay)
    total = opts.epochs * len(loader)
    if opts.max_steps is not None:
        total = min(total, opts.max_steps)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
    generator = torch.Generator(device=device).manual_seed(opts.seed)
    losses: list[float] = []
    accuracies: list[float] = []
    steps = 0
    for epoch in range(1, opts.epochs + 1):
        if steps >= total:
            break
        model.train()
        loss_sum, correct, seen = 0.0, 0.0, 0
        for batch, target in loader:
            if steps >= total:
                break
            batch = augment_batch(batch.to(device), config.augment, generator, value_range(spec))
            target = target.to(device)
            logits = model(batch)
            loss = F.cross_entropy(logits, target, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
            optimizer.step()
            scheduler.step()
            steps += 1
            loss_sum += float(loss.detach()) * len(target)
            correct += float((logits.detach().argmax(1) == target).sum())
            seen += len(target)
            if opts.progress:
                echo(f"qat: epoch {epoch} step {steps}/{total} loss {loss_sum / seen:.4f}")
        losses.append(round(loss_sum / max(seen, 1), 5))
        accuracies.append(round(correct / max(seen, 1), 5))
        echo(
            f"qat: epoch {epoch}: train loss {losses[-1]:.4f}, train accuracy {accuracies[-1]:.4f} "
            f"({steps} steps)"
        )
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / ONNX_NAME
    qat_meta = {
        "source_checkpoint_sha256": source.provenance.checkpoint_sha256,
        "epochs": opts.epochs,
        "steps": steps,
        "lr": opts.lr,
        "train_images": len(train_idx),
        "calibration_images": len(calib_idx),
        "calibration": "max",
        "tool": "nvidia-modelopt torch INT8_DEFAULT_CFG",
    }
    metadata = {
        META_MODEL_NAME: source.model_name,
        META_PROVENANCE: source.provenance.model_dump_json(),
        META_PARAMETERS: str(sum(p.numel() for p in source.model.parameters())),
        META_PREPROCESS: spec.model_dump_json(),
        META_DECODE: source.decode.model_dump_json(),
        META_QAT: json.dumps(qat_meta, sort_keys=True),
    }
    try:
        pairs, diff = export_qat_onnx(model, onnx_path, spec.input_size, metadata)
    except (RuntimeError, ValueError) as exc:
        raise TrainingError(f"QAT ONNX export failed: {str(exc).splitlines()[0]}") from exc
    echo(f"qat: wrote {onnx_path} ({pairs} Q/DQ pairs, max |onnx - fake-quant torch| {diff:.2e})")
    report = QatReport(
        source_checkpoint=str(opts.checkpoint),
        source_checkpoint_sha256=str(source.provenance.checkpoint_sha256),
        onnx=str(onnx_path),
        quantizers=quantizers,
        qdq_pairs=pairs,
        calibration_images=len(calib_idx),
        train_images=len(train_idx),
        epochs=opts.epochs,
        steps=steps,
        lr=opts.lr,
        batch_size=opts.batch_size,
        losses=losses,
        train_accuracy=accuracies,
        seconds=round(time.perf_counter() - started, 1),
        fake_quant_vs_onnx_max_abs_diff=diff,
    )
    (out / REPORT_NAME).write_text(json.dumps(asdict(report), indent=1), encoding="utf-8")
    return report
