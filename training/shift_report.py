"""The figures of ``galaxy-train shift``: per-variant means, paired comparisons, the report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from training.errors import UsageError
from training.survey_conditions import CLEAN, Condition


def summarise(
    results: dict[str, dict[str, dict[str, dict[str, Any]]]],
    conditions: Sequence[Condition],
    folds: int,
    baseline: str,
) -> dict[str, Any]:
    """Per variant, the mean accuracy per condition and over the shifted ones; each variant's
    paired comparison to the baseline on the clean and the shifted mean accuracy (none when
    ``folds`` is below 2: single runs)."""
    from training.crossval import compare_paired

    shifted = [c.name for c in conditions if c.name != CLEAN]

    def per_run(runs: dict[str, dict[str, dict[str, Any]]], fold: str, key: str) -> float:
        if key == "shifted":
            return float(np.mean([runs[fold][c]["accuracy"] for c in shifted]))
        return float(runs[fold][key]["accuracy"])

    keys = [c.name for c in conditions] + (["shifted"] if shifted else [])
    summary: dict[str, dict[str, float]] = {}
    for name, runs in results.items():
        summary[name] = {
            key: float(np.mean([per_run(runs, f, key) for f in runs])) for key in keys
        } | {"runs": len(runs)}
    comparisons: list[dict[str, Any]] = []
    base_runs = results.get(baseline, {})
    for name, runs in results.items():
        if name == baseline or folds < 2:
            continue
        common = sorted(set(runs) & set(base_runs))
        for key in [k for k in (CLEAN, "shifted") if k in keys]:
            c = compare_paired(
                [per_run(base_runs, f, key) for f in common],
                [per_run(runs, f, key) for f in common],
                1.0 / folds,
                names=(baseline, name),
                metric=f"accuracy ({key})",
            )
            comparisons.append(c.to_json())
    return {"summary": summary, "comparisons": comparisons}


def mcnemar(base: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """Two runs' per-image outcomes on the same images: the discordant counts and McNemar's exact
    two-sided p-value (only images one run gets right and the other wrong carry information)."""
    from scipy.stats import binomtest

    gained = int(np.sum(other & ~base))
    lost = int(np.sum(base & ~other))
    p = 1.0 if gained + lost == 0 else float(binomtest(gained, gained + lost, 0.5).pvalue)
    return {"gained": gained, "lost": lost, "p_value": p}


def compare_single(
    correct: dict[str, dict[str, np.ndarray]], conditions: Sequence[Condition], baseline: str
) -> list[dict[str, Any]]:
    """Each run against the baseline, per condition, on the same test images."""
    rows: list[dict[str, Any]] = []
    base = correct[baseline]
    for name, own in correct.items():
        if name == baseline:
            continue
        if not np.array_equal(own["_test"], base["_test"]):
            raise UsageError(
                f"runs {baseline} and {name} have other test parts; compare runs that share "
                "their split (the same data, seed and fractions)"
            )
        for c in conditions:
            diff = float(own[c.name].mean() - base[c.name].mean())
            rows.append(
                {"variant": name, "condition": c.name, "diff": diff}
                | mcnemar(base[c.name], own[c.name])
            )
    return rows


def format_report(doc: dict[str, Any]) -> str:
    names = [c["name"] for c in doc["conditions"]]
    keys = names + (["shifted"] if len(names) > 1 else [])
    lines = [
        f"# Accuracy under survey shift: {doc['title']}",
        "",
        "Test accuracy (the mean over the finished folds of each variant); `shifted` is the "
        "mean over every condition but `clean`.",
        "",
        "| variant | runs | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for name, row in doc["summary"].items():
        cells = " | ".join(f"{row[k]:.3f}" for k in keys)
        lines.append(f"| {name} | {row['runs']} | {cells} |")
    lines += ["", "| condition | what it is |", "|---|---|"]
    lines += [f"| {c['name']} | {c['meaning']} |" for c in doc["conditions"]]
    if doc.get("per_image"):
        lines += [
            "",
            "Against the baseline on the same test images: images gained and lost, McNemar's "
            "exact two-sided p-value.",
            "",
            "| run | condition | diff | gained | lost | p |",
            "|---|---|---|---|---|---|",
        ]
        for r in doc["per_image"]:
            lines.append(
                f"| {r['variant']} | {r['condition']} | {r['diff']:+.3f} | {r['gained']} | "
                f"{r['lost']} | {r['p_value']:.3f} |"
            )
    if doc["comparisons"]:
        lines += [
            "",
            "Paired against the baseline on the same folds (95% interval, Nadeau-Bengio "
            "correction):",
            "",
            "| variant | metric | runs | mean diff | 95% interval | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for c in doc["comparisons"]:
            low, high = c["low"], c["high"]
            interval = f"[{low:+.3f}, {high:+.3f}]" if math.isfinite(low) else "n/a"
            lines.append(
                f"| {c['variant']} | {c['metric']} | {c['runs']} | {c['mean_diff']:+.3f} | "
                f"{interval} | {c['verdict']} |"
            )
    return "\n".join(lines) + "\n"
