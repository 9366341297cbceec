"""Weighted k-NN classifier on frozen features (Wu et al. 2018 "InstDisc", as used by MoCo).

Each query takes its k most cosine-similar training features; neighbour i votes for its class with
weight exp(s_i / T). Predictions rank classes by their summed votes.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .metrics import topk_accuracy

logger = logging.getLogger(__name__)


def knn_class_scores(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                     num_classes: int, k: int = 200, temperature: float = 0.07,
                     chunk_size: int = 1024) -> torch.Tensor:
    """Summed neighbour votes per class, shape (num_queries, num_classes), each row scaled so the
    nearest neighbour's vote is 1.

    Queries are processed `chunk_size` at a time so memory stays at chunk_size x num_train
    similarities rather than the full query x train matrix.
    """
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError(f"{train_features.shape[0]} train features but {train_labels.shape[0]} labels")
    if train_features.shape[1] != query_features.shape[1]:
        raise ValueError(f"train features have dim {train_features.shape[1]}, queries {query_features.shape[1]}")
    if k < 1 or temperature <= 0 or chunk_size < 1:
        raise ValueError(f"need k >= 1, temperature > 0 and chunk_size >= 1 (got {k}, {temperature}, {chunk_size})")
    if k > train_features.shape[0]:
        logger.warning("k=%d exceeds the %d training samples; using k=%d", k, train_features.shape[0],
                       train_features.shape[0])
        k = train_features.shape[0]
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.long()
    out = []
    for start in range(0, query_features.shape[0], chunk_size):
        q = F.normalize(query_features[start:start + chunk_size].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        # Votes are exp(s / T) scaled by exp(-s_max / T) per query: same ranking, no overflow at small T.
        weights = ((sim - sim[:, :1]) / temperature).exp()
        scores = torch.zeros(q.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        scores.scatter_add_(1, labels[idx], weights)
        out.append(scores)
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def knn_evaluate(train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor,
                 val_labels: torch.Tensor, num_classes: int, k: int = 200, temperature: float = 0.07,
                 chunk_size: int = 1024) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) of the weighted k-NN classifier on the validation features."""
    scores = knn_class_scores(train_features, train_labels, val_features, num_classes, k, temperature, chunk_size)
    acc = topk_accuracy(scores, val_labels.long(), ks=(1, 5))
    return {"top1": acc[1], "top5": acc[5]}
