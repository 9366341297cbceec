"""Linear probe on frozen features: standardise, fit a softmax classifier, report top-1/top-5.

Features are fixed, so the probe is a convex problem solved in seconds: full-batch L-BFGS for small
datasets, or minibatch SGD (momentum, cosine schedule) when the features are too many for L-BFGS.
Weights start at zero and shuffling uses a seeded generator, so a run is reproducible.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .metrics import topk_accuracy

logger = logging.getLogger(__name__)

OPTIMIZERS = ("lbfgs", "sgd")


@dataclass
class LinearProbeResult:
    top1: float
    top5: float
    train_top1: float
    optimizer: str
    epochs: int

    def as_dict(self) -> dict:
        return asdict(self)


def standardize(train: torch.Tensor, *others: torch.Tensor, eps: float = 1e-6) -> list[torch.Tensor]:
    """Zero mean, unit variance per dimension using training statistics only (no val leakage)."""
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, keepdim=True).clamp_min(eps)  # constant dimensions (dead ReLUs) stay finite
    return [(x - mean) / std for x in (train, *others)]


def _fit_lbfgs(clf: nn.Linear, x: torch.Tensor, y: torch.Tensor, epochs: int, weight_decay: float) -> None:
    opt = torch.optim.LBFGS(clf.parameters(), lr=1.0, max_iter=20, history_size=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(clf(x), y) + 0.5 * weight_decay * clf.weight.pow(2).sum()
        loss.backward()
        return loss

    for epoch in range(epochs):
        loss = opt.step(closure)
        logger.debug("lbfgs step %d loss %.4f", epoch, loss.item())


def _fit_sgd(clf: nn.Linear, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, weight_decay: float,
             batch_size: int, seed: int) -> None:
    opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(clf(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        logger.debug("sgd epoch %d loss %.4f", epoch, total / x.shape[0])


def train_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                       num_classes: int, optimizer: str = "lbfgs", epochs: int = 10, lr: float = 0.1,
                       weight_decay: float = 1e-4, batch_size: int = 256, seed: int = 0) -> LinearProbeResult:
    """Fit a linear classifier on standardised `train_x` and report accuracy (%) on `val_x`.

    `epochs` counts L-BFGS steps of up to 20 iterations each, or SGD passes over the data; `lr` is
    used by SGD only.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{optimizer}': use one of {', '.join(OPTIMIZERS)}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if train_x.shape[1] != val_x.shape[1]:
        raise ValueError(f"train features have dim {train_x.shape[1]}, val features {val_x.shape[1]}")
    train_y, val_y = train_y.long(), val_y.long()
    if int(train_y.max()) >= num_classes or int(train_y.min()) < 0:
        raise ValueError(f"train labels must lie in [0, {num_classes})")
    # Callers may sit inside inference_mode / no_grad (e.g. right after feature extraction).
    with torch.inference_mode(False), torch.enable_grad():
        xtr, xva = standardize(train_x.float().clone(), val_x.float().clone())
        clf = nn.Linear(xtr.shape[1], num_classes)
        nn.init.zeros_(clf.weight)
        nn.init.zeros_(clf.bias)
        if optimizer == "lbfgs":
            _fit_lbfgs(clf, xtr, train_y, epochs, weight_decay)
        else:
            _fit_sgd(clf, xtr, train_y, epochs, lr, weight_decay, batch_size, seed)
    with torch.no_grad():
        train_acc = topk_accuracy(clf(xtr), train_y, ks=(1,))[1]
        val_acc = topk_accuracy(clf(xva), val_y, ks=(1, 5))
    logger.info("linear probe (%s, %d epochs): train top-1 %.2f, val top-1 %.2f", optimizer, epochs,
                train_acc, val_acc[1])
    return LinearProbeResult(top1=val_acc[1], top5=val_acc[5], train_top1=train_acc,
                             optimizer=optimizer, epochs=epochs)
