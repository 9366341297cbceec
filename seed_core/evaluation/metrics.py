"""Top-k accuracy from class scores."""
from __future__ import annotations

import torch


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[int, int]:
    """Number of rows whose label is among the k highest scores, for each k (counts add up over
    the shards of a multi-process evaluation, percentages do not).

    With fewer classes than k every label is among the top k: the same convention as the usual
    ImageNet evaluation code.
    """
    if scores.shape[0] != labels.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows but {labels.shape[0]} labels")
    maxk = min(max(ks), scores.shape[1])
    top = scores.topk(maxk, dim=1).indices
    hits = top.eq(labels.view(-1, 1))
    return {k: int(hits[:, :min(k, maxk)].any(dim=1).sum()) for k in ks}


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[int, float]:
    """Percentage of rows whose label is among the k highest scores, for each k (see topk_correct)."""
    if scores.shape[0] == 0:
        raise ValueError("cannot compute accuracy on an empty set")
    return {k: n / labels.shape[0] * 100.0 for k, n in topk_correct(scores, labels, ks).items()}
