"""Accuracy under survey shift: every cross-validation run's test part, clean and under fixed
conditions a survey varies (depth, seeing, sky, noise, colour balance, scale).

The shared sample is the first ~100 images of each class in the file's order; cross-validation on
it cannot show how a recipe does on the survey at large. This does not either, but it measures
the nearest thing the project can: each fold's held-out images redrawn as another part of the
survey would record them, with fixed, named conditions (not random draws), so every run sees the
same images under the same conditions and the results stay paired across variants. A recipe that
trained with survey augmentation is expected to do better here (it trained on such conditions):
read this as "how much accuracy a model keeps when the conditions change", not as its accuracy on
a random draw of the survey.

``galaxy-train shift --runs CROSSVAL_OUT --data DATA`` reads ``<out>/<variant>/<fold>/`` (finished
runs of ``galaxy-train crossval``) and writes ``shift.json`` and ``shift.md`` there.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.errors import UsageError
from training.shift_report import compare_single, format_report, summarise
from training.survey_conditions import CLEAN, CONDITIONS, Condition, apply_condition, by_name

Echo = Callable[[str], None]
RESULTS_NAME = "shift.json"
REPORT_NAME = "shift.md"
NOISE_SEED = 12345


@torch.no_grad()
def evaluate_run(
    run_dir: Path,
    images: Any,
    conditions: Sequence[Condition],
    *,
    device: torch.device,
    batch_size: int = 64,
    correct: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, Any]]:
    """One finished run's test part under each condition: ``{condition: metrics}``.

    ``correct``, when given, receives per condition which test images were classified right
    (and ``_test``: the test part's item indices), for a per-image paired comparison."""
    from training.checkpoint import load_model_weights, resolve_weights
    from training.data import PreprocessedImages, make_loader, value_range
    from training.evaluate import compute_metrics
    from training.split import SPLIT_NAME, load_split

    weights = resolve_weights(run_dir)
    model, config = load_model_weights(weights)
    model.to(device).eval()
    test = load_split(run_dir / SPLIT_NAME, images.labels).part("test")
    loader = make_loader(
        PreprocessedImages(images, test, config.spec),
        batch_size,
        shuffle=False,
        workers=0,
        device=device,
        seed=config.seed,
    )
    limits = value_range(config.spec)
    predicted: dict[str, list[np.ndarray]] = {c.name: [] for c in conditions}
    labels: list[np.ndarray] = []
    for i, (batch, target) in enumerate(loader):
        batch = batch.to(device)
        for c in conditions:
            generator = torch.Generator(device=device).manual_seed(NOISE_SEED + i)
            shifted = apply_condition(batch, c, limits, generator)
            predicted[c.name].append(model(shifted).argmax(1).cpu().numpy())
        labels.append(np.asarray(target))
    truth = np.concatenate(labels).astype(np.int64)
    result: dict[str, dict[str, Any]] = {}
    for name, parts in predicted.items():
        metrics = compute_metrics(truth, np.concatenate(parts), config.num_classes)
        result[name] = {
            "accuracy": float(metrics["accuracy"]),
            "macro_f1": float(metrics["macro_f1"]),
            "images": int(metrics["images"]),
        }
    if correct is not None:
        correct.update({name: np.concatenate(parts) == truth for name, parts in predicted.items()})
        correct["_test"] = test
    return result


def finished_runs(out: Path) -> dict[str, list[Path]]:
    """``{variant: [run dirs]}`` of the finished runs below a crossval ``out``."""
    runs: dict[str, list[Path]] = {}
    for variant in sorted(p for p in out.iterdir() if p.is_dir()):
        done = sorted(d for d in variant.iterdir() if (d / "metrics.json").is_file())
        if done:
            runs[variant.name] = done
    return runs


def crossval_folds(runs_dir: Path) -> int:
    """k of the k-fold that made the runs, from the crossval report beside them."""
    from training.crossval import RESULTS_NAME as CROSSVAL_RESULTS

    path = runs_dir / CROSSVAL_RESULTS
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["folds"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"{path}: unreadable ({exc}); --runs takes the --out of galaxy-train crossval"
        ) from exc


def open_images(first_run: Path, data: Path) -> Any:
    """The labelled set, decoded as the runs' config says (one set serves every run)."""
    from edge_agent.contract.labelled_data import open_labelled
    from training.checkpoint import read_checkpoint_config, resolve_weights

    config = read_checkpoint_config(resolve_weights(first_run))
    return open_labelled(
        data, check_conflicts=config.check_conflicts, decode=config.decode.decoder()
    )


def write_report(doc: dict[str, Any], out: Path, echo: Echo) -> None:
    """shift.json and shift.md into ``out``; the report is echoed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_NAME).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    report = format_report(doc)
    (out / REPORT_NAME).write_text(report, encoding="utf-8")
    echo(report)


def run_shift(
    runs_dir: Path,
    data: Path,
    *,
    conditions: Sequence[Condition] = CONDITIONS,
    baseline: str = "base",
    device: torch.device | None = None,
    echo: Echo = print,
) -> dict[str, Any]:
    """Evaluate every finished run below ``runs_dir`` under ``conditions``; write the report."""

    if not runs_dir.is_dir():
        raise UsageError(
            f"{runs_dir}: not a folder; --runs takes the --out of galaxy-train crossval"
        )
    runs = finished_runs(runs_dir)
    if not runs:
        raise UsageError(f"{runs_dir}: no finished runs (<variant>/<fold>/metrics.json) below it")
    if baseline not in runs:
        raise UsageError(f"{runs_dir}: no finished run of the baseline {baseline!r}")
    device = device or torch.device("cpu")
    folds = crossval_folds(runs_dir)
    images = open_images(next(iter(runs.values()))[0], data)
    results: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for variant, dirs in runs.items():
        results[variant] = {}
        for run_dir in dirs:
            row = evaluate_run(run_dir, images, conditions, device=device)
            results[variant][run_dir.name] = row
            echo(
                f"{variant} {run_dir.name}: "
                + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in row.items())
            )
    doc: dict[str, Any] = {
        "title": f"{runs_dir} ({folds} folds)",
        "runs_dir": str(runs_dir),
        "data": str(data),
        "folds": folds,
        "conditions": [c.__dict__ for c in conditions],
        "runs": results,
        **summarise(results, conditions, folds, baseline),
    }
    write_report(doc, runs_dir, echo)
    return doc


def run_single(
    runs: dict[str, Path],
    data: Path,
    out: Path,
    *,
    conditions: Sequence[Condition] = CONDITIONS,
    device: torch.device | None = None,
    echo: Echo = print,
) -> dict[str, Any]:
    """Single runs that share their split (the first is the baseline), each on its test part
    under ``conditions``, compared image by image; writes the report into ``out``."""

    for name, run_dir in runs.items():
        if not (run_dir / "split.json").is_file():
            raise UsageError(f"--run {name}={run_dir}: not a run directory (no split.json)")
    device = device or torch.device("cpu")
    images = open_images(next(iter(runs.values())), data)
    results: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    correct: dict[str, dict[str, np.ndarray]] = {}
    for name, run_dir in runs.items():
        correct[name] = {}
        row = evaluate_run(run_dir, images, conditions, device=device, correct=correct[name])
        results[name] = {"test": row}
        echo(f"{name}: " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in row.items()))
    baseline = next(iter(runs))
    doc: dict[str, Any] = {
        "title": ", ".join(f"{n} = {d}" for n, d in runs.items()),
        "data": str(data),
        "conditions": [c.__dict__ for c in conditions],
        "runs": results,
        "summary": summarise(results, conditions, 0, baseline)["summary"],
        "per_image": compare_single(correct, conditions, baseline),
        "comparisons": [],
    }
    write_report(doc, out, echo)
    return doc


def parse_run(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=RUN_DIR")
    return name, Path(path)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], epilog: str) -> None:
    p = sub.add_parser(
        "shift",
        help="accuracy of crossval runs under fixed survey conditions",
        description="Evaluate every finished run of a galaxy-train crossval --out on its own "
        "test part, clean and under fixed survey conditions (fainter, brighter, seeing, sky, "
        "noise, colour, stretch, smaller, larger); report mean accuracy per variant and "
        "condition and each variant's paired difference to the base. Writes shift.json and "
        "shift.md into --runs.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--runs", type=Path, help="the --out of galaxy-train crossval")
    which.add_argument(
        "--run",
        action="append",
        type=parse_run,
        metavar="NAME=RUN_DIR",
        help="a single run instead (repeatable; the first is the baseline); runs must share "
        "their split and are compared image by image (McNemar); needs --out",
    )
    p.add_argument("--out", type=Path, help="with --run: the folder for shift.json and shift.md")
    p.add_argument("--data", required=True, type=Path, help="the --data the runs trained on")
    p.add_argument(
        "--conditions",
        help="comma-separated subset, e.g. clean,seeing,noise (default: all: "
        + ",".join(c.name for c in CONDITIONS)
        + ")",
    )
    p.add_argument("--baseline", default="base", help="variant the others are compared to")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")


def run(args: argparse.Namespace) -> int:
    from edge_agent.contract import exit_codes

    if not args.data.exists():
        raise UsageError(f"{args.data}: does not exist; --data takes the set the runs trained on")
    conditions = CONDITIONS
    if args.conditions:
        names = [n.strip() for n in args.conditions.split(",") if n.strip()]
        if CLEAN not in names:
            names.insert(0, CLEAN)
        conditions = by_name(names)
    if args.run:
        if args.out is None:
            raise UsageError("--run needs --out, the folder for shift.json and shift.md")
        runs = dict(args.run)
        if len(runs) != len(args.run):
            raise UsageError("--run names must differ")
        run_single(
            runs, args.data, args.out, conditions=conditions, device=torch.device(args.device)
        )
        return exit_codes.OK
    run_shift(
        args.runs,
        args.data,
        conditions=conditions,
        baseline=args.baseline,
        device=torch.device(args.device),
    )
    return exit_codes.OK
