"""SEED's small-patch variant: the loss and queue update against the official formulas, resume
after a kill, two processes, augmentation that follows the teacher, and refused settings."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import ROOT, tiny_opts
from seed_core.augmentations import resolve_recipe
from seed_core.checkpoint_io import load_untrusted
from seed_core.config import ConfigError, load_cfg, validate_cfg
from seed_core.encoders import EmbeddingNet
from seed_core.objectives import DistillationObjective
from seed_core.queue import EmbeddingQueue
from seed_core.teachers import FrozenTeacher

SMALL = {"DATA.SMALL_PATCHES.NUM": 2, "DATA.SMALL_PATCHES.SIZE": 16}
TAU_S, TAU_T = 0.2, 0.01


def _net(dim: int, seed: int) -> tuple[nn.Module, nn.Module]:
    """Pool to 2x2 then a linear map: works at any input size, float64 end to end."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten()), nn.Linear(12, dim).double()


def _official_step(student, teacher, queue, small_queue, ptr, image, small_image):
    """A plain restatement of the official small-patch step (queues stored D x K there, here as
    K x D rows; the pointer wraps modulo K, where the official code asserts K % batch == 0)."""
    b, n, c, h, w = small_image.shape
    s_emb = F.normalize(student(image), dim=1)
    s_small = F.normalize(student(small_image.view(-1, c, h, w)), dim=-1)
    with torch.no_grad():
        t_emb = F.normalize(teacher(image), dim=1)
        t_small = F.normalize(teacher(small_image.view(-1, c, h, w)), dim=1)

    def soft_ce(s_emb, t_emb, q):
        logit_stu = torch.cat([torch.einsum("nc,nc->n", s_emb, t_emb)[:, None], torch.einsum("nc,kc->nk", s_emb, q)], 1)
        logit_tea = torch.cat([torch.einsum("nc,nc->n", t_emb, t_emb)[:, None], torch.einsum("nc,kc->nk", t_emb, q)], 1)
        target = F.softmax(logit_tea / TAU_T, dim=1)
        return -(target * F.log_softmax(logit_stu / TAU_S, dim=1)).sum() / logit_stu.shape[0]

    loss = soft_ce(s_emb, t_emb, queue) + soft_ce(s_small, t_small, small_queue)
    k = queue.shape[0]
    idx = (torch.arange(b) + ptr) % k
    new_queue, new_small = queue.clone(), small_queue.clone()
    new_queue[idx] = t_emb
    new_small[idx] = t_small.view(b, n, -1)[:, 0]
    return loss, new_queue, new_small


def test_small_patch_loss_and_queues_equal_the_official_formulas_float64():
    dim, k, b, n = 8, 7, 3, 4  # K = 7 is not a multiple of the batch: the second step wraps
    s_body, s_head = _net(dim, 0)
    t_body, t_head = _net(dim, 1)
    student = EmbeddingNet(s_body, s_head)
    teacher = FrozenTeacher(t_body, t_head)
    g = torch.Generator().manual_seed(2)
    queue = EmbeddingQueue(k, dim, g).double()
    small_queue = EmbeddingQueue(k, dim, g).double()
    queue.ptr.fill_(5)
    small_queue.ptr.fill_(5)
    objective = DistillationObjective(teacher.double(), queue, "seed", TAU_S, TAU_T, torch.float64,
                                      small_queue=small_queue)
    ref_student = EmbeddingNet(*_net(dim, 0))
    ref_teacher = EmbeddingNet(*_net(dim, 1)).eval()
    q_ref, sq_ref, ptr = queue.embeddings.clone(), small_queue.embeddings.clone(), 5
    for step in range(2):
        image = torch.randn(b, 3, 8, 8, dtype=torch.float64, generator=g)
        small = torch.randn(b, n, 3, 4, 4, dtype=torch.float64, generator=g)
        loss, to_enqueue = objective(student, (image, small), torch.autocast("cpu", enabled=False))
        ref_loss, q_ref, sq_ref_next = _official_step(ref_student, ref_teacher, q_ref, sq_ref, ptr, image, small)
        assert abs(loss.item() - ref_loss.item()) < 1e-10
        grads = torch.autograd.grad(loss, list(student.parameters()))
        ref_grads = torch.autograd.grad(ref_loss, list(ref_student.parameters()))
        for g_ours, g_ref in zip(grads, ref_grads):
            assert torch.allclose(g_ours, g_ref, atol=1e-10, rtol=0)
        objective.after_step(student, to_enqueue)
        sq_ref, ptr = sq_ref_next, (ptr + b) % k
        assert torch.allclose(queue.embeddings, q_ref, atol=1e-12, rtol=0)
        assert torch.allclose(small_queue.embeddings, sq_ref, atol=1e-12, rtol=0)
        assert int(queue.ptr) == int(small_queue.ptr) == ptr


