"""TEST.PRECISE_BN: replace BatchNorm running statistics by their average over NUM_ITER training
batches before evaluation, as Detectron2's PreciseBN hook does (the EMA of a short fine-tuning
run is a poor estimate). With several processes each averages over its share of the batches and
the results are averaged over processes, so every process ends with the same statistics."""
from __future__ import annotations

import logging
from typing import Iterator

import torch
from torch import nn
from tqdm import tqdm

from seed_core.distributed import all_reduce_sum, world_info
from seed_det.data.torch_dataset import model_inputs

logger = logging.getLogger(__name__)


@torch.no_grad()
def update_bn_stats(model: nn.Module, batches: Iterator, num_iter: int, device: torch.device) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or num_iter <= 0:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # None = cumulative average over all batches seen
    was_training = model.training
    model.train()
    try:
        for _ in tqdm(range(num_iter), desc="precise BN", dynamic_ncols=True, leave=False, disable=world_info()[0] != 0):
            images, targets = next(batches)
            model(*model_inputs(images, targets, device))
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.train(was_training)
    world = world_info()[1]
    if world > 1:
        for bn in bns:
            for stat in (bn.running_mean, bn.running_var):
                stat.copy_(all_reduce_sum(stat.clone()) / world)
    logger.info("precise BN: recomputed %d BatchNorm statistics over %d batches", len(bns), num_iter)
