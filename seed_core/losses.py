"""SEED, L2 and MoCo losses. All inputs are L2-normalised embeddings of shape (N, D);
`queue` is (K, D). Logits and softmax are computed in fp32 whatever the network precision."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity_logits(query: torch.Tensor, positive: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
    """[q.p, q.d_1, ..., q.d_K] for each row: (N, 1 + K)."""
    pos = (query * positive).sum(dim=1, keepdim=True)
    return torch.cat([pos, query @ queue.t()], dim=1)


def seed_loss(z_student: torch.Tensor, z_teacher: torch.Tensor, queue: torch.Tensor,
              student_temp: float = 0.2, teacher_temp: float = 0.01) -> torch.Tensor:
    """Soft cross-entropy between the teacher's and the student's similarity distributions over
    {teacher embedding of the same image} + queue. The teacher side carries no gradient."""
    with torch.no_grad():
        target = F.softmax(similarity_logits(z_teacher, z_teacher, queue) / teacher_temp, dim=1)
    log_prob = F.log_softmax(similarity_logits(z_student, z_teacher, queue) / student_temp, dim=1)
    return -(target * log_prob).sum(dim=1).mean()


def l2_loss(z_student: torch.Tensor, z_teacher: torch.Tensor) -> torch.Tensor:
    """Paper Table 4 baseline: squared L2 distance between normalised embeddings."""
    return (z_student - z_teacher.detach()).pow(2).sum(dim=1).mean()


def info_nce_loss(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor,
                  temperature: float = 0.2) -> torch.Tensor:
    """MoCo InfoNCE: the key of the same image is the positive (index 0), the queue the negatives."""
    logits = similarity_logits(query, key.detach(), queue) / temperature
    labels = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, labels)
