"""Learning rate: linear scaling with the global batch, linear warmup, then cosine decay."""
from __future__ import annotations

import math


def scaled_lr(base_lr: float, global_batch: int) -> float:
    return base_lr * global_batch / 256


# The official SEED code warms up (5 epochs) only for batches above 256, and not at all in MoCo-v2 mode.
LARGE_BATCH = 256
LARGE_BATCH_WARMUP_EPOCHS = 5.0


def warmup_epochs(configured: float, loss: str, global_batch: int) -> float:
    """SOLVER.WARMUP_EPOCHS, with -1 resolved as the official code does: MoCo-v2 never warms up;
    SEED / L2 warm up for 5 epochs when the batch is above 256 (linear-scaling rule), else not."""
    if configured >= 0:
        return configured
    if loss == "moco":
        return 0.0
    return LARGE_BATCH_WARMUP_EPOCHS if global_batch > LARGE_BATCH else 0.0


def lr_at(iteration: int, total_iters: int, peak_lr: float, warmup_iters: int, min_lr: float = 0.0) -> float:
    if warmup_iters > 0 and iteration < warmup_iters:
        return peak_lr * (iteration + 1) / warmup_iters
    span = max(1, total_iters - warmup_iters)
    progress = min(1.0, (iteration - warmup_iters) / span)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
