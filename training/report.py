"""The run report: test metrics of the restored best weights, metrics.json and the figures."""

from __future__ import annotations

import json
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from edge_agent.contract.labelled_data import LabelledImages
from training.checkpoint import BEST_NAME, LAST_NAME, METRICS_NAME
from training.config import CONFIG_NAME, TrainConfig
from training.data import PreprocessedImages, make_loader
from training.early_stopping import EarlyStopping
from training.evaluate import compute_metrics, format_report, predict
from training.model import count_parameters
from training.plots import confusion_matrix_png, curves_png
from training.runtime import Runtime
from training.split import SPLIT_NAME, Split
from training.weights import record_path

Echo = Callable[[str], None]


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def write_report(
    config: TrainConfig,
    run_dir: Path,
    model: torch.nn.Module,
    images: LabelledImages,
    split: Split,
    history: list[dict[str, Any]],
    stopper: EarlyStopping,
    stopped_early: bool,
    runtime: Runtime,
    echo: Echo,
) -> dict[str, Any]:
    """Test metrics of the best weights, metrics.json and the two figures."""
    test: dict[str, Any] | None = None
    if len(split.test):
        loader = make_loader(
            PreprocessedImages(images, split.test, config.spec),
            config.eval_batch_size or 2 * config.batch_size,
            shuffle=False,
            workers=config.workers or 0,
            device=runtime.device,
            seed=config.seed,
        )
        # Test metrics in float32: they describe the saved weights, as `galaxy-train evaluate`
        # and build-engine's FP32 reference see them (bf16 autocast moved one image in 100).
        result = predict(
            model,
            loader,
            runtime.device,
            amp_dtype=None,
            progress=config.progress,
            desc="test",
        )
        test = compute_metrics(result["labels"], result["probs"].argmax(1), config.num_classes)
        echo(
            format_report(
                test, f"test set ({len(split.test)} images), best epoch {stopper.best_epoch}"
            )
        )
        confusion_matrix_png(test["confusion_matrix"], run_dir / "confusion_matrix.png")
    if history:
        curves_png(history, run_dir / "curves.png")
    metrics: dict[str, Any] = {
        "model": config.model,
        "parameters": count_parameters(model),
        "dataset": images.describe(),
        "conflicts_excluded": images.conflicts_excluded,
        "split": {
            "seed": split.seed,
            "train": len(split.train),
            "val": len(split.val),
            "test": len(split.test),
            "file": SPLIT_NAME,
        },
        "history": history,
        "epochs_run": len(history),
        "best_epoch": stopper.best_epoch,
        "best_val_acc": stopper.best_value,
        "stopped_early": stopped_early,
        "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])) if history else None,
        "peak_rss_bytes": peak_rss_bytes(),
        "cuda_peak_bytes": torch.cuda.max_memory_allocated(runtime.device)
        if runtime.device.type == "cuda"
        else None,
        "device": str(runtime.device),
        "world_size": runtime.world_size,
        "amp": str(runtime.amp_dtype).replace("torch.", "") if runtime.amp_dtype else "off",
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
        "test": test,
        "files": {
            "weights": BEST_NAME,
            "weights_sha256": record_path(run_dir / BEST_NAME).name,
            "config": CONFIG_NAME,
            "resume": LAST_NAME,
        },
    }
    (run_dir / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics
