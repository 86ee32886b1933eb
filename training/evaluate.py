"""Metrics as in the paper's Table 2, test-time augmentation, and ``galaxy-train evaluate``.

TTA averages the softmax of the 8 dihedral transforms (4 rotations by 90 degrees, each with and
without a flip): exact on the pixel grid, so no interpolation blurs the input.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from tqdm import tqdm

from edge_agent.contract.classes import CLASS_NAMES
from edge_agent.contract.labelled_data import open_labelled
from training.checkpoint import load_model_weights, resolve_weights
from training.data import PreprocessedImages, make_loader
from training.split import SPLIT_NAME, load_split


def dihedral(batch: torch.Tensor, k: int) -> torch.Tensor:
    """Transform ``k`` (0..7) of the dihedral group D4 on N x C x H x W; 0 is the identity."""
    out = torch.rot90(batch, k % 4, dims=(2, 3))
    return torch.flip(out, dims=(3,)) if k >= 4 else out


def autocast_for(device: torch.device, amp_dtype: torch.dtype | None) -> Any:
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader[Any],
    device: torch.device,
    *,
    tta: bool = False,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, np.ndarray]:
    """Class probabilities and labels over ``loader``: ``{"probs", "labels"[, "probs_tta"]}``.

    With ``tta`` both the plain and the 8-transform average are returned, from one pass, so TTA
    is always measured against none.
    """
    was_training = model.training
    model.eval()
    plain: list[np.ndarray] = []
    averaged: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for batch, target in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
        batch = batch.to(device, non_blocking=True)
        with autocast_for(device, amp_dtype):
            probs = torch.softmax(model(batch).float(), dim=1)
            plain.append(probs.cpu().numpy())
            if tta:
                total = probs.clone()
                for k in range(1, 8):
                    total += torch.softmax(model(dihedral(batch, k)).float(), dim=1)
                averaged.append((total / 8).cpu().numpy())
        labels.append(np.asarray(target))
    model.train(was_training)
    result = {"probs": np.concatenate(plain), "labels": np.concatenate(labels).astype(np.int64)}
    if tta:
        result["probs_tta"] = np.concatenate(averaged)
    return result


def compute_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = 10
) -> dict[str, Any]:
    """Accuracy, macro and weighted F1, per-class precision/recall/F1/support, confusion matrix."""
    ids = list(range(num_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=ids, zero_division=0
    )
    present = support > 0
    macro = float(np.mean(f1[present])) if present.any() else 0.0
    weighted = float(np.average(f1, weights=support)) if support.sum() else 0.0
    names = CLASS_NAMES if num_classes == len(CLASS_NAMES) else [str(i) for i in ids]
    return {
        "images": len(y_true),
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        "macro_f1": macro,
        "weighted_f1": weighted,
        "per_class": [
            {
                "id": i,
                "name": names[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in ids
        ],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def format_report(metrics: dict[str, Any], title: str = "") -> str:
    """A classification report in the layout of the paper's Table 2."""
    lines = [title] if title else []
    lines.append(f"{'id':>2}  {'class':<26}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}")
    for row in metrics["per_class"]:
        lines.append(
            f"{row['id']:>2}  {row['name']:<26}{row['precision']:>10.3f}{row['recall']:>8.3f}"
            f"{row['f1']:>8.3f}{row['support']:>9d}"
        )
    lines.append(
        f"    {'accuracy':<26}{'':>10}{'':>8}{metrics['accuracy']:>8.3f}{metrics['images']:>9d}"
    )
    lines.append(f"    {'macro avg (f1)':<26}{'':>10}{'':>8}{metrics['macro_f1']:>8.3f}")
    lines.append(f"    {'weighted avg (f1)':<26}{'':>10}{'':>8}{metrics['weighted_f1']:>8.3f}")
    return "\n".join(lines)


def evaluate_checkpoint(
    checkpoint: Path,
    data: Path,
    *,
    out: Path | None = None,
    tta: bool = False,
    part: str = "all",
    device: torch.device | None = None,
    batch_size: int = 64,
    workers: int = 0,
    limit: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a labelled set (all of it, or one part of the run's split)."""
    from training.plots import confusion_matrix_png

    weights = resolve_weights(checkpoint)
    model, config = load_model_weights(weights)
    device = device or torch.device("cpu")
    model.to(device)
    images = open_labelled(
        data, limit=limit, check_conflicts=config.check_conflicts, decode=config.decode.decoder()
    )
    indices = np.arange(len(images))
    if part != "all":
        indices = load_split(weights.parent / SPLIT_NAME, images.labels).part(part)
    dataset = PreprocessedImages(images, indices, config.spec)
    loader = make_loader(
        dataset, batch_size, shuffle=False, workers=workers, device=device, seed=config.seed
    )
    result = predict(model, loader, device, tta=tta, progress=progress, desc="evaluate")
    report: dict[str, Any] = {
        "checkpoint": str(weights),
        "dataset": images.describe(),
        "part": part,
        "plain": compute_metrics(result["labels"], result["probs"].argmax(1), config.num_classes),
    }
    echo(format_report(report["plain"], f"{weights} on {data} ({part}, no TTA)"))
    if tta:
        report["tta"] = compute_metrics(
            result["labels"], result["probs_tta"].argmax(1), config.num_classes
        )
        echo(format_report(report["tta"], "with TTA (8 dihedral transforms averaged)"))
        delta = report["tta"]["accuracy"] - report["plain"]["accuracy"]
        echo(f"TTA changes accuracy by {delta * 100:+.2f} points")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        best = report["tta"] if tta else report["plain"]
        confusion_matrix_png(best["confusion_matrix"], out / "confusion_matrix.png")
    return report
