"""The training loop: the paper's recipe, a checkpoint each epoch, resume, DDP, the run report.

One process, or one rank per GPU under ``torchrun`` (``WORLD_SIZE`` > 1): training is sharded
with a DistributedSampler; validation, early stopping, checkpoints and the report happen on rank
0, whose decisions are broadcast so every rank stops at the same epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from edge_agent.contract.labelled_data import LabelledImages, open_labelled
from training.calibration import calibrate_trained
from training.checkpoint import (
    BEST_NAME,
    LAST_NAME,
    load_state,
    save_best,
    save_state,
    unwrap,
)
from training.config import TrainConfig, save_config
from training.data import (
    PreprocessedImages,
    augment_batch,
    default_workers,
    make_loader,
    value_range,
)
from training.early_stopping import EarlyStopping
from training.errors import TrainingError, UsageError
from training.evaluate import predict
from training.model import create_model
from training.recipe import Recipe
from training.report import write_report
from training.runtime import (
    Runtime,
    all_reduce_sum,
    broadcast_flags,
    seed_everything,
    start_runtime,
    stop_runtime,
)
from training.schedule import exponential_decay
from training.split import SPLIT_NAME, Split, load_split, make_split, save_split

Echo = Callable[[str], None]


def _prepare_split(
    config: TrainConfig, images: LabelledImages, run_dir: Path, resume: bool
) -> Split:
    path = run_dir / SPLIT_NAME
    if resume and path.is_file():
        return load_split(path, images.labels)
    split = make_split(images.labels, config.seed, config.val_fraction, config.test_fraction)
    if len(split.train) == 0 or len(split.val) == 0:
        raise UsageError(
            f"{config.data}: {len(images)} images leave no training or validation images; "
            "use more data or other --val-fraction/--test-fraction"
        )
    return split


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / LAST_NAME).is_file():
            raise UsageError(f"{run_dir / LAST_NAME}: nothing to resume; drop --resume")
        return
    if (run_dir / LAST_NAME).exists() or (run_dir / BEST_NAME).exists():
        raise UsageError(
            f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"{run_dir}: cannot create the run directory ({exc.strerror})") from exc


def _train_epoch(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    runtime: Runtime,
    epoch: int,
    recipe: Recipe,
) -> tuple[float, float]:
    """One pass over the training shard; returns (mean loss, accuracy) over all ranks."""
    model.train()
    device = runtime.device
    generator = torch.Generator(device=device).manual_seed(
        config.seed * 100003 + epoch * 1009 + runtime.rank
    )
    loss_sum, correct, seen = 0.0, 0.0, 0.0
    bar = tqdm(
        loader,
        desc=f"epoch {epoch}/{config.epochs}",
        disable=not (config.progress and runtime.is_main),
        unit="batch",
        leave=False,
    )
    for batch, target in bar:
        batch = augment_batch(
            batch.to(device, non_blocking=True),
            config.augment,
            generator,
            value_range(config.spec),
        )
        target = target.to(device, non_blocking=True)
        # Survey augmentation and mixup/cutmix (training/recipe.py; off unless configured).
        batch, soft = recipe.prepare(batch, target, generator, value_range(config.spec))
        with torch.autocast(
            device.type,
            dtype=runtime.amp_dtype or torch.float32,
            enabled=runtime.amp_dtype is not None,
        ):
            logits = model(batch)
            teacher = recipe.teach(batch)
        loss = recipe.loss(logits, target, soft, teacher)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        recipe.after_step(unwrap(model))
        n = target.shape[0]
        loss_sum += float(loss.detach()) * n
        correct += float((logits.detach().argmax(1) == target).sum())
        seen += n
        bar.set_postfix(
            loss=f"{loss_sum / seen:.3f}",
            acc=f"{correct / seen:.3f}",
            lr=f"{scheduler.get_last_lr()[0]:.2e}",
        )
    loss_sum, correct, seen = all_reduce_sum(runtime, [loss_sum, correct, seen])
    return loss_sum / max(seen, 1.0), correct / max(seen, 1.0)


def _validate(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader[Any],
    runtime: Runtime,
    config: TrainConfig,
) -> tuple[float, float]:
    result = predict(
        model,
        loader,
        runtime.device,
        amp_dtype=runtime.amp_dtype,
        progress=config.progress,
        desc="validate",
    )
    probs, labels = result["probs"], result["labels"]
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))
    return loss, float(np.mean(probs.argmax(1) == labels))


def train(
    config: TrainConfig, *, resume: bool = False, echo: Echo = print, split: Split | None = None
) -> dict[str, Any]:
    """Train per ``config`` into ``config.out``; returns the metrics written to metrics.json.

    ``split``: given parts (crossval's folds) instead of the seeded split of the config.
    """
    run_dir = Path(config.out)
    runtime = start_runtime(config.device, config.amp)
    try:
        return _run(config, run_dir, runtime, resume, echo, split)
    finally:
        stop_runtime(runtime)


def _run(
    config: TrainConfig,
    run_dir: Path,
    runtime: Runtime,
    resume: bool,
    echo: Echo,
    given_split: Split | None = None,
) -> dict[str, Any]:
    if runtime.is_main:
        _check_run_dir(run_dir, resume)
    seed_everything(config.seed)
    device = runtime.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    workers = config.workers if config.workers is not None else default_workers(device)
    config = config.model_copy(update={"workers": workers})

    # The model first: a wrong name or weights file fails before minutes of reading the h5.
    model = create_model(
        config.model, config.num_classes, config.pretrained, config.drop_rate, **config.model_kwargs
    )
    images = open_labelled(
        config.data,
        limit=config.limit,
        check_conflicts=config.check_conflicts,
        decode=config.decode.decoder(),  # the pixels the model's bundle will decode too
    )
    split = given_split or _prepare_split(config, images, run_dir, resume)
    if runtime.is_main:
        save_config(config, run_dir)
        if not (resume and (run_dir / SPLIT_NAME).is_file()):
            save_split(split, images.labels, run_dir, images.describe())
        echo(
            f"data: {images.describe()['images']} images from {config.data} "
            f"({images.conflicts_excluded} excluded as conflicting duplicates); split seed {config.seed}: "
            f"train {len(split.train)}, val {len(split.val)}, test {len(split.test)}"
        )

    spec = config.spec
    train_loader = make_loader(
        PreprocessedImages(images, split.train, spec),
        config.batch_size,
        shuffle=True,
        workers=workers,
        device=device,
        seed=config.seed,
        distributed=runtime.distributed,
        drop_last=len(split.train) > config.batch_size,
    )
    eval_batch = config.eval_batch_size or 2 * config.batch_size
    val_loader = make_loader(
        PreprocessedImages(images, split.val, spec),
        eval_batch,
        shuffle=False,
        workers=workers,
        device=device,
        seed=config.seed,
    )

    model.to(device)
    recipe = Recipe(config, model, device, labels=images.labels, test=split.test, echo=echo)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = exponential_decay(optimizer, config.lr_decay_rate, config.lr_decay_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=runtime.amp_dtype == torch.float16)
    stopper = EarlyStopping(config.patience)
    history: list[dict[str, Any]] = []
    start_epoch = 1
    if resume:
        state = load_state(run_dir)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        stopper.load_state_dict(state["early_stopping"])
        recipe.load_state_dict(state.get("recipe"))
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        torch.set_rng_state(state["rng_torch"])
        np.random.set_state(state["rng_numpy"])
        if runtime.is_main:
            echo(
                f"resuming {run_dir} after epoch {state['epoch']} (best val acc {stopper.best_value:.4f} at epoch {stopper.best_epoch})"
            )
    net: torch.nn.Module = model
    if runtime.distributed:
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    stopped_early = stopper.should_stop
    for epoch in range(start_epoch, config.epochs + 1):
        if stopped_early:
            break
        began = time.perf_counter()
        if runtime.distributed:
            sampler = train_loader.sampler
            if isinstance(sampler, torch.utils.data.DistributedSampler):
                sampler.set_epoch(epoch)
        elif train_loader.generator is not None:
            train_loader.generator.manual_seed(config.seed + epoch)
        train_loss, train_acc = _train_epoch(
            net, train_loader, optimizer, scheduler, scaler, config, runtime, epoch, recipe
        )
        improved = stop = False
        if runtime.is_main:
            scored = recipe.scored(model)  # the weight average when EMA is on
            val_loss, val_acc = _validate(scored, val_loader, runtime, config)
            improved = stopper.step(val_acc, epoch, scored)
            stop = stopper.should_stop
            # A diverged run never recovers (AdamW keeps stepping on NaN): stop, keep the best.
            diverged = not (math.isfinite(train_loss) and math.isfinite(val_loss))
            stop = stop or diverged
            if improved:
                save_best(scored, config, run_dir)
            seconds = time.perf_counter() - began
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "train_acc": train_acc,
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                    "lr": scheduler.get_last_lr()[0],
                    "seconds": seconds,
                    "improved": improved,
                }
            )
            save_state(
                {
                    "epoch": epoch,
                    "model": unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "early_stopping": stopper.state_dict(),
                    "history": history,
                    "rng_torch": torch.get_rng_state(),
                    "rng_numpy": np.random.get_state(),
                    "recipe": recipe.state_dict(),
                },
                run_dir,
            )
            mean = float(np.mean([h["seconds"] for h in history]))
            left = (config.epochs - epoch) * mean
            echo(
                f"epoch {epoch}/{config.epochs}: loss {train_loss:.4f} acc {train_acc:.4f} | "
                f"val loss {val_loss:.4f} acc {val_acc:.4f}{' *' if improved else ''} | "
                f"{seconds:.1f} s, at most {left / 60:.1f} min left"
            )
            if diverged:
                echo(
                    f"loss became non-finite at epoch {epoch}: stopping; lower --lr or set "
                    "--grad-clip-norm"
                )
        (stopped_early,) = broadcast_flags(runtime, stop)
    if not runtime.is_main:
        return {}
    if stopped_early and stopper.should_stop:
        echo(f"early stopping: no better val accuracy for {config.patience} epochs")
    stopper.restore(model)
    echo(f"restored the best weights: epoch {stopper.best_epoch}, val acc {stopper.best_value:.4f}")
    metrics = write_report(
        config, run_dir, model, images, split, history, stopper, stopped_early, runtime, echo
    )
    # Temperature scaling on the validation split: stored in best.safetensors (sha re-recorded),
    # metrics.json and reliability.png (training/calibration.py).
    metrics["calibration"] = calibrate_trained(
        model,
        run_dir,
        images,
        split,
        config.spec,
        device=runtime.device,
        batch_size=config.eval_batch_size or 2 * config.batch_size,
        workers=config.workers or 0,
        progress=config.progress,
        echo=echo,
    )
    return metrics
