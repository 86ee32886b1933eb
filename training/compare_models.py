"""The paper's comparison as one command: timm models trained and evaluated alike.

``galaxy-train compare`` runs :mod:`training.crossval` with one variant per model (same base
config, same folds, same seeds), then measures each model's parameters and its CPU latency (batch
1, float32, eval mode, on the machine that runs the command) and writes ``compare.json``,
``compare.md`` (accuracy and macro-F1 as mean ± std, parameters, ms per image, the paired verdict
against the first model) and ``compare.png`` (accuracy against latency).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from training import host
from training.cli_parsers import add_subcommand
from training.crossval import run_crossval
from training.crossval_cli import add_common, base_values, check_data, cli_overrides
from training.errors import TrainingError, UsageError
from training.variants import Variant, variant_values

Echo = Callable[[str], None]
# MobileViT-S and the lightweight peers the paper compares it with, as timm names.
DEFAULT_MODELS = (
    "mobilevit_s",
    "mobilenetv3_large_100",
    "efficientnet_b0",
    "ghostnet_100",
    "resnet18",
    "resnet50",
)
RESULTS_NAME = "compare.json"
REPORT_NAME = "compare.md"
PLOT_NAME = "compare.png"


def cpu_name() -> str:
    """The CPU's model name; the machine type where the platform names no processor."""
    return host.cpu_name(platform.machine())


