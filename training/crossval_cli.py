"""``galaxy-train crossval``: its options (some shared with ``compare``) and its run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from training.cli_parsers import add_subcommand
from training.errors import TrainingError, UsageError
from training.variants import BASELINE, Variant


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


def check_data(data: Path) -> None:
    """Refuse a --data that is not there before any config is read or run trained."""
    if not data.exists():
        raise UsageError(f"{data}: does not exist; --data takes an .h5, a CSV or class folders")


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
    p = add_subcommand(
        sub,
        "crossval",
        help="compare training configs by repeated stratified k-fold",
        description="Train a base config and each --variant on the same repeated stratified "
        "k-fold folds; report accuracy and macro-F1 as mean ± std, and keep a variant only when "
        "its paired difference to the base is above the noise (corrected 95% interval). "
        "Writes crossval.json, crossval.md and one run directory per variant and fold; "
        "finished folds are reused when run again.",
        epilog=epilog,
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
    from training.crossval import run_crossval

    check_data(args.data)
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
