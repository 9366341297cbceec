"""Learning rate: linear scaling with the global batch, linear warmup, then cosine decay."""
from __future__ import annotations

import math


def scaled_lr(base_lr: float, global_batch: int) -> float:
    return base_lr * global_batch / 256


def lr_at(iteration: int, total_iters: int, peak_lr: float, warmup_iters: int, min_lr: float = 0.0) -> float:
    if warmup_iters > 0 and iteration < warmup_iters:
        return peak_lr * (iteration + 1) / warmup_iters
    span = max(1, total_iters - warmup_iters)
    progress = min(1.0, (iteration - warmup_iters) / span)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
