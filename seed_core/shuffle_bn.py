"""Shuffled BatchNorm for MoCo: a key must not be normalised by the same batch statistics as its query,
or the network can find its positive from the statistics instead of the image.

The batch (gathered over all processes) is cut into G BatchNorm groups: one per process under DDP
(MoCo's multi-GPU recipe), or G chunks of the local batch on one process (MoCo's single-GPU CIFAR
recipe, there with SplitBatchNorm). Queries are normalised in their natural groups; keys in groups
filled by `stratified_key_order`, which sends the members of every query group to all G key groups
in equal shares. So a key's group is never its query's group, and shares with it only ceil(m/G) of
its m images (the key's own image among them: that much overlap cannot be avoided), not a random
amount as with a plain shuffle.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .distributed import all_gather_cat
from .errors import ConfigError

# MoCo normalises 32 images per GPU on ImageNet and 64 per split on CIFAR: groups at least this big.
MIN_GROUP_SIZE = 32
MAX_SPLITS = 8


def resolve_bn_splits(requested: int, local_batch: int, world_size: int) -> int:
    """BatchNorm groups per process. 0 (auto): one per process under DDP; on one process the most
    splits (up to 8) that keep groups of >= 32 images, and at least 2."""
    if world_size > 1:
        if requested > 1:
            raise ConfigError(f"LOSS.MOCO_BN_SPLITS = {requested} with {world_size} processes: under DDP "
                              f"each process is one BatchNorm group (keys are shuffled across processes); "
                              f"set LOSS.MOCO_BN_SPLITS 0 or 1")
        return 1
    if requested == 0:
        candidates = [g for g in range(MAX_SPLITS, 1, -1)
                      if local_batch % g == 0 and local_batch // g >= MIN_GROUP_SIZE]
        requested = candidates[0] if candidates else 2
    if requested < 2 or local_batch % requested or local_batch // requested < 2:
        raise ConfigError(f"MoCo's shuffled BatchNorm on one process needs the batch ({local_batch}) split "
                          f"into >= 2 equal groups of >= 2 images, got LOSS.MOCO_BN_SPLITS = {requested}: "
                          f"use an even SOLVER.BATCH_SIZE and a LOSS.MOCO_BN_SPLITS that divides it (0: auto)")
    return requested


def stratified_key_order(n: int, groups: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A permutation `order` of range(n): the keys of images order[g*m:(g+1)*m] form key group g.

    Query group q is images [q*m, (q+1)*m). Each query group's images are dealt, in random order,
    to key groups q+o, q+o+1, ... (mod G) for a random offset o: every key group takes ceil or
    floor of m/G images of every query group, m in total. Within a key group the order is random.
    """
    if groups < 1 or n % groups:
        raise ValueError(f"cannot split {n} images into {groups} equal BatchNorm groups")
    m = n // groups
    offset = int(torch.randint(groups, (1,), generator=generator))
    members: list[list[int]] = [[] for _ in range(groups)]
    for q in range(groups):
        for j, i in enumerate(torch.randperm(m, generator=generator).tolist()):
            members[(q + j + offset) % groups].append(q * m + i)
    order = []
    for group in members:
        order += [group[i] for i in torch.randperm(len(group), generator=generator).tolist()]
    return torch.tensor(order, dtype=torch.long)


def grouped_forward(model: nn.Module, x: torch.Tensor, groups: int) -> torch.Tensor:
    """`model` on each of `groups` equal chunks of `x` (each chunk its own BatchNorm statistics)."""
    if groups == 1:
        return model(x)
    return torch.cat([model(c) for c in x.chunk(groups)])


@torch.no_grad()
def shuffled_keys(key_encoder: nn.Module, x: torch.Tensor, splits: int) -> torch.Tensor:
    """Key embeddings of the local batch `x`, in its order, computed with shuffled BatchNorm groups.

    Under DDP the whole batch is gathered, every process takes one key group of a permutation
    broadcast from rank 0, and the keys are gathered back and unshuffled (MoCo's batch shuffle).
    """
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
    local = x.shape[0]
    x_all = all_gather_cat(x)
    order = stratified_key_order(x_all.shape[0], world * splits).to(x.device)
    if distributed:
        dist.broadcast(order, src=0)
    mine = order.view(world, -1)[rank]
    k_mine = grouped_forward(key_encoder, x_all[mine], splits)
    k_all = all_gather_cat(k_mine)  # in `order`
    k_all = k_all[torch.argsort(order)]
    return k_all[rank * local:(rank + 1) * local]
