"""torchrun-aware helpers: rank, world size, main-process checks, gathering results.

Launch with ``torchrun --nproc_per_node=N -m acsl_cli train ...``; torchrun sets RANK,
WORLD_SIZE and LOCAL_RANK. Without them everything runs as a single process.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def init_distributed(device: str) -> None:
    """Join the process group that torchrun describes (no-op for a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_list(items: list[Any]) -> list[Any]:
    """Concatenate a per-rank list across ranks (every rank gets the whole list)."""
    if not dist.is_initialized():
        return items
    parts: list[list[Any]] = [[] for _ in range(world_size())]
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce-mean the gradients of parameters not wrapped in DDP (stage-2 heads)."""
    if not dist.is_initialized():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world_size())


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        from acsl_cli.errors import ConfigError

        raise ConfigError("device=cuda: no CUDA device is available")
    return name
