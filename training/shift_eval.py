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
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.errors import UsageError

Echo = Callable[[str], None]
RESULTS_NAME = "shift.json"
REPORT_NAME = "shift.md"
CLEAN = "clean"
NOISE_SEED = 12345


@dataclass(frozen=True)
class Condition:
    """One fixed observing condition, in shares of the input range (0 black, 1 white).

    ``psf_fwhm`` is a share of the image side (0.03 of a 256-px DECaLS cut-out is 7.7 px, 2.0
    arcsec); ``zoom`` above 1 shows the galaxy larger (a closer one), below 1 smaller with black
    sky around it (a farther one).
    """

    name: str
    meaning: str
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    contrast: float = 1.0
    psf_fwhm: float = 0.0
    sky: float = 0.0
    noise: float = 0.0
    zoom: float = 1.0


CONDITIONS: tuple[Condition, ...] = (
    Condition(CLEAN, "the images as they are"),
    Condition("fainter", "flux x0.6 (a shallower exposure or a farther galaxy)", gain=(0.6,) * 3),
    Condition("brighter", "flux x1.4", gain=(1.4,) * 3),
    Condition(
        "seeing", "extra Moffat PSF of FWHM 0.03 of the side (2 arcsec at 256 px)", psf_fwhm=0.03
    ),
    Condition("sky", "sky level +0.06 of the range (moonlight, background residuals)", sky=0.06),
    Condition("noise", "Gaussian sky noise of std 0.05 of the range", noise=0.05),
    Condition(
        "colour", "band gains 1.12 / 1.0 / 0.88 (zero points, extinction)", gain=(1.12, 1.0, 0.88)
    ),
    Condition(
        "stretch", "contrast x0.7 about the image mean (another display stretch)", contrast=0.7
    ),
    Condition("smaller", "galaxy shown at 0.75 of its size, black sky around", zoom=0.75),
    Condition("larger", "galaxy shown at 1.3 of its size", zoom=1.3),
)


def by_name(names: Sequence[str]) -> tuple[Condition, ...]:
    known = {c.name: c for c in CONDITIONS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown condition(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return tuple(known[n] for n in names)


def zoom_unit(unit: torch.Tensor, zoom: float) -> torch.Tensor:
    """An N x C x H x W batch in [0, 1] magnified ``zoom`` times about its centre."""
    if zoom == 1.0:
        return unit
    n = unit.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=unit.dtype, device=unit.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / zoom  # output -> input coordinates
    grid = F.affine_grid(theta, list(unit.shape), align_corners=False)
    return F.grid_sample(unit, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def apply_condition(
    batch: torch.Tensor,
    condition: Condition,
    input_range: tuple[float, float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``condition`` on an N x 3 x S x S model-input batch (values in ``input_range``), through
    the same effects as training's survey augmentation, at fixed strengths."""
    from training.recipe_config import SurveyAugmentConfig
    from training.survey_augment import SurveyDraw, apply, from_unit, to_unit

    if condition.name == CLEAN:
        return batch
    n, side = batch.shape[0], batch.shape[-1]
    unit = zoom_unit(to_unit(batch.float(), input_range), condition.zoom)
    params = SurveyDraw(
        gain=torch.tensor(condition.gain, dtype=unit.dtype).repeat(n, 1),
        contrast=torch.full((n,), condition.contrast),
        psf_fwhm=torch.full((n,), condition.psf_fwhm * side),
        sky=torch.full((n,), condition.sky),
        noise=torch.full((n,), condition.noise),
    )
    config = SurveyAugmentConfig(psf_profile="moffat")
    return from_unit(apply(unit, params, config, generator), input_range)


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
    from edge_agent.contract.labelled_data import open_labelled
    from training.checkpoint import read_checkpoint_config, resolve_weights

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
    first = read_checkpoint_config(resolve_weights(next(iter(runs.values()))[0]))
    images = open_labelled(
        data, check_conflicts=first.check_conflicts, decode=first.decode.decoder()
    )
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
    (runs_dir / RESULTS_NAME).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    report = format_report(doc)
    (runs_dir / REPORT_NAME).write_text(report, encoding="utf-8")
    echo(report)
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
    from edge_agent.contract.labelled_data import open_labelled
    from training.checkpoint import read_checkpoint_config, resolve_weights

    for name, run_dir in runs.items():
        if not (run_dir / "split.json").is_file():
            raise UsageError(f"--run {name}={run_dir}: not a run directory (no split.json)")
    device = device or torch.device("cpu")
    first = read_checkpoint_config(resolve_weights(next(iter(runs.values()))))
    images = open_labelled(
        data, check_conflicts=first.check_conflicts, decode=first.decode.decoder()
    )
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
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_NAME).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    report = format_report(doc)
    (out / REPORT_NAME).write_text(report, encoding="utf-8")
    echo(report)
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