def cpu_latency_ms(
    model: Any, image_size: int, *, threads: int, warmup: int = 3, repeats: int = 15
) -> float:
    """Median wall time of one forward pass of a 1 x 3 x S x S batch on the CPU, in ms."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = model.float().eval().to("cpu")
        x = torch.zeros(1, 3, image_size, image_size)
        times: list[float] = []
        with torch.inference_mode():
            for i in range(warmup + repeats):
                began = time.perf_counter()
                model(x)
                if i >= warmup:
                    times.append((time.perf_counter() - began) * 1000.0)
        return statistics.median(times)
    finally:
        torch.set_num_threads(previous)


def profile_models(
    names: Sequence[str],
    base: dict[str, Any],
    *,
    threads: int,
    repeats: int = 15,
) -> dict[str, dict[str, Any]]:
    """Parameters and CPU ms per image of each model, built as the comparison trains it."""
    from training.config import make_config
    from training.model import count_parameters, create_model

    result: dict[str, dict[str, Any]] = {}
    for name in names:
        config = make_config({**base, "model": name, "out": "unused"}, f"model {name}")
        model = create_model(
            name, config.num_classes, None, config.drop_rate, **config.model_kwargs
        )
        result[name] = {
            "parameters": count_parameters(model),
            "cpu_ms_per_image": cpu_latency_ms(
                model, config.image_size, threads=threads, repeats=repeats
            ),
            "image_size": config.image_size,
        }
    return result


def format_table(doc: dict[str, Any]) -> str:
    """compare.md: one row per model, and the paired verdict against the first."""
    first = doc["models"][0]
    verdicts = {
        c["variant"]: c for c in doc["crossval"]["comparisons"] if c["metric"] == "accuracy"
    }
    lines = [
        f"# Model comparison: {doc['crossval']['folds']}-fold x {doc['crossval']['repeats']} on "
        f"{doc['crossval']['data']} ({doc['crossval']['images']} images)",
        "",
        f"CPU latency: batch 1, float32, PyTorch eager, {doc['threads']} threads on "
        f"{doc['cpu']}, median of {doc['timing_repeats']} after warm-up.",
        "",
        f"| model | parameters | folds | accuracy | macro-F1 | ms / image (CPU) | accuracy vs {first} |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in doc["models"]:
        s = doc["crossval"]["summary"][name]
        p = doc["profile"][name]

        def pm(metric: str, row: dict[str, Any] = s) -> str:
            std = row[f"{metric}_std"]
            mean = row[f"{metric}_mean"]
            return f"{mean:.3f} ± {std:.3f}" if math.isfinite(std) else f"{mean:.3f}"

        c = verdicts.get(name)
        verdict = (
            f"{c['mean_diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] {c['verdict']}"
            if c
            else "(reference)"
        )
        lines.append(
            f"| {name} | {p['parameters'] / 1e6:.2f} M | {s['runs']} | {pm('accuracy')} | "
            f"{pm('macro_f1')} | "
            f"{p['cpu_ms_per_image']:.1f} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    """Accuracy (mean ± std over the folds) against CPU ms per image; marker area ~ parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name in doc["models"]:
        s, p = doc["crossval"]["summary"][name], doc["profile"][name]
        std = s["accuracy_std"] if math.isfinite(s["accuracy_std"]) else 0.0
        ax.errorbar(p["cpu_ms_per_image"], s["accuracy_mean"], yerr=std, fmt="none", ecolor="0.5")
        ax.scatter(
            p["cpu_ms_per_image"],
            s["accuracy_mean"],
            s=20 + p["parameters"] / 1e5,
            alpha=0.7,
        )
        ax.annotate(
            f"{name} ({p['parameters'] / 1e6:.1f} M)",
            (p["cpu_ms_per_image"], s["accuracy_mean"]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    ax.set_xlabel(f"CPU ms per image (batch 1, {doc['threads']} threads)")
    ax.set_ylabel("test accuracy (mean ± std over folds)")
    ax.set_title(
        f"{doc['crossval']['folds']}-fold x {doc['crossval']['repeats']}, "
        f"{doc['crossval']['images']} images"
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_compare(
    base: dict[str, Any],
    models: Sequence[str],
    out: Path,
    *,
    folds: int,
    repeats: int,
    seed: int,
    threads: int,
    timing_repeats: int = 15,
    forced: dict[str, Any] | None = None,
    report_only: bool = False,
    echo: Echo = print,
) -> dict[str, Any]:
    """Train (or, with ``report_only``, only report the finished folds of) each model, then
    profile them all and write the table and the plot."""
    if len(models) < 2:
        raise UsageError("--models: a comparison needs at least two models")
    variants = [Variant(name, {"model": name}) for name in models]
    crossval = run_crossval(
        base,
        variants,
        out,
        folds=folds,
        repeats=repeats,
        seed=seed,
        forced=forced,
        report_only=report_only,
        echo=echo,
    )
    unfinished = [m for m in models if not crossval["runs"].get(m)]
    if unfinished:
        raise UsageError(
            f"{out}: no finished fold of {', '.join(unfinished)}; train them first (run without "
            "--report-only) or leave them out of --models"
        )
    alike = variant_values(base, Variant("", {}), forced)
    profile = profile_models(models, alike, threads=threads, repeats=timing_repeats)
    doc = {
        "models": list(models),
        "cpu": cpu_name(),
        "threads": threads,
        "timing_repeats": timing_repeats,
        "profile": profile,
        "crossval": crossval,
    }
    (out / RESULTS_NAME).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    table = format_table(doc)
    (out / REPORT_NAME).write_text(table, encoding="utf-8")
    plot(doc, out / PLOT_NAME)
    echo(table)
    return doc


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], epilog: str) -> None:
    p = add_subcommand(
        sub,
        "compare",
        help="the paper's comparison: several timm models trained and evaluated alike",
        description="Train each --models entry with the same base config on the same repeated "
        "stratified k-fold (galaxy-train crossval), then measure parameters and CPU ms per "
        "image. Writes compare.json, compare.md (table) and compare.png (plot).",
        epilog=epilog,
    )
    add_common(p)
    p.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated timm names; the first is the reference (default {','.join(DEFAULT_MODELS)})",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for the latency (default: all)"
    )
    p.add_argument(
        "--timing-repeats", type=int, default=15, help="timed forward passes per model (15)"
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: profile the models and report the folds that are finished",
    )


def run(args: argparse.Namespace) -> int:
    import os

    from edge_agent.contract import exit_codes

    check_data(args.data)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    try:
        run_compare(
            base_values(args),
            models,
            args.out,
            folds=args.folds,
            repeats=args.repeats,
            seed=args.seed,
            threads=args.threads or os.cpu_count() or 1,
            timing_repeats=args.timing_repeats,
            forced=cli_overrides(args),
            report_only=args.report_only,
        )
    except OSError as exc:
        raise TrainingError(f"{args.out}: cannot write the results ({exc})") from exc
    return exit_codes.OK
