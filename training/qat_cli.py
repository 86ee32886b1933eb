"""``galaxy-train qat``: the subcommand's options and its run (training/qat.py).

Kept beside :mod:`training.cli`, which adds the parser and dispatches to :func:`run`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_agent.contract import exit_codes
from training.cli_parsers import add_subcommand

DESCRIPTION = (
    "Quantization-aware fine-tuning: INT8 fake-quant (NVIDIA ModelOpt) inserted into a trained "
    "run, fine-tuned on its training split only, exported to OUT/model_qat.onnx with explicit "
    "symmetric Q/DQ. Build and gate it with: build-engine --onnx OUT/model_qat.onnx --precision "
    "int8 --reference RUN --gate-data HELDOUT"
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], epilog: str) -> None:
    q = add_subcommand(
        sub,
        "qat",
        help="quantization-aware fine-tuning to an INT8 Q/DQ ONNX file",
        description=DESCRIPTION,
        epilog=epilog,
    )
    q.add_argument("--checkpoint", required=True, type=Path, help="the trained run directory")
    q.add_argument("--data", required=True, type=Path, help="the run's data (its split indexes it)")
    q.add_argument("--out", required=True, type=Path, help="directory for model_qat.onnx, qat.json")
    q.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (default 2)")
    q.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (default 1e-5)")
    q.add_argument("--batch-size", type=int, default=16, help="default 16")
    q.add_argument(
        "--calib-images", type=int, default=256, help="training images for the initial ranges"
    )
    q.add_argument("--max-steps", type=int, help="stop after this many steps (short CPU runs)")
    q.add_argument("--limit", type=int, help="use N training images spread evenly (smoke runs)")
    q.add_argument("--seed", type=int, default=0, help="seed of the shuffling and augmentation")
    q.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    q.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=True,
        help="no progress bar on stderr",
    )


def run(args: argparse.Namespace) -> int:
    from training.checkpoint import resolve_weights
    from training.qat import QatOptions, run_qat

    resolve_weights(args.checkpoint)  # missing or tampered weights: refused before the data
    report = run_qat(
        QatOptions(
            checkpoint=args.checkpoint,
            data=args.data,
            out=args.out,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            calib_images=args.calib_images,
            max_steps=args.max_steps,
            limit=args.limit,
            seed=args.seed,
            device=args.device,
            progress=args.progress,
        )
    )
    print(
        f"{report.onnx}: {report.qdq_pairs} Q/DQ pairs after {report.steps} QAT steps on "
        f"{report.train_images} training images ({report.seconds:.0f} s)"
    )
    return exit_codes.OK
