"""Several processes of the Detectron2 engine on the CPU (gloo), as on GPUs (NCCL).

Detectron2's launcher already joins CPU processes with gloo, but its trainer assumes one GPU per
process in two places, which this module replaces in our Trainer (Detectron2 itself is unchanged):

- the model is wrapped in DistributedDataParallel with `device_ids=[local rank]`, which DDP refuses
  for a model on the CPU: `wrap_for_processes` passes the device only for a CUDA model;
- `SyncBN` builds torch's `SyncBatchNorm`, whose training forward needs a GPU once several processes
  run: `sync_batchnorm_for_cpu` swaps it for `SyncBatchNorm2d` (the same statistics of the global
  batch, over any backend; the same state-dict keys).

What still cannot run on several CPU processes is refused before anything starts
(`seed_det.engines.preflight.check_for_detectron2`).
"""
from __future__ import annotations

from torch import nn

from seed_det.engines.tv.layers import SyncBatchNorm2d

__all__ = ["on_cpu", "sync_batchnorm_for_cpu", "wrap_for_processes"]


def on_cpu(cfg) -> bool:
    return not cfg.MODEL.DEVICE.startswith("cuda")


def wrap_for_processes(model: nn.Module, world_size: int, local_rank: int) -> nn.Module:
    """DistributedDataParallel over the processes (the model itself in one process), as Detectron2's
    trainer wraps it (buffers are not broadcast), on the model's own device: one GPU per process,
    or the CPU, where DDP takes no device ids."""
    if world_size <= 1:
        return model
    device = next(model.parameters()).device
    device_ids = [local_rank] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def sync_batchnorm_for_cpu(model: nn.Module) -> int:
    """Replace, in place, every torch SyncBatchNorm of `model` by a SyncBatchNorm2d holding the same
    parameters and statistics; returns how many were replaced. timm's SyncBatchNormAct is a
    subclass with an activation and is left alone (refused on the CPU before the run starts)."""
    replaced = 0
    for name, module in list(model.named_modules()):
        if type(module) is not nn.SyncBatchNorm:
            continue
        bn = SyncBatchNorm2d(module.num_features, eps=module.eps, momentum=module.momentum, affine=module.affine,
                             track_running_stats=module.track_running_stats)
        bn.load_state_dict(module.state_dict())
        tensors = list(module.parameters()) + list(module.buffers())
        if tensors:
            bn.to(tensors[0].device)
        bn.train(module.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, bn)
        replaced += 1
    return replaced
