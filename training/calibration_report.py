"""What a calibration shows: the reliability diagram, the summary lines and metrics.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from training.errors import CheckpointError
from training.temperature import ece, reliability_bins

RELIABILITY_NAME = "reliability.png"


def reliability_png(
    curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    temperature: float,
    bins: int,
    path: Path,
) -> Path:
    """Reliability diagram: per set (validation, test), accuracy against confidence per bin,
    before and after temperature scaling, with the diagonal of perfect calibration and the ECE.

    ``curves`` maps a set's name to (probabilities before, probabilities after, labels).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 5), squeeze=False)
    width = 1.0 / bins
    for ax, (name, (before, after, labels)) in zip(axes[0], curves.items(), strict=True):
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
        for probs, label, colour, shift in (
            (before, "softmax(z)", "tab:red", -0.22),
            (after, f"softmax(z / {temperature:.2f})", "tab:blue", 0.22),
        ):
            r = reliability_bins(probs, labels, bins)
            filled = r.counts > 0
            centres = (r.edges[:-1] + r.edges[1:]) / 2 + shift * width
            ax.bar(
                centres[filled],
                r.accuracy[filled],
                width=0.44 * width,
                color=colour,
                alpha=0.75,
                label=f"{label}: ECE {ece(probs, labels, bins):.3f}",
            )
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="confidence (top probability)",
            ylabel="accuracy",
            title=f"{name} ({len(labels)} images, {bins} bins)",
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def describe(report: dict[str, Any]) -> str:
    """One line per set: ECE, NLL and Brier before and after."""
    lines = [f"temperature T = {report['temperature']:.4f} (fitted on the validation split)"]
    for name in ("validation", "test"):
        if name in report:
            r = report[name]
            b, a = r["before"], r["after"]
            lines.append(
                f"{name} ({r['images']} images): ECE {b['ece']:.4f} -> {a['ece']:.4f} "
                f"(a perfectly calibrated model would show {r['ece_noise_floor']:.4f} here), "
                f"NLL {b['nll']:.4f} -> {a['nll']:.4f}, Brier {b['brier']:.4f} -> {a['brier']:.4f}"
            )
    return "\n".join(lines)


def update_metrics(metrics_path: Path, report: dict[str, Any]) -> dict[str, Any] | None:
    """Put ``report`` under ``calibration`` in a run's metrics.json (None when there is none)."""
    if not metrics_path.is_file():
        return None
    try:
        metrics: dict[str, Any] = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{metrics_path}: unreadable metrics ({exc})") from exc
    metrics["calibration"] = report
    tmp = metrics_path.with_name(metrics_path.name + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, metrics_path)
    return metrics
