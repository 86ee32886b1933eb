"""Report figures: the confusion matrix and the loss/accuracy curves, as PNG files.

matplotlib's Agg backend is selected explicitly: training hosts have no display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from edge_agent.contract.classes import CLASS_NAMES


def confusion_matrix_png(matrix: Sequence[Sequence[int]], path: Path) -> Path:
    """Row-normalised colours (recall per true class) with the raw counts written in."""
    counts = np.asarray(matrix, dtype=np.int64)
    n = counts.shape[0]
    names = list(CLASS_NAMES) if n == len(CLASS_NAMES) else [str(i) for i in range(n)]
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(9, 8))
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    labels = [f"{i} {name}" for i, name in enumerate(names)]
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color=colour)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curves_png(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Training and validation loss and accuracy per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        loss_ax.plot(epochs, [h[key] for h in history], marker=".", label=label)
    for key, label in (("train_acc", "train"), ("val_acc", "validation")):
        acc_ax.plot(epochs, [h[key] for h in history], marker=".", label=label)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
