"""Cross-validation of training configs: every variant trained on every fold of one plan.

One split of a 1,000-image sample moves accuracy by several points from one seed to the next, so
a change of recipe is judged on every fold of a repeated stratified k-fold, all configs on the
same folds (paired). Each fold's test part is held out; the rest is split (stratified) into
training and a validation part for early stopping and calibration. The folds and the paired
statistics are in :mod:`training.kfold`, the configs in :mod:`training.variants`, the summary and
``crossval.md`` in :mod:`training.crossval_report`, the command line in
:mod:`training.crossval_cli`; their names are re-exported here, where they were first defined.

``galaxy-train crossval`` writes ``<out>/<variant>/<fold>/`` (ordinary run directories),
``crossval.json`` and ``crossval.md``; finished folds are reused when it is run again, so a long
comparison can be stopped and continued.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.crossval_cli import (
    CLI_KEYS,
    add_common,
    add_parser,
    base_values,
    cli_overrides,
    parse_variant,
    run,
)
from training.crossval_report import METRICS, format_report, summarise
from training.errors import UsageError
from training.kfold import Comparison, Fold, compare_paired, stratified_folds
from training.variants import BASELINE, Variant, deep_merge, fold_values, variant_values

__all__ = [
    "BASELINE",
    "CLI_KEYS",
    "METRICS",
    "REPORT_NAME",
    "RESULTS_NAME",
    "Comparison",
    "Fold",
    "Variant",
    "add_common",
    "add_parser",
    "base_values",
    "check_model_name",
    "cli_overrides",
    "compare_paired",
    "deep_merge",
    "fold_values",
    "format_report",
    "parse_variant",
    "run",
    "run_crossval",
    "run_fold",
    "stratified_folds",
    "summarise",
    "variant_values",
]

Echo = Callable[[str], None]
RESULTS_NAME = "crossval.json"
REPORT_NAME = "crossval.md"


def _finished(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return metrics if metrics.get("test") else None


def run_fold(
    values: dict[str, Any],
    fold: Fold,
    labels: np.ndarray,
    folds: int,
    echo: Echo,
    *,
    train_missing: bool = True,
) -> dict[str, Any] | None:
    """Train one variant on one fold (or reuse its finished run); returns its test figures.

    With ``train_missing`` False an unfinished fold is left alone (None).
    """
    from training.config import make_config
    from training.train import train

    config = make_config(values, "crossval")
    run_dir = Path(config.out)
    metrics = _finished(run_dir)
    began = time.perf_counter()
    if metrics is None and not train_missing:
        return None
    if metrics is None:
        resume = (run_dir / "last.pt").is_file()
        split = fold.split(labels, config.seed, config.val_fraction, folds)
        metrics = train(config, resume=resume, echo=echo, split=split)
    test = metrics["test"]
    return {
        "accuracy": float(test["accuracy"]),
        "macro_f1": float(test["macro_f1"]),
        "images": int(test["images"]),
        "best_epoch": int(metrics.get("best_epoch", 0)),
        "seconds": round(time.perf_counter() - began, 1),
    }


def check_model_name(name: str, variant: str) -> None:
    import timm

    from training.errors import ModelError

    if not timm.is_model(name):
        raise ModelError(f"variant {variant}: unknown timm model {name!r}")


def run_crossval(
    base: dict[str, Any],
    variants: Sequence[Variant],
    out: Path,
    *,
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
    only: Sequence[str] = (),
    forced: dict[str, Any] | None = None,
    report_only: bool = False,
    echo: Echo = print,
) -> dict[str, Any]:
    """Train every variant on every fold (fold by fold, so partial results stay paired).

    ``only``: train just these variants and report the others' finished folds, so several
    processes (one per variant, sharing ``out``) can fill one comparison side by side.
    ``report_only``: train nothing, report the finished folds.
    """
    from edge_agent.contract.labelled_data import open_labelled
    from training.config import make_config

    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise UsageError(f"variant names must differ: {', '.join(names)}")
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise UsageError(f"--only {', '.join(unknown)}: no such variant ({', '.join(names)})")
    for v in variants:  # every config and model name validated before hours of training
        values = variant_values(base, v, forced) | {"out": str(out / v.name)}
        check_model_name(make_config(values, f"variant {v.name}").model, v.name)
    first = make_config(variant_values(base, variants[0], forced) | {"out": str(out)})
    images = open_labelled(
        first.data,
        limit=first.limit,
        check_conflicts=first.check_conflicts,
        decode=first.decode.decoder(),
    )
    labels = images.labels
    plan = stratified_folds(labels, folds, repeats, seed, first.val_fraction)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, Any]]] = {v.name: {} for v in variants}
    doc: dict[str, Any] = {}
    for fold in plan:
        for v in variants:
            values = fold_values(base, v, fold, out, forced)
            train_it = not report_only and (not only or v.name in only)
            row = run_fold(values, fold, labels, folds, lambda _: None, train_missing=train_it)
            if row is None:
                continue
            results[v.name][fold.name] = row
            echo(
                f"{v.name} {fold.name}: accuracy {row['accuracy']:.3f}, macro-F1 "
                f"{row['macro_f1']:.3f} ({row['images']} test images, {row['seconds']:.0f} s)"
            )
        doc = {
            "data": str(first.data),
            "images": len(labels),
            "folds": folds,
            "repeats": repeats,
            "seed": seed,
            "base": base,
            "forced": forced or {},
            "variants": {v.name: v.overrides for v in variants},
            "runs": results,
            **summarise(results, folds, variants[0].name),
        }
        _write_atomic(out / RESULTS_NAME, json.dumps(doc, indent=2) + "\n")
        _write_atomic(out / REPORT_NAME, format_report(doc))
    echo(format_report(doc))
    return doc


def _write_atomic(path: Path, text: str) -> None:
    """Write then rename: processes sharing ``out`` (``--only``) never leave a torn file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
