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


def _unit(x: torch.Tensor) -> torch.Tensor:
    """L2-normalised embeddings in at least fp32 (bf16/fp16 network outputs are promoted)."""
    return F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=1)


class DistillationObjective(nn.Module):
    """SEED (or L2): the same view goes to the frozen teacher and to the student.

    `teacher` is the frozen teacher as it runs (seed_core.teacher_precision.cast_teacher: BatchNorm
    folded, kept in its precision); `teacher_dtype` is the dtype its input is cast to.
    With `small_queue` (SEED's small-patch variant), a batch is (main views, small patches of
    shape B x N x C x h x w): the loss adds the SEED loss of the small patches against their own
    queue, and the small queue takes the teacher embedding of each image's first small patch."""

    def __init__(self, teacher: nn.Module, queue: EmbeddingQueue, loss: str,
                 student_temp: float, teacher_temp: float, teacher_dtype: torch.dtype = torch.float32,
                 student_dtype: torch.dtype = torch.float32, small_queue: EmbeddingQueue | None = None):
        super().__init__()
        self.queue, self.small_queue, self.loss = queue, small_queue, loss
        # SEED's student similarities run in the student's (autocast) precision against a copy of
        # each queue in that dtype; the teacher side stays fp32.
        shadow = student_dtype if loss == "seed" and student_dtype != torch.float32 else None
        for q in (queue, small_queue):
            if q is not None:
                q.keep_shadow(shadow)
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.teacher, self.teacher_dtype = teacher, teacher_dtype

    @torch.inference_mode()
    def teacher_embedding(self, images: torch.Tensor) -> torch.Tensor:
        return _unit(self.teacher(images.to(self.teacher_dtype)))

    def _view_loss(self, z_s: torch.Tensor, z_t: torch.Tensor, queue: EmbeddingQueue) -> torch.Tensor:
        if self.loss == "l2":
            return l2_loss(z_s, z_t)
        return seed_loss(z_s, z_t, queue.embeddings, self.student_temp, self.teacher_temp,
                         student_queue=queue.shadow)

    def forward(self, student: nn.Module, images, autocast_ctx):
        if self.small_queue is None:
            # clone(): inference tensors cannot be saved for backward (the student loss uses z_t).
            z_t = self.teacher_embedding(images).clone()
            with autocast_ctx:
                out = student(images)
            return self._view_loss(_unit(out), z_t, self.queue), z_t
        main, small = images
        b, n = small.shape[:2]
        small = small.flatten(0, 1)
        z_t, z_t_small = self.teacher_embedding(main).clone(), self.teacher_embedding(small).clone()
        with autocast_ctx:
            out, out_small = student((main, small))
        loss = (self._view_loss(_unit(out), z_t, self.queue)
                + self._view_loss(_unit(out_small), z_t_small, self.small_queue))
        # As the official code: one small patch per image (the first) enters the small queue.
        return loss, (z_t, z_t_small.view(b, n, -1)[:, 0].contiguous())

    def after_step(self, student: nn.Module, to_enqueue) -> None:
        if self.small_queue is None:
            self.queue.enqueue(all_gather_cat(to_enqueue))
            return
        self.queue.enqueue(all_gather_cat(to_enqueue[0]))
        self.small_queue.enqueue(all_gather_cat(to_enqueue[1]))


class MoCoObjective(nn.Module):
    """MoCo-v2 without a teacher: two views, a momentum key encoder, InfoNCE over a key queue.
    Trains baseline students and teachers where no public checkpoint exists. BatchNorm is shuffled
    (shuffle_bn.py): queries in `bn_splits` groups per process, keys in groups that never match them."""

    def __init__(self, student: nn.Module, queue: EmbeddingQueue, temperature: float,
                 momentum: float, bn_splits: int = 2):
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
