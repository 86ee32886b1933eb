"""What a cross-validation shows: mean ± std per variant, the paired comparisons, crossval.md."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from training.kfold import compare_paired
from training.variants import BASELINE

METRICS = ("accuracy", "macro_f1")


def summarise(
    results: dict[str, dict[str, dict[str, Any]]], folds: int, baseline: str = BASELINE
) -> dict[str, Any]:
    """Mean ± std per variant and metric, and each variant's paired comparison to the baseline."""
    summary: dict[str, Any] = {}
    for name, runs in results.items():
        row: dict[str, Any] = {"runs": len(runs)}
        for metric in METRICS:
            values = np.array([r[metric] for r in runs.values()], dtype=np.float64)
            row[f"{metric}_mean"] = float(values.mean()) if len(values) else float("nan")
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        summary[name] = row
    comparisons: list[dict[str, Any]] = []
    base_runs = results.get(baseline, {})
    for name, runs in results.items():
        if name == baseline:
            continue
        common = sorted(set(runs) & set(base_runs))
        for metric in METRICS:
            c = compare_paired(
                [base_runs[f][metric] for f in common],
                [runs[f][metric] for f in common],
                1.0 / folds,
                names=(baseline, name),
                metric=metric,
            )
            comparisons.append(c.to_json())
    return {"summary": summary, "comparisons": comparisons}


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}" if math.isfinite(std) else f"{mean:.3f}"


def format_report(doc: dict[str, Any]) -> str:
    """crossval.md: the per-variant table and the paired comparisons."""
    lines = [
        f"# Cross-validation: {doc['folds']}-fold x {doc['repeats']} on {doc['data']} "
        f"({doc['images']} images)",
        "",
        "| variant | runs | accuracy (mean ± std) | macro-F1 (mean ± std) |",
        "|---|---|---|---|",
    ]
    for name, row in doc["summary"].items():
        lines.append(
            f"| {name} | {row['runs']} | {_pm(row['accuracy_mean'], row['accuracy_std'])} | "
            f"{_pm(row['macro_f1_mean'], row['macro_f1_std'])} |"
        )
    if doc["comparisons"]:
        lines += [
            "",
            "Paired against the baseline on the same folds; 95% interval of the mean difference "
            "with the Nadeau-Bengio correction for overlapping training sets.",
            "",
            "| variant | metric | runs | mean diff | std of diffs | 95% interval | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in doc["comparisons"]:
            lines.append(
                f"| {c['variant']} | {c['metric']} | {c['runs']} | {c['mean_diff']:+.3f} | "
                f"{c['std_diff']:.3f} | [{c['low']:+.3f}, {c['high']:+.3f}] | {c['verdict']} |"
            )
    return "\n".join(lines) + "\n"
