"""Repeated stratified k-fold on a labelled set, and a comparison of training configs on it.

One split of a 1,000-image sample moves accuracy by several points from one seed to the next, so
a change of recipe is judged on every fold of a repeated stratified k-fold, all configs on the
same folds (paired). Each fold's test part is held out; the rest is split (stratified) into
training and a validation part for early stopping and calibration.

A config is kept over the baseline only when it helps by more than the noise: the mean paired
difference over the J = k x repeats runs must have its 95% interval above zero. The interval
uses Nadeau and Bengio's corrected resampled t-test (Machine Learning 52, 2003): the training
sets of different folds overlap, so the differences are correlated and the plain standard error
``s / sqrt(J)`` is too small; the corrected one is ``s * sqrt(1 / J + n_test / n_train)``.

``galaxy-train crossval`` writes ``<out>/<variant>/<fold>/`` (ordinary run directories),
``crossval.json`` and ``crossval.md``; finished folds are reused when it is run again, so a long
comparison can be stopped and continued.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from training.errors import TrainingError, UsageError
from training.split import Split, labels_fingerprint, make_split

Echo = Callable[[str], None]
RESULTS_NAME = "crossval.json"
REPORT_NAME = "crossval.md"
METRICS = ("accuracy", "macro_f1")
BASELINE = "base"


@dataclass(frozen=True)
class Fold:
    """One (repeat, fold) of a repeated stratified k-fold, as item indices of the labelled set."""

    repeat: int
    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @property
    def name(self) -> str:
        return f"r{self.repeat}f{self.index}"

    def split(self, labels: np.ndarray, seed: int, val_fraction: float, folds: int) -> Split:
        return Split(
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=1.0 / folds,
            fingerprint=labels_fingerprint(labels),
            train=self.train,
            val=self.val,
            test=self.test,
        )


def stratified_folds(
    labels: np.ndarray, folds: int, repeats: int = 1, seed: int = 0, val_fraction: float = 0.1
) -> list[Fold]:
    """``repeats`` shufflings of ``folds`` stratified, disjoint test parts that cover every item.

    Within a repeat, each class is shuffled and dealt round-robin into the folds, so every fold
    holds each class's share to within one image. The non-test items of a fold are split per
    class into validation (``val_fraction``) and training.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if folds < 2:
        raise UsageError(f"--folds {folds}: k-fold needs at least 2 folds")
    if repeats < 1:
        raise UsageError(f"--repeats {repeats}: needs at least 1")
    smallest = int(np.bincount(labels)[np.unique(labels)].min()) if len(labels) else 0
    if smallest < folds:
        raise UsageError(
            f"a class has only {smallest} images, fewer than --folds {folds}; use fewer folds"
        )
    result: list[Fold] = []
    for r in range(repeats):
        rng = np.random.default_rng([seed, r])
        assignment = np.empty(len(labels), dtype=np.int64)
        offset = 0
        for cls in np.unique(labels):
            members = np.flatnonzero(labels == cls)
            members = members[rng.permutation(len(members))]
            # Round-robin from a rotating start, so the folds with one image more vary by class.
            assignment[members] = (np.arange(len(members)) + offset) % folds
            offset += len(members)
        for f in range(folds):
            test = np.flatnonzero(assignment == f)
            rest = np.flatnonzero(assignment != f)
            inner = make_split(labels[rest], seed * 7919 + r * 101 + f, val_fraction, 0.0)
            result.append(
                Fold(
                    r, f, train=np.sort(rest[inner.train]), val=np.sort(rest[inner.val]), test=test
                )
            )
    return result


@dataclass(frozen=True)
class Comparison:
    """A variant against the baseline on one metric, over the runs both finished (paired)."""

    variant: str
    baseline: str
    metric: str
    runs: int
    mean_diff: float
    std_diff: float
    corrected_se: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        if self.runs < 2 or not math.isfinite(self.corrected_se):
            return "too few runs"
        if self.low > 0:
            return "helps"
        if self.high < 0:
            return "hurts"
        return "within noise"

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "verdict": self.verdict}


