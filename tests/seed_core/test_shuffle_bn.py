"""Shuffled BatchNorm in MoCo mode: a key is never normalised in the same group of images as its query."""
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from seed_core.config import get_default_cfg
from seed_core.errors import ConfigError
from seed_core.objectives import MoCoObjective
from seed_core.queue import EmbeddingQueue
from seed_core.shuffle_bn import resolve_bn_splits, shuffled_keys, stratified_key_order

LOSS = get_default_cfg().LOSS


class GroupRecorder(nn.Module):
    """Stands in for a network with BatchNorm: records, for every image (its id is its pixel value),
    the set of images that shared its forward call, i.e. its BatchNorm group."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.group_of: dict[int, frozenset] = {}

    def forward(self, x):
        ids = x[:, 0, 0, 0].round().long().tolist()
        for i in ids:
            self.group_of[i] = frozenset(ids)
        return x.flatten(1)[:, :8] * self.scale


def images_with_ids(n: int, start: int = 0) -> torch.Tensor:
    return torch.arange(start, start + n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 4, 4).clone()


def assert_separated(query_group: dict, key_group: dict, n: int, groups: int) -> None:
    m = n // groups
    assert set(query_group) == set(key_group) == set(range(n))
    for i in range(n):
        q, k = query_group[i], key_group[i]
        assert len(q) == len(k) == m
        assert q != k, f"image {i}: key and query share a BatchNorm group"
        # The key's own image is unavoidable; beyond it, only an equal share of every query group.
        assert len(q & k) <= math.ceil(m / groups), (i, sorted(q), sorted(k))


@pytest.mark.parametrize("n,groups", [(8, 2), (12, 3), (64, 2), (64, 8), (24, 4), (10, 5)])
def test_stratified_order_is_a_permutation_that_spreads_every_query_group(n, groups):
    gen = torch.Generator().manual_seed(n * groups)
    for _ in range(5):
        order = stratified_key_order(n, groups, gen)
        assert sorted(order.tolist()) == list(range(n))
        m = n // groups
        key_groups = [set(order[g * m:(g + 1) * m].tolist()) for g in range(groups)]
        for kg in key_groups:
            for q in range(groups):
                share = len(kg & set(range(q * m, (q + 1) * m)))
                assert share in (m // groups, math.ceil(m / groups))


@pytest.mark.parametrize("batch,splits", [(8, 2), (16, 4), (12, 3)])
def test_moco_key_and_query_never_share_a_batchnorm_group(batch, splits):
    torch.manual_seed(0)
    student = GroupRecorder()
    objective = MoCoObjective(student, EmbeddingQueue(32, 8), LOSS.MOCO_TEMP, LOSS.MOCO_MOMENTUM, bn_splits=splits)
    x = images_with_ids(batch)
    views = torch.stack([x, x], dim=1)  # (N, 2, C, H, W): query view, key view
    for _ in range(3):
        student.group_of.clear()
        objective.key_encoder.group_of.clear()
        loss, keys = objective(student, views, torch.autocast("cpu", enabled=False))
        assert torch.isfinite(loss)
        # keys come back in the batch's order
        assert torch.equal(keys, nn.functional.normalize(x.flatten(1)[:, :8], dim=1))
        assert_separated(student.group_of, objective.key_encoder.group_of, batch, splits)


def test_bn_splits_auto_and_refusals():
    assert resolve_bn_splits(0, 64, 1) == 2     # groups of >= 32 images
    assert resolve_bn_splits(0, 256, 1) == 8
    assert resolve_bn_splits(0, 8, 1) == 2      # small batches still get two groups
    assert resolve_bn_splits(0, 32, 4) == 1     # DDP: one group per process
    with pytest.raises(ConfigError, match="MOCO_BN_SPLITS"):
        resolve_bn_splits(0, 7, 1)
    with pytest.raises(ConfigError, match="DDP"):
        resolve_bn_splits(4, 32, 2)
    with pytest.raises(ConfigError, match="MOCO_BN_SPLITS"):
        resolve_bn_splits(1, 32, 1)


def _ddp_worker(rank, world, port, local, out):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(rank)  # different local RNG: the permutation must still be rank 0's
    enc = GroupRecorder()
    x = images_with_ids(local, start=rank * local)
    k = shuffled_keys(enc, x, 1)
    groups = [None] * world
    dist.all_gather_object(groups, {i: sorted(g) for i, g in enc.group_of.items()})
    if rank == 0:
        torch.save({"keys_ok": bool(torch.equal(k, x.flatten(1)[:, :8])),
                    "key_group": {i: g for d in groups for i, g in d.items()}}, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_keys_are_shuffled_across_processes_and_restored(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    world, local = 2, 6
    out = str(tmp_path / "r.pt")
    mp.spawn(_ddp_worker, args=(world, port, local, out), nprocs=world)
    r = torch.load(out, weights_only=True)
    assert r["keys_ok"]  # every process gets its own images' keys back, in order
    query_group = {i: frozenset(range((i // local) * local, (i // local + 1) * local)) for i in range(world * local)}
    key_group = {i: frozenset(g) for i, g in r["key_group"].items()}
    assert_separated(query_group, key_group, world * local, world)
