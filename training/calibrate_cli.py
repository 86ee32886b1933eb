"""``galaxy-train calibrate``: the subcommand's options and its run (training/calibration.py).

Kept beside :mod:`training.cli`, which adds the parser and dispatches to :func:`run`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_agent.contract import exit_codes
from training.cli_parsers import add_subcommand

DESCRIPTION = (
    "Fit temperature scaling on the run's validation split (from its split.json) and store T in "
    "best.safetensors (sha256 re-recorded), metrics.json ('calibration': ECE, NLL and Brier "
    "before and after, on validation and test) and reliability.png. The run's weights are "
    "verified first; the predictions do not change, only the probabilities."
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], epilog: str) -> None:
    c = add_subcommand(
        sub,
        "calibrate",
        help="fit the temperature of an existing run (calibrated confidence)",
        description=DESCRIPTION,
        epilog=epilog,
    )
    c.add_argument("--checkpoint", required=True, type=Path, help="the run directory")
    c.add_argument(
        "--data", required=True, type=Path, help="the run's data: h5, labels CSV or class folders"
    )
    c.add_argument("--bins", type=int, default=15, help="equal-width ECE bins (default 15)")
    c.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    c.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    c.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    c.add_argument(
        "--no-progress", dest="progress", action="store_false", default=True, help="no bar"
    )


def run(args: argparse.Namespace) -> int:
    from training.calibration import calibrate_run
    from training.checkpoint import resolve_weights
    from training.errors import UsageError
    from training.runtime import resolve_device

    if not Path(args.data).exists():
        raise UsageError(f"{args.data}: does not exist; --data takes the run's labelled data")
    if args.bins < 1:
        raise UsageError(f"--bins {args.bins}: must be at least 1")
    resolve_weights(args.checkpoint)  # missing or tampered weights: refused before the data
    calibrate_run(
        args.checkpoint,
        args.data,
        device=resolve_device(args.device),
        batch_size=args.batch_size,
        workers=args.workers,
        bins=args.bins,
        progress=args.progress,
    )
    return exit_codes.OK