def compare_paired(
    baseline: ArrayLike,
    variant: ArrayLike,
    test_share: float,
    *,
    names: tuple[str, str] = (BASELINE, "variant"),
    metric: str = "accuracy",
    confidence: float = 0.95,
) -> Comparison:
    """Mean paired difference ``variant - baseline`` with its corrected interval.

    ``test_share``: n_test / n of one fold (1 / k); the correction uses n_test / n_train.
    """
    from scipy.stats import t as student_t

    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(variant, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("paired results need the same runs")
    diff = b - a
    j = len(diff)
    mean = float(diff.mean()) if j else float("nan")
    if j < 2:
        std = se = low = high = float("nan")
    else:
        std = float(diff.std(ddof=1))
        ratio = test_share / (1.0 - test_share)
        se = std * math.sqrt(1.0 / j + ratio)
        half = float(student_t.ppf(0.5 + confidence / 2.0, j - 1)) * se
        low, high = mean - half, mean + half
    return Comparison(names[1], names[0], metric, j, mean, std, se, low, high)


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, Any]


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; nested dicts (survey, regularise, ...) merge key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def variant_values(
    base: dict[str, Any], variant: Variant, forced: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The base with the variant's overrides, then ``forced`` (the command line's options, which
    win over the base and every variant)."""
    values = deep_merge(deep_merge(base, variant.overrides), forced or {})
    if forced and "image_size" in forced and isinstance(values.get("preprocess"), dict):
        values["preprocess"] = {**values["preprocess"], "input_size": forced["image_size"]}
    return values


def fold_values(
    base: dict[str, Any],
    variant: Variant,
    fold: Fold,
    out: Path,
    forced: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The config values of one variant on one fold: its own run directory and init seed, and
    '{fold}' and '{out}' in teacher paths replaced by the fold's name and ``out``, so a variant
    distils from an earlier variant's run on the same fold (which never saw its test part)."""
    values = variant_values(base, variant, forced)
    values["out"] = str(out / variant.name / fold.name)
    values["seed"] = int(values.get("seed", 42)) + 1000 * fold.repeat + fold.index
    distill = values.get("distill")
    if isinstance(distill, dict) and distill.get("teachers"):
        distill = dict(distill)
        distill["teachers"] = [
            str(t).replace("{fold}", fold.name).replace("{out}", str(out))
            for t in distill["teachers"]
        ]
        values["distill"] = distill
    return values


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


def parse_variant(text: str) -> Variant:
    """``NAME=JSON`` (an object of config overrides) or ``NAME=FILE.json``."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=JSON or NAME=FILE.json")
    name, raw = text.split("=", 1)
    if not name or "/" in name or name.startswith("."):
        raise argparse.ArgumentTypeError(f"{name!r}: a variant name is a plain folder name")
    try:
        overrides = json.loads(raw if raw.lstrip().startswith("{") else Path(raw).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"variant {name}: unreadable overrides ({exc})") from exc
    if not isinstance(overrides, dict):
        raise argparse.ArgumentTypeError(f"variant {name}: overrides are a JSON object")
    return Variant(name, overrides)


def add_common(p: argparse.ArgumentParser) -> None:
    """Options crossval and compare share: data, base config, folds, and base overrides."""
    p.add_argument("--data", required=True, type=Path, help="h5, labels CSV or class folders")
    p.add_argument("--out", required=True, type=Path, help="folder for the runs and the report")
    p.add_argument("--config", type=Path, help="base training config (JSON); default: defaults")
    p.add_argument("--folds", type=int, default=5, help="k of the k-fold (default 5)")
    p.add_argument("--repeats", type=int, default=1, help="reshufflings of the k-fold (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    p.add_argument("--epochs", type=int, help="epochs of every run (over the config and variants)")
    p.add_argument("--image-size", type=int, help="image_size of every run (idem)")
    p.add_argument("--limit", type=int, help="use N images spread evenly over the set")
    p.add_argument("--workers", type=int, help="DataLoader workers per run (default by device)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's)")
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bars",
    )


CLI_KEYS = ("epochs", "image_size", "limit", "device", "workers", "progress")


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line; they override the base and every variant."""
    return {k: getattr(args, k) for k in CLI_KEYS if getattr(args, k) is not None}


def base_values(args: argparse.Namespace) -> dict[str, Any]:
    base: dict[str, Any] = {}
    if args.config is not None:
        try:
            base = json.loads(args.config.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"{args.config}: unreadable config ({exc})") from exc
        if not isinstance(base, dict):
            raise UsageError(f"{args.config}: a config is a JSON object")
    base.pop("out", None)
    base["data"] = str(args.data)
    return base


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], epilog: str) -> None:
    p = sub.add_parser(
        "crossval",
        help="compare training configs by repeated stratified k-fold",
        description="Train a base config and each --variant on the same repeated stratified "
        "k-fold folds; report accuracy and macro-F1 as mean ± std, and keep a variant only when "
        "its paired difference to the base is above the noise (corrected 95% interval). "
        "Writes crossval.json, crossval.md and one run directory per variant and fold; "
        "finished folds are reused when run again.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p)
    p.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        default=[],
        metavar="NAME=JSON|FILE",
        help='config overrides on top of the base, e.g. ema=\'{"regularise": {"ema_decay": '
        "0.999}}'; repeat for more",
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="train only this variant (repeatable; 'base' is the base) and report the others' "
        "finished folds: one process per variant can share --out, then a last call with "
        "--report-only writes the full report",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing; report the folds that are finished",
    )


def run(args: argparse.Namespace) -> int:
    from edge_agent.contract import exit_codes

    if not args.data.exists():
        raise UsageError(
            f"{args.data}: does not exist; --data takes an .h5, a CSV or class folders"
        )
    variants = [Variant(BASELINE, {}), *args.variant]
    try:
        run_crossval(
            base_values(args),
            variants,
            args.out,
            folds=args.folds,
            repeats=args.repeats,
            seed=args.seed,
            only=args.only,
            forced=cli_overrides(args),
            report_only=args.report_only,
        )
    except OSError as exc:
        raise TrainingError(f"{args.out}: cannot write the results ({exc})") from exc
    return exit_codes.OK
