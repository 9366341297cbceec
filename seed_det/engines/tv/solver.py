"""SGD and the learning-rate schedule with Detectron2's semantics (per-iteration warmup, steps)."""
from __future__ import annotations

import bisect
import math
from typing import List

import torch
from fvcore.common.config import CfgNode
from torch import nn

_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """One group per kind of parameter: norms get WEIGHT_DECAY_NORM, biases BIAS_LR_FACTOR and
    WEIGHT_DECAY_BIAS, as Detectron2's get_default_optimizer_params does."""
    s = cfg.SOLVER
    bias_wd = s.WEIGHT_DECAY if s.WEIGHT_DECAY_BIAS is None else s.WEIGHT_DECAY_BIAS
    groups = {}
    seen = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:  # res5 is shared by the C4 box and mask heads
                continue
            seen.add(id(p))
            if isinstance(module, _NORMS):
                key = (s.BASE_LR, s.WEIGHT_DECAY_NORM)
            elif name == "bias":
                key = (s.BASE_LR * s.BIAS_LR_FACTOR, bias_wd)
            else:
                key = (s.BASE_LR, s.WEIGHT_DECAY)
            groups.setdefault(key, []).append(p)
    params = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    return torch.optim.SGD(params, lr=s.BASE_LR, momentum=s.MOMENTUM, nesterov=s.NESTEROV)


def _schedule(cfg: CfgNode, it: int) -> float:
    """The multiplier of the schedule itself (steps or cosine), before warmup."""
    s = cfg.SOLVER
    if s.LR_SCHEDULER_NAME == "WarmupCosineLR":
        return 0.5 * (1.0 + math.cos(math.pi * it / s.MAX_ITER))
    return s.GAMMA ** bisect.bisect_right(sorted(s.STEPS), it)


def lr_factor(cfg: CfgNode, it: int) -> float:
    """Multiplier of each group's base lr at iteration `it` (0-based). As in Detectron2, warmup
    replaces the schedule: a ramp from WARMUP_FACTOR x its start to its value where warmup ends
    (lower than 1 if a step falls inside warmup), or WARMUP_FACTOR x its start when constant."""
    s = cfg.SOLVER
    warmup = min(s.WARMUP_ITERS, s.MAX_ITER)
    if it >= warmup:
        return _schedule(cfg, it)
    start = s.WARMUP_FACTOR * _schedule(cfg, 0)
    if s.WARMUP_METHOD == "constant":
        return start
    return start + (_schedule(cfg, warmup) - start) * it / warmup


def build_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(cfg, it))


def clip_gradients(cfg: CfgNode, params: List[torch.nn.Parameter]) -> None:
    """SOLVER.CLIP_GRADIENTS per parameter, like Detectron2's 'value' and 'norm' types."""
    c = cfg.SOLVER.CLIP_GRADIENTS
    if not c.ENABLED:
        return
    for p in params:
        if p.grad is None:
            continue
        if c.CLIP_TYPE == "value":
            torch.nn.utils.clip_grad_value_([p], c.CLIP_VALUE)
        else:
            torch.nn.utils.clip_grad_norm_([p], c.CLIP_VALUE, c.NORM_TYPE)
