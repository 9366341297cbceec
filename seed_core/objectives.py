"""One training objective per LOSS.NAME. Each returns the loss of a batch and the embeddings to
enqueue once the optimiser has stepped (so the queue is never copied in the hot path)."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_gather_cat
from .losses import info_nce_loss, l2_loss, seed_loss
from .queue import EmbeddingQueue
from .shuffle_bn import grouped_forward, shuffled_keys
from .teachers import fold_batchnorm


class DistillationObjective(nn.Module):
    """SEED (or L2): the same view goes to the frozen teacher and to the student."""

    def __init__(self, teacher: nn.Module, queue: EmbeddingQueue, loss: str,
                 student_temp: float, teacher_temp: float,
                 teacher_dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 fold_bn: bool = True):
        super().__init__()
        self.teacher = fold_batchnorm(teacher) if fold_bn else teacher
        self.queue, self.loss = queue, loss
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.teacher_dtype = teacher_dtype
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        # The teacher is frozen: keep it permanently in the reduced dtype instead of re-casting
        # its weights in every autocast forward.
        self.teacher.to(dtype=teacher_dtype, memory_format=fmt)

    @torch.inference_mode()
    def teacher_embedding(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.teacher(images.to(self.teacher_dtype)).float(), dim=1)

    def forward(self, student: nn.Module, images: torch.Tensor, autocast_ctx) -> tuple[torch.Tensor, torch.Tensor]:
        # clone(): inference tensors cannot be saved for backward (the student loss uses z_t).
        z_t = self.teacher_embedding(images).clone()
        with autocast_ctx:
            out = student(images)
        z_s = F.normalize(out.float(), dim=1)
        if self.loss == "l2":
            loss = l2_loss(z_s, z_t)
        else:
            loss = seed_loss(z_s, z_t, self.queue.embeddings, self.student_temp, self.teacher_temp,
                             student_queue=self.queue.shadow)
        return loss, z_t

    def after_step(self, student: nn.Module, to_enqueue: torch.Tensor) -> None:
        self.queue.enqueue(all_gather_cat(to_enqueue))


class MoCoObjective(nn.Module):
    """MoCo-v2 without a teacher: two views, a momentum key encoder, InfoNCE over a key queue.
    Trains baseline students and teachers where no public checkpoint exists. BatchNorm is shuffled
    (shuffle_bn.py): queries in `bn_splits` groups per process, keys in groups that never match them."""

    def __init__(self, student: nn.Module, queue: EmbeddingQueue, temperature: float = 0.2,
                 momentum: float = 0.999, bn_splits: int = 2):
        super().__init__()
        self.key_encoder = copy.deepcopy(student).requires_grad_(False)
        self.queue, self.temperature, self.momentum = queue, temperature, momentum
        self.bn_splits = bn_splits

    def forward(self, student: nn.Module, images: torch.Tensor, autocast_ctx) -> tuple[torch.Tensor, torch.Tensor]:
        view_q, view_k = images[:, 0], images[:, 1]
        with autocast_ctx:
            k = shuffled_keys(self.key_encoder, view_k, self.bn_splits)
            q = grouped_forward(student, view_q, self.bn_splits)
        k, q = F.normalize(k.float(), dim=1), F.normalize(q.float(), dim=1)
        return info_nce_loss(q, k, self.queue.embeddings, self.temperature), k

    @torch.no_grad()
    def after_step(self, student: nn.Module, to_enqueue: torch.Tensor) -> None:
        student = getattr(student, "module", student)
        for pk, pq in zip(self.key_encoder.parameters(), student.parameters()):
            pk.mul_(self.momentum).add_(pq.detach(), alpha=1 - self.momentum)
        self.queue.enqueue(all_gather_cat(to_enqueue))
