"""SEED, L2 and MoCo losses. All inputs are L2-normalised embeddings of shape (N, D);
`queue` is (K, D). Logits and softmax are computed in fp32 whatever the network precision."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity_logits(query: torch.Tensor, positive: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
    """[q.p, q.d_1, ..., q.d_K] for each row: (N, 1 + K)."""
    pos = (query * positive).sum(dim=1, keepdim=True)
    return torch.cat([pos, query @ queue.t()], dim=1)


class _SoftCrossEntropy(torch.autograd.Function):
    """mean_i -sum_j p_ij log softmax(s)_ij with p = softmax(t). The gradient softmax(s) - p is
    written directly, with PyTorch's vectorised softmax kernels: at tau_T = 0.01 most exponents
    are far below zero, where elementwise exp() takes a slow path."""

    @staticmethod
    def forward(ctx, s, t):
        p = torch.softmax(t, dim=1)
        loss = -(p * torch.log_softmax(s, dim=1)).sum() / s.shape[0]
        ctx.save_for_backward(s, p)
        return loss

    @staticmethod
    def backward(ctx, grad):
        s, p = ctx.saved_tensors
        return torch.softmax(s, dim=1).sub_(p).mul_(grad / s.shape[0]), None


def seed_loss(z_student: torch.Tensor, z_teacher: torch.Tensor, queue: torch.Tensor,
              student_temp: float, teacher_temp: float,
              student_queue: torch.Tensor | None = None) -> torch.Tensor:
    """Soft cross-entropy between the teacher's and the student's similarity distributions over
    {teacher embedding of the same image} + queue: logits [z.z_T, z.d_1, ..., z.d_K] / tau.
    The teacher side carries no gradient and is computed in fp32 (at tau_T = 0.01 rounding
    would be amplified 100x). `student_queue`, a reduced-precision copy of `queue`, lets the
    student's similarities run as fast bf16 matmuls (their rounding is divided by tau_S only)."""
    with torch.no_grad():
        zt = z_teacher / teacher_temp  # scaling the (N, D) side is cheaper than the (N, K) logits
        t = torch.cat([(zt * z_teacher).sum(dim=1, keepdim=True), torch.mm(queue, zt.t()).t()], dim=1)
    zs = z_student / student_temp
    s_pos = (zs * z_teacher).sum(dim=1, keepdim=True)
    if student_queue is not None and student_queue.dtype != zs.dtype:
        s_neg = zs.to(student_queue.dtype) @ student_queue.t()
    else:
        s_neg = zs @ queue.t()
    return _SoftCrossEntropy.apply(torch.cat([s_pos, s_neg.to(zs.dtype)], dim=1), t)


def l2_loss(z_student: torch.Tensor, z_teacher: torch.Tensor) -> torch.Tensor:
    """The paper's L2 distillation baseline: squared L2 distance between normalised embeddings."""
    return (z_student - z_teacher.detach()).pow(2).sum(dim=1).mean()


def info_nce_loss(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """MoCo InfoNCE: the key of the same image is the positive (index 0), the queue the negatives."""
    logits = similarity_logits(query, key.detach(), queue) / temperature
    labels = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, labels)
