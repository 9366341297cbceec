import math

import torch
import torch.nn.functional as F

from seed_core.encoders import build_student
from seed_core.losses import info_nce_loss, l2_loss, seed_loss
from seed_core.losses import similarity_logits as similarity_logits_ref
from seed_core.objectives import DistillationObjective
from seed_core.queue import EmbeddingQueue
from seed_core.teacher_precision import cast_teacher
from seed_core.teachers import FrozenTeacher, fold_batchnorm


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def test_seed_loss_matches_the_formula_by_hand():
    zs, zt, queue = _unit(3, 4, seed=1), _unit(3, 4, seed=2), _unit(5, 4, seed=3)
    ts, tt = 0.2, 0.01
    expected = 0.0
    for i in range(3):
        s_logits = [sum(zs[i, d] * zt[i, d] for d in range(4)).item()]
        t_logits = [sum(zt[i, d] * zt[i, d] for d in range(4)).item()]
        for j in range(5):
            s_logits.append(sum(zs[i, d] * queue[j, d] for d in range(4)).item())
            t_logits.append(sum(zt[i, d] * queue[j, d] for d in range(4)).item())
        t_max = max(t_logits)
        p = [math.exp((v - t_max) / tt) for v in t_logits]
        p = [v / sum(p) for v in p]
        s_lse = math.log(sum(math.exp(v / ts) for v in s_logits))
        expected += -sum(pj * (sj / ts - s_lse) for pj, sj in zip(p, s_logits))
    expected /= 3
    got = seed_loss(zs, zt, queue, ts, tt).item()
    assert abs(got - expected) < 1e-10
    assert abs(zt[0] @ zt[0] - 1) < 1e-12  # the teacher positive is z_T . z_T = 1


def test_teacher_temperature_to_zero_gives_infonce_with_teacher_positive():
    zs, zt, queue = _unit(6, 8, seed=4), _unit(6, 8, seed=5), _unit(30, 8, seed=6)
    nce = info_nce_loss(zs, zt, queue, temperature=0.2)
    sharp = seed_loss(zs, zt, queue, student_temp=0.2, teacher_temp=1e-4)
    soft = seed_loss(zs, zt, queue, student_temp=0.2, teacher_temp=0.5)
    assert torch.allclose(sharp, nce, atol=1e-8)
    assert not torch.allclose(soft, nce, atol=1e-3)


def test_l2_loss_is_squared_distance_and_zero_when_equal():
    zs, zt = _unit(4, 8, seed=7), _unit(4, 8, seed=8)
    assert torch.allclose(l2_loss(zs, zt), ((zs - zt) ** 2).sum(1).mean())
    assert l2_loss(zt, zt).item() == 0.0


def test_gradients_reach_only_student_and_head_and_teacher_bn_is_frozen():
    torch.manual_seed(0)
    student = build_student("resnet18", head_dim=16)
    t_net = build_student("resnet18", head_dim=16)
    teacher = FrozenTeacher(t_net.backbone, t_net.head)
    teacher.train()  # a caller asking for train mode must not unfreeze BN statistics
    bn_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    queue = EmbeddingQueue(32, 16)
    queue_before = queue.embeddings.clone()
    objective = DistillationObjective(teacher, queue, "seed", 0.2, 0.01)
    assert objective.teacher is teacher
    images = torch.randn(4, 3, 32, 32)
    loss, z_t = objective(student, images, torch.autocast("cpu", enabled=False))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.head.parameters())
    assert student.backbone.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, bn_before[k]), k
    assert torch.equal(queue.embeddings, queue_before)  # enqueue happens only after the step
    assert not z_t.requires_grad


def test_folded_teacher_computes_the_same_embeddings():
    torch.manual_seed(1)
    net = build_student("resnet18", head_dim=16)
    for m in net.modules():  # non-trivial statistics so the fold is really exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    teacher = FrozenTeacher(net.backbone, net.head)
    folded, _ = cast_teacher(teacher, "fp32", fold_batchnorm)  # as the trainer prepares its teacher
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    folded.train()
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(folded(x), teacher(x), atol=1e-5)


def test_soft_cross_entropy_gradient_matches_autograd_of_the_plain_formula():
    zs = _unit(5, 6, seed=11).requires_grad_(True)
    zt, queue = _unit(5, 6, seed=12), _unit(9, 6, seed=13)
    ours = seed_loss(zs, zt, queue, 0.2, 0.05)
    (g_ours,) = torch.autograd.grad(ours, zs)
    t = similarity_logits_ref(zt, zt, queue) / 0.05
    s = similarity_logits_ref(zs, zt, queue) / 0.2
    plain = -(F.softmax(t, 1) * F.log_softmax(s, 1)).sum(1).mean()
    (g_plain,) = torch.autograd.grad(plain, zs)
    assert torch.allclose(ours, plain, atol=1e-12)
    assert torch.allclose(g_ours, g_plain, atol=1e-12)


def test_reduced_precision_student_queue_stays_close_to_fp32():
    zs = _unit(8, 16, seed=14).float().requires_grad_(True)
    zt, queue = _unit(8, 16, seed=15).float(), _unit(300, 16, seed=16).float()
    full = seed_loss(zs, zt, queue, 0.2, 0.01)
    low = seed_loss(zs, zt, queue, 0.2, 0.01, student_queue=queue.bfloat16())
    assert low.dtype == torch.float32
    assert abs(full.item() - low.item()) < 2e-2 * full.item()
    (g_full,) = torch.autograd.grad(full, zs)
    (g_low,) = torch.autograd.grad(seed_loss(zs, zt, queue, 0.2, 0.01, student_queue=queue.bfloat16()), zs)
    assert torch.allclose(g_full, g_low, atol=0.05 * g_full.abs().max().item())


def test_queue_shadow_copy_follows_enqueue_and_load():
    q = EmbeddingQueue(6, 4, shadow_dtype=torch.bfloat16)
    q.enqueue(torch.full((4, 4), 0.5))
    q.enqueue(torch.full((4, 4), 0.25))  # wraps around
    assert torch.equal(q.shadow, q.embeddings.bfloat16())
    r = EmbeddingQueue(6, 4, torch.Generator().manual_seed(3), shadow_dtype=torch.bfloat16)
    r.load_state_dict(q.state_dict())
    assert "shadow" not in q.state_dict() and torch.equal(r.shadow, q.embeddings.bfloat16())


def test_the_objective_decides_the_queue_shadow_dtype():
    net = build_student("resnet18", head_dim=4)
    teacher = FrozenTeacher(net.backbone, net.head)
    for loss, student_dtype, expected in [("seed", torch.bfloat16, torch.bfloat16), ("seed", torch.float32, None),
                                          ("l2", torch.bfloat16, None)]:
        queue = EmbeddingQueue(6, 4, shadow_dtype=torch.float16)
        DistillationObjective(teacher, queue, loss, 0.2, 0.01, student_dtype=student_dtype)
        assert (queue.shadow.dtype if queue.shadow is not None else None) == expected
        if expected is not None:
            assert torch.equal(queue.shadow, queue.embeddings.to(expected))
