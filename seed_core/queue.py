"""FIFO queue of L2-normalised embeddings (teacher embeddings for SEED, keys for MoCo)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingQueue(nn.Module):
    """K x D ring buffer. `embeddings` is read in place by the loss; `enqueue` runs after the
    backward pass, so the hot path never copies the queue (the reference code clones it per step)."""

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None,
                 shadow_dtype: torch.dtype | None = None):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be positive, got K={size}, D={dim}")
        init = F.normalize(torch.randn(size, dim, generator=generator), dim=1)
        self.register_buffer("embeddings", init)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.keep_shadow(shadow_dtype)

    def keep_shadow(self, dtype: torch.dtype | None) -> None:
        """Keep a reduced-precision copy (`shadow`) for fast student-side matmuls, in sync row by
        row (not saved: it is derived from `embeddings`); None drops it. The objective that reads
        the queue decides."""
        self.shadow_dtype = dtype
        self.register_buffer("shadow", self.embeddings.to(dtype) if dtype else None, persistent=False)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        if self.shadow is not None:
            self.shadow = self.embeddings.to(self.shadow_dtype)

    @property
    def size(self) -> int:
        return self.embeddings.shape[0]

    @torch.no_grad()
    def enqueue(self, batch: torch.Tensor) -> None:
        """Overwrite the oldest entries with `batch` (already gathered from all ranks)."""
        n = batch.shape[0]
        if n > self.size:
            raise ValueError(f"cannot enqueue {n} embeddings into a queue of size {self.size}")
        start = int(self.ptr)
        end = start + n
        for buf in (self.embeddings, self.shadow):
            if buf is None:
                continue
            if end <= self.size:
                buf[start:end] = batch
            else:  # wrap around: K need not be a multiple of the global batch
                first = self.size - start
                buf[start:] = batch[:first]
                buf[: n - first] = batch[first:]
        self.ptr.fill_(end % self.size)
