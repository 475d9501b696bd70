"""Spawned by tests/test_losses_efl.py: two gloo ranks, each taking two EFL steps on its
own batches and saving the values, gradients and statistics (imports kept light: each
rank is a fresh interpreter)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from acsl_cli.losses import build_loss

C = 6


def batch(n: int, seed: int, background_only: bool = False
          ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C + 1, generator=g, dtype=torch.float64) * 3.0 - 1.0
    labels = torch.randint(1, C + 1, (n,), generator=g)
    labels[torch.rand(n, generator=g) > 0.4] = 0
    return logits, labels * (not background_only)


def rank_batches() -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per rank, two batches of different sizes (rank 1's second has no foreground)."""
    return [[batch(30, 20), batch(12, 21)], [batch(18, 22), batch(25, 23, True)]]


def worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        loss = build_loss("efl", num_classes=C)
        steps = []
        for logits, labels in rank_batches()[rank]:
            z = logits.clone().requires_grad_(True)
            value = loss(z, labels)
            value.backward()
            steps.append({"value": value.detach(), "grad": z.grad,
                          "pos_grad": loss.pos_grad.clone(), "pos_neg": loss.pos_neg.clone()})
        torch.save(steps, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
