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
from .teachers import fold_batchnorm


class DistillationObjective(nn.Module):
    """SEED (or L2): the same view goes to the frozen teacher and to the student."""

    def __init__(self, teacher: nn.Module, queue: EmbeddingQueue, loss: str,
                 student_temp: float, teacher_temp: float,
                 teacher_dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 fold_bn: bool = True, student_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.teacher = fold_batchnorm(teacher) if fold_bn else teacher
        self.queue, self.loss = queue, loss
        # SEED's student similarities run in the student's (autocast) precision against a copy of
        # the queue in that dtype; the teacher side stays fp32.
        queue.keep_shadow(student_dtype if loss == "seed" and student_dtype != torch.float32 else None)
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
    Trains baseline students and teachers where no public checkpoint exists."""

    def __init__(self, student: nn.Module, queue: EmbeddingQueue, temperature: float,
                 momentum: float, key_bn_splits: int = 2):
        super().__init__()
        self.key_encoder = copy.deepcopy(student).requires_grad_(False)
        self.queue, self.temperature, self.momentum = queue, temperature, momentum
        self.key_bn_splits = key_bn_splits

    @torch.no_grad()
    def keys(self, images: torch.Tensor, autocast_ctx) -> torch.Tensor:
        # Shuffled BN: keys are computed on random sub-batches so batch statistics cannot leak
        # which key belongs to which query (MoCo shuffles across GPUs; this works on one too).
        perm = torch.randperm(images.shape[0], device=images.device)
        chunks = images[perm].chunk(self.key_bn_splits)
        with autocast_ctx:
            k = torch.cat([self.key_encoder(c) for c in chunks])
        k = F.normalize(k.float(), dim=1)
        return k[torch.argsort(perm)]

    def forward(self, student: nn.Module, images: torch.Tensor, autocast_ctx) -> tuple[torch.Tensor, torch.Tensor]:
        view_q, view_k = images[:, 0], images[:, 1]
        k = self.keys(view_k, autocast_ctx)
        with autocast_ctx:
            q = student(view_q)
        q = F.normalize(q.float(), dim=1)
        return info_nce_loss(q, k, self.queue.embeddings, self.temperature), k

    @torch.no_grad()
    def after_step(self, student: nn.Module, to_enqueue: torch.Tensor) -> None:
        student = getattr(student, "module", student)
        for pk, pq in zip(self.key_encoder.parameters(), student.parameters()):
            pk.mul_(self.momentum).add_(pq.detach(), alpha=1 - self.momentum)
        self.queue.enqueue(all_gather_cat(to_enqueue))