def _worker(opts, env=None, resume=False):
    cmd = [sys.executable, os.path.join(ROOT, "tests", "seed_core", "worker.py"), *opts] + (["--resume"] if resume else [])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.mark.slow
def test_small_patch_run_resumes_bit_exactly_after_a_kill(images, moco_teacher, tmp_path):
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    # both runs in worker processes with the same thread count: the same floating-point sums
    assert _worker(tiny_opts(images, moco_teacher, whole, **SMALL)).returncode == 0
    opts = tiny_opts(images, moco_teacher, killed, **SMALL, **{"TRAIN.CHECKPOINT_PERIOD": 1})
    assert _worker(opts, env={"KILL_STEP": "4"}).returncode == -signal.SIGKILL
    resumed = _worker(opts, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_untrusted(os.path.join(whole, "checkpoint.pth"))
    b = load_untrusted(os.path.join(killed, "checkpoint.pth"))
    for k, v in a["student"].items():
        assert torch.equal(v, b["student"][k]), k
    for name in ("queue", "small_queue"):
        assert torch.equal(a[name]["embeddings"], b[name]["embeddings"]), name
        assert int(a[name]["ptr"]) == int(b[name]["ptr"]) == (6 * 8) % 20
    assert not torch.equal(a["queue"]["embeddings"], a["small_queue"]["embeddings"])
    meta = json.load(open(os.path.join(whole, "meta.json")))
    assert meta["augmentation"] == "mocov2" and meta["small_patches"] == 2  # a MoCo teacher's recipe


@pytest.mark.slow
def test_two_processes_gather_both_queues(images, moco_teacher, tmp_path):
    from test_ddp import _free_port
    out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), os.path.join(ROOT, "tests", "seed_core", "worker.py"),
           *tiny_opts(images, moco_teacher, out, **SMALL)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(os.path.join(out, "rank0.pth"), weights_only=True)
    r1 = torch.load(os.path.join(out, "rank1.pth"), weights_only=True)
    for name in ("queue", "small_queue"):
        # each rank enqueued the embeddings of both ranks' images: the queues are identical and
        # the pointer advanced by the global batch (8) per step
        assert torch.equal(r0[name]["embeddings"], r1[name]["embeddings"]), name
        assert int(r0[name]["ptr"]) == (6 * 8) % 20


def test_augmentation_follows_the_teacher_unless_named():
    assert resolve_recipe("auto", "moco") == "mocov2"
    assert resolve_recipe("auto", "swav") == "swav"
    assert resolve_recipe("auto", "simclr") == "simclr"
    assert resolve_recipe("auto", "torchvision") == "mocov2"
    assert resolve_recipe("auto", None) == "mocov2"  # MoCo-v2 training: no teacher
    assert resolve_recipe("glyphs", "swav") == "glyphs"


@pytest.mark.parametrize("key,value,message", [
    ("DATA.SMALL_PATCHES.SIZE", "64", "DATA.SMALL_PATCHES.SIZE = 64 must be in \\(0, DATA.IMAGE_SIZE = 32\\]"),
    ("DATA.SMALL_PATCHES.NUM", "-1", "DATA.SMALL_PATCHES.NUM = -1 must be >= 0"),
    ("DATA.SMALL_PATCHES.SCALE", "(0.0, 0.14)", "DATA.SMALL_PATCHES.SCALE"),
    ("DATA.SMALL_PATCHES.SCALE", "(0.5, 1.5)", "DATA.SMALL_PATCHES.SCALE"),
    ("DATA.SMALL_PATCHES.SCALE", "(0.3, 0.1)", "DATA.SMALL_PATCHES.SCALE"),
])
def test_bad_small_patch_settings_are_refused_naming_the_key(images, moco_teacher, tmp_path, key, value, message):
    cfg = load_cfg(None, tiny_opts(images, moco_teacher, str(tmp_path / "x"), **{**SMALL, key: value}))
    with pytest.raises(ConfigError, match=message):
        validate_cfg(cfg)


def test_small_patches_need_the_seed_loss(images, moco_teacher, tmp_path):
    cfg = load_cfg(None, tiny_opts(images, moco_teacher, str(tmp_path / "x"), **SMALL, **{"LOSS.NAME": "moco"}))
    with pytest.raises(ConfigError, match="needs LOSS.NAME seed"):
        validate_cfg(cfg)


def test_small_patch_size_and_scale_are_ignored_without_patches(images, moco_teacher, tmp_path):
    # the default 96 px patch at a 32 px main view is fine while no patch is asked for
    validate_cfg(load_cfg(None, tiny_opts(images, moco_teacher, str(tmp_path / "x"))))
