"""The student's optimiser: SGD with momentum (SEED, MoCo-v2), or LARS (SimCLR, BYOL, MoCo v3).

LARS gives every weight matrix and convolution the same relative step: its update is scaled by
`eta * |w| / |g + wd * w|`, so a layer whose gradient is large against its weights (a deep
network's first layers) moves no faster than the others. BatchNorm parameters and biases are
neither adapted nor decayed, as in those recipes.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

OPTIMIZERS = ("sgd", "lars")


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios; a group with `adapt` False is plain SGD with momentum."""

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001):
        if lr <= 0 or eta <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"LARS: lr {lr} and eta {eta} must be > 0, momentum {momentum} in [0, 1), "
                             f"weight_decay {weight_decay} >= 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, adapt=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["adapt"]:
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm,
                                        torch.ones_like(w_norm))
                    d = d.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float,
                    lars_eta: float = 0.001) -> torch.optim.Optimizer:
    """SOLVER.OPTIMIZER `name` over `model`'s trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        matrices = [p for p in params if p.dim() > 1]
        vectors = [p for p in params if p.dim() <= 1]  # BatchNorm weights and biases
        groups = [{"params": matrices}] + ([{"params": vectors, "adapt": False, "weight_decay": 0.0}] if vectors else [])
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=lars_eta)
    raise ValueError(f"optimiser {name!r}: choose one of {', '.join(OPTIMIZERS)}")
