"""Where a run executes: device choice, mixed precision, seeds and the torchrun (DDP) set-up."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from training.errors import UsageError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """``auto`` is the GPU when one is usable, else the CPU; asking for a missing GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(
            f"--device {name!r}: not a device (use auto, cpu, cuda or cuda:N)"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: only cpu and cuda are supported")
    return device


def resolve_amp(choice: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA only: bf16 where the GPU has it (no loss scaling needed), else fp16."""
    if choice == "off" or device.type != "cuda":
        if choice in ("fp16", "bf16") and device.type != "cuda":
            raise UsageError(f"--amp {choice} needs a CUDA device; use --amp auto or off")
        return None
    if choice == "fp16":
        return torch.float16
    if choice == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def start_runtime(device_name: str, amp: str) -> Runtime:
    """Single process, or one rank of ``torchrun`` when ``WORLD_SIZE`` > 1 (NCCL on GPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        device = resolve_device(device_name)
        return Runtime(device, resolve_amp(amp, device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name in ("auto", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = resolve_device(device_name)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, resolve_amp(amp, device), rank, world_size)


def stop_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_flags(runtime: Runtime, *flags: bool) -> tuple[bool, ...]:
    """Rank 0's decisions (stop, improved) sent to every rank, so all leave the loop together."""
    if not runtime.distributed:
        return flags
    tensor = torch.tensor([int(f) for f in flags], device=runtime.device)
    dist.broadcast(tensor, src=0)
    return tuple(bool(v) for v in tensor.tolist())


def all_reduce_sum(runtime: Runtime, values: list[float]) -> list[float]:
    if not runtime.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=runtime.device)
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.tolist()]
