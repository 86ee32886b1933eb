"""Checkpoints: best weights for export, and the full training state for ``--resume``.

- ``best.safetensors``: the best epoch's state dict; its metadata holds the resolved training
  config under ``galaxy_edge_config`` (with the preprocessing and decoding specs the model was trained for),
  so the file alone is enough to rebuild the model. ``best.safetensors.sha256`` records its hash
  (:mod:`training.weights`); every reader verifies it first.
- ``last.pt``: model, optimizer, scheduler, grad scaler, early-stopping state, history and RNG
  states after the last finished epoch, written atomically each epoch.

:func:`load_for_export` is the interface ``build_engine`` uses.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from edge_agent.contract.decode_config import DecodeSpec
from edge_agent.contract.manifest import Calibration, TrainingProvenance
from edge_agent.contract.preprocess import PreprocessSpec
from training.config import TrainConfig, config_from_json, config_to_json
from training.errors import CheckpointError, TrainingError, UsageError
from training.model import create_model
from training.weights import record_weights, sha256_of, verify_weights

BEST_NAME = "best.safetensors"
LAST_NAME = "last.pt"
METRICS_NAME = "metrics.json"
CONFIG_KEY = "galaxy_edge_config"


@dataclass
class ExportableModel:
    model: torch.nn.Module  # eval mode, CPU, float32
    model_name: str
    num_classes: int
    input_size: int
    provenance: TrainingProvenance
    config: TrainConfig
    spec: PreprocessSpec  # the eval transform the model was trained with
    decode: DecodeSpec  # how its image files became pixels (stretch, FITS HDU/bands)
    calibration: Calibration | None = None  # temperature scaling (training/calibration.py)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a DDP (or similar) wrapper."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) else model


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the state dict with every tensor stored on its own (safetensors refuses
    tensors that share memory, which some timm models have)."""
    return {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in unwrap(model).state_dict().items()
    }


def save_best(model: torch.nn.Module, config: TrainConfig, run_dir: Path) -> Path:
    path = Path(run_dir) / BEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    save_file(cpu_state(model), str(tmp), metadata={CONFIG_KEY: config_to_json(config)})
    digest = sha256_of(tmp)
    os.replace(tmp, path)
    # A crash between these two lines leaves a hash that does not match: refused, never trusted.
    record_weights(path, digest)
    return path


def save_state(state: dict[str, Any], run_dir: Path) -> Path:
    """Write the resume state atomically, so a crash mid-write keeps the previous epoch's."""
    path = Path(run_dir) / LAST_NAME
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_state(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / LAST_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: no resume state here; run without --resume to start")
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt resume state ({exc})") from exc
    return state


def find_weights(path: Path) -> Path:
    """``best.safetensors`` of a run directory, or the given ``.safetensors`` file (unverified)."""
    path = Path(path)
    if path.is_dir():
        path = path / BEST_NAME
    if not path.is_file():
        raise UsageError(f"{path}: no checkpoint here (expected a run directory or .safetensors)")
    if path.suffix != ".safetensors":
        raise UsageError(f"{path}: not a .safetensors checkpoint")
    return path


def resolve_weights(path: Path) -> Path:
    """:func:`find_weights`, verified against the sha256 the run recorded when it wrote them."""
    weights = find_weights(path)
    verify_weights(weights)
    return weights


def read_checkpoint_config(path: Path) -> TrainConfig:
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file ({exc})") from exc
    if CONFIG_KEY not in metadata:
        raise CheckpointError(
            f"{path}: no {CONFIG_KEY} metadata; not a galaxy-train checkpoint (retrain or re-save)"
        )
    try:
        return config_from_json(metadata[CONFIG_KEY], f"{path} metadata")
    except TrainingError as exc:
        raise CheckpointError(f"{exc}; the checkpoint's config does not validate") from exc


def read_provenance(
    weights: Path, config: TrainConfig, sha256: str | None = None
) -> TrainingProvenance:
    """Provenance from ``metrics.json`` beside the weights, when the run got that far."""
    metrics_path = weights.parent / METRICS_NAME
    test: dict[str, Any] = {}
    dataset = config.data
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{metrics_path}: unreadable metrics ({exc})") from exc
        test = metrics.get("test") or {}
        dataset = (metrics.get("dataset") or {}).get("path", dataset)
    return TrainingProvenance(
        dataset=dataset,
        split_seed=config.seed,
        test_accuracy=test.get("accuracy"),
        macro_f1=test.get("macro_f1"),
        checkpoint_sha256=sha256 or sha256_of(weights),
    )


def load_model_weights(path: Path) -> tuple[torch.nn.Module, TrainConfig]:
    """Rebuild the model of a checkpoint (no pretrained download) and load its weights."""
    config = read_checkpoint_config(path)
    model = create_model(
        config.model, config.num_classes, None, config.drop_rate, **config.model_kwargs
    )
    try:
        model.load_state_dict(load_file(str(path), device="cpu"))
    except (RuntimeError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit {config.model} ({first})") from exc
    return model.float().eval(), config


def load_for_export(path: Path) -> ExportableModel:
    """The trained model (eval, CPU, float32) and what a bundle records about it.

    ``path`` is a run directory or a ``.safetensors`` checkpoint written by ``galaxy-train``;
    its weights are verified against their recorded sha256 before they are read.
    """
    from training.calibration import read_calibration

    weights = find_weights(path)
    sha256 = verify_weights(weights)
    model, config = load_model_weights(weights)
    return ExportableModel(
        model=model,
        model_name=config.model,
        num_classes=config.num_classes,
        input_size=config.image_size,
        provenance=read_provenance(weights, config, sha256),
        config=config,
        spec=config.spec,
        decode=config.decode,
        calibration=read_calibration(weights),
    )
