"""galaxy-train: train a classifier, or evaluate a checkpoint on a labelled set.

A thin layer: argument parsing, then :func:`training.train.train` or
:func:`training.evaluate.evaluate_checkpoint`. Errors of this project become one line on stderr
and an exit code of :mod:`edge_agent.contract.exit_codes`; everything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.contract import exit_codes
from edge_agent.contract.errors import GalaxyEdgeError

DESCRIPTION = "Train a Galaxy10 classifier, or evaluate a checkpoint on a labelled set."
TRAIN_NOTES = (
    "The run directory gets best.safetensors (with its resolved config and preprocessing spec), "
    "best.safetensors.sha256, config.json, split.json, metrics.json and plots."
)


def _kwarg(text: str) -> tuple[str, int | float | str | bool]:
    """``key=value`` with the value read as int, float or bool where it looks like one."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    key, raw = text.split("=", 1)
    value: int | float | str | bool = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        for kind in (int, float):
            try:
                value = kind(raw)
                break
            except ValueError:
                continue
    return key, value


def _spec_file(text: str) -> dict[str, Any]:
    """A preprocessing spec JSON file, read (validated with the rest of the config)."""
    try:
        data = json.loads(Path(text).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"{text}: unreadable spec ({exc})") from exc
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"{text}: a spec is a JSON object")
    return data


def build_parser() -> argparse.ArgumentParser:
    epilog = exit_codes.epilog()
    parser = argparse.ArgumentParser(
        prog="galaxy-train",
        description=DESCRIPTION,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"galaxy-train {__version__}")
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="{train,evaluate,calibrate,qat,crossval,shift,compare}",
    )

    t = sub.add_parser(
        "train",
        help="train a model; writes a run directory",
        description="Train a model into a run directory. " + TRAIN_NOTES,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--data", help="Galaxy10_DECals.h5, a labels CSV or a folder of class folders")
    t.add_argument("--out", required=True, type=Path, help="run directory")
    t.add_argument("--config", type=Path, help="JSON config file; options given here override it")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    t.add_argument("--model", help="timm model name (default mobilevit_s)")
    t.add_argument(
        "--model-kwarg",
        action="append",
        type=_kwarg,
        default=[],
        metavar="KEY=VALUE",
        help="extra timm.create_model argument, e.g. img_size=256 for ViT",
    )
    t.add_argument("--pretrained", help="'hub' (ImageNet weights, online) or a local weights file")
    t.add_argument("--epochs", type=int, help="maximum epochs (default 100)")
    t.add_argument("--batch-size", type=int, help="default 32")
    t.add_argument("--image-size", type=int, help="model input side S (default 256)")
    t.add_argument(
        "--preprocess-spec",
        type=_spec_file,
        metavar="SPEC.json",
        help="the inference transform (input_size, crop, scale, offset...; see "
        "edge_agent.contract.preprocess); default: centre square, x / 127.5 - 1. It travels "
        "with the model into the ONNX file and the bundle",
    )
    t.add_argument(
        "--decode-spec",
        type=_spec_file,
        metavar="DECODE.json",
        help='how image files become pixels: {"stretch": {"method": "asinh"|"linear"|'
        '"percentile", "low_percentile", "high_percentile", "asinh_a"}, "fits": '
        '{"hdu", "bands"}} (see edge_agent.contract.decode_config; default asinh 0.5-99.5, '
        "first image HDU). It travels with the model into the bundle; the agent decodes the same",
    )
    t.add_argument(
        "--stretch",
        choices=["asinh", "linear", "percentile"],
        help="shorthand for the decode spec's stretch.method of 16-bit and float data (asinh)",
    )
    t.add_argument("--lr", type=float, help="initial learning rate (default 0.002)")
    t.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.01)")
    t.add_argument("--drop-rate", type=float, help="dropout before the head (default 0.2)")
    t.add_argument("--label-smoothing", type=float, help="default 0 (plain sparse cross-entropy)")
    t.add_argument("--grad-clip-norm", type=float, help="clip gradients to this norm (default off)")
    t.add_argument("--patience", type=int, help="early-stopping patience in epochs (default 5)")
    t.add_argument("--val-fraction", type=float, help="share of images for validation (0.1)")
    t.add_argument("--test-fraction", type=float, help="share of images for the test (0.1)")
    t.add_argument("--limit", type=int, help="use N images spread evenly over the set (smoke runs)")
    t.add_argument("--seed", type=int, help="seed of the split, the init and the augmentation")
    t.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    t.add_argument("--amp", choices=["auto", "off", "fp16", "bf16"], help="mixed precision (CUDA)")
    t.add_argument(
        "--workers", type=int, help="DataLoader workers (default 0 on CPU, up to 8 on GPU)"
    )
    t.add_argument(
        "--no-conflict-check",
        dest="check_conflicts",
        action="store_false",
        default=None,
        help="skip the duplicate-with-conflicting-label scan",
    )
    t.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bars (the per-epoch lines stay)",
    )

    e = sub.add_parser(
        "evaluate",
        help="classification report of a checkpoint on a labelled set",
        description="Classification report (the paper's Table 2) of a checkpoint, whose weights "
        "are verified against their recorded sha256 first.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("--checkpoint", required=True, type=Path, help="run directory or .safetensors")
    e.add_argument("--data", required=True, type=Path, help="h5, labels CSV or class folders")
    e.add_argument(
        "--split",
        default="all",
        choices=["all", "train", "val", "test"],
        help="evaluate one part of the run's split.json (default: every image)",
    )
    e.add_argument("--tta", action="store_true", help="also average the 8 dihedral transforms")
    e.add_argument("--out", type=Path, help="write evaluation.json and confusion_matrix.png here")
    e.add_argument("--limit", type=int, help="use N images spread evenly over the set")
    e.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    e.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    e.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    e.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=True,
        help="no progress bar",
    )
    from training.calibrate_cli import add_parser as add_calibrate

    add_calibrate(sub, epilog)
    from training.qat import add_parser as add_qat

    add_qat(sub, epilog)
    from training.crossval import add_parser as add_crossval

    add_crossval(sub, epilog)
    from training.shift_eval import add_parser as add_shift

    add_shift(sub, epilog)
    from training.compare_models import add_parser as add_compare

    add_compare(sub, epilog)
    return parser


_TRAIN_KEYS = (
    "data", "model", "pretrained", "epochs", "batch_size", "image_size", "lr", "weight_decay",
    "drop_rate", "label_smoothing", "grad_clip_norm", "patience", "val_fraction",
    "test_fraction", "limit", "seed", "device", "amp", "workers", "check_conflicts", "progress",
)  # fmt: skip


def train_config_values(args: argparse.Namespace) -> dict[str, Any]:
    """Options given on the command line (None means 'not given', so files and defaults rule)."""
    values = {k: getattr(args, k) for k in _TRAIN_KEYS if getattr(args, k) is not None}
    if args.model_kwarg:
        values["model_kwargs"] = dict(args.model_kwarg)
    if args.preprocess_spec is not None:
        values["preprocess"] = args.preprocess_spec
        size = args.preprocess_spec.get("input_size")
        if "image_size" not in values and isinstance(size, int):
            values["image_size"] = size
    if args.decode_spec is not None or args.stretch is not None:
        decode = dict(args.decode_spec or {})
        if args.stretch is not None:
            stretch = decode.get("stretch")
            decode["stretch"] = {
                **(stretch if isinstance(stretch, dict) else {}),
                "method": args.stretch,
            }
        values["decode"] = decode
    values["out"] = str(args.out)
    return values


def _require_path(path: str | Path, option: str) -> None:
    """Fail fast (exit 2) on an input path that does not exist, before any slow import."""
    from training.errors import UsageError

    if not Path(path).exists():
        raise UsageError(
            f"{path}: does not exist; {option} takes an .h5 file, a labels CSV or a class-folder tree"
        )


def run_train(args: argparse.Namespace) -> int:
    from training.config import CONFIG_NAME, load_config, make_config
    from training.errors import UsageError
    from training.train import train

    given = train_config_values(args)
    if args.resume:
        saved = load_config(args.out / CONFIG_NAME)
        allowed = {"out", "epochs", "device", "workers", "progress", "amp"}
        base = saved.model_dump(mode="json")
        changed = sorted(k for k in given if k not in allowed and given[k] != base.get(k))
        if changed:
            raise UsageError(f"--resume keeps the run's config; cannot change {', '.join(changed)}")
        # The saved preprocess spec stays: the resumed epochs must see what the first ones saw.
        config = make_config({**base, **given}, str(args.out / CONFIG_NAME))
    else:
        base = {}
        if args.config is not None:
            try:
                base = json.loads(args.config.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise UsageError(f"{args.config}: unreadable config ({exc})") from exc
        if "data" not in given and "data" not in base:
            raise UsageError("--data is required (an .h5, a labels CSV or a class-folder tree)")
        config = make_config({**base, **given}, str(args.config or "options"))
    _require_path(config.data, "--data")
    metrics = train(config, resume=args.resume)
    if metrics:
        test = metrics.get("test") or {}
        print(
            f"run {config.out}: best epoch {metrics['best_epoch']}, val acc {metrics['best_val_acc']:.4f}, "
            f"test acc {test.get('accuracy', float('nan')):.4f}, macro-F1 {test.get('macro_f1', float('nan')):.4f}, "
            f"{metrics['seconds_per_epoch']:.1f} s/epoch, peak RSS {metrics['peak_rss_bytes'] / 2**20:.0f} MiB"
        )
    return exit_codes.OK


def run_evaluate(args: argparse.Namespace) -> int:
    _require_path(args.data, "--data")
    from training.checkpoint import resolve_weights
    from training.evaluate import evaluate_checkpoint
    from training.runtime import resolve_device

    resolve_weights(args.checkpoint)  # missing or tampered weights: refused before the data
    evaluate_checkpoint(
        args.checkpoint,
        args.data,
        out=args.out,
        tta=args.tta,
        part=args.split,
        device=resolve_device(args.device),
        batch_size=args.batch_size,
        workers=args.workers,
        limit=args.limit,
        progress=args.progress,
    )
    return exit_codes.OK


def exit_code(exc: GalaxyEdgeError) -> int:
    """The exit code of a typed error (:mod:`edge_agent.contract.exit_codes`)."""
    from training.errors import ModelError, UsageError

    return exit_codes.USAGE if isinstance(exc, (UsageError, ModelError)) else exit_codes.FAILURE


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or argparse's one-line usage error
        return exc.code if isinstance(exc.code, int) else exit_codes.USAGE
    try:
        if args.command == "train":
            return run_train(args)
        if args.command == "calibrate":
            from training.calibrate_cli import run as run_calibrate

            return run_calibrate(args)
        if args.command == "qat":
            from training.qat import run as run_qat

            return run_qat(args)
        if args.command == "crossval":
            from training.crossval import run as run_crossval

            return run_crossval(args)
        if args.command == "shift":
            from training.shift_eval import run as run_shift

            return run_shift(args)
        if args.command == "compare":
            from training.compare_models import run as run_compare

            return run_compare(args)
        return run_evaluate(args)
    except GalaxyEdgeError as exc:
        print(f"galaxy-train: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("galaxy-train: interrupted; continue with --resume", file=sys.stderr)
        return exit_codes.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
