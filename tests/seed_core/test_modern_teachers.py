"""DINO / DINOv2 ViT, ConvNeXt and MMSelfSup teachers: their public checkpoint layouts, built
synthetically from timm models (shrunk through timm's own overrides) with the publishers' key
names, load into the timm models we build; a SEED step with a ViT teacher equals a plain
reimplementation; a zoo teacher runs end to end from a local HTTP server."""
import argparse
import hashlib
import json
import os

import pytest
import timm
import torch
import torch.nn.functional as F

from conftest import tiny_opts
from seed_core import zoo
from seed_core.checkpoint_io import CheckpointError
from seed_core.config import load_cfg
from seed_core.encoders import build_backbone, build_student
from seed_core.objectives import DistillationObjective
from seed_core.queue import EmbeddingQueue
from seed_core.teachers import detect_format, embedding_dim, load_teacher
from seed_core.trainer import train

# timm's keyword overrides give each public architecture a tiny twin with the same key layout.
TINY = {
    "vit_small_patch16_224": dict(depth=2, embed_dim=48, num_heads=2),
    "vit_small_patch14_dinov2": dict(depth=2, embed_dim=48, num_heads=2),
    "vit_small_patch14_reg4_dinov2": dict(depth=2, embed_dim=48, num_heads=2),
    "vit_giant_patch14_dinov2": dict(depth=1, embed_dim=48, num_heads=2),
    "convnext_tiny": dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)),
}


@pytest.fixture
def tiny_timm(monkeypatch):
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, *a, **kw: real(name, *a, **{**TINY.get(name, {}), **kw}))


def _reference(arch, seed=0):
    """The architecture with random weights (all of them perturbed, so that LayerScale's tiny
    initial values do not hide a block that failed to load)."""
    torch.manual_seed(seed)
    net, _ = build_backbone(arch)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


def _save(tmp_path, obj, name="teacher.pth"):
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


def _same_output(teacher, reference, size=32):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return torch.allclose(teacher(x), reference(x), atol=1e-5)


def _dinov2_hub_layout(net, swiglu=False):
    """DINOv2's torch.hub names: `register_tokens`, SwiGLU `w12` / `w3` (ViT-g), and a `mask_token`."""
    sd = {}
    for k, v in net.state_dict().items():
        k = "register_tokens" if k == "reg_token" else k
        if swiglu:
            k = k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        sd[k] = v
    sd["mask_token"] = torch.zeros(1, net.embed_dim)
    return sd


def _convnext_original_layout(net):
    """facebookresearch/ConvNeXt's names, with its ImageNet classifier under {"model": ...}."""
    sd = {}
    for k, v in net.state_dict().items():
        parts = k.split(".")
        if parts[0] == "stem":
            k = "downsample_layers.0." + ".".join(parts[1:])
        elif parts[0] == "head":
            k = ".".join(parts[1:])  # head.norm -> norm
        elif parts[2] == "downsample":
            k = f"downsample_layers.{parts[1]}." + ".".join(parts[3:])
        else:  # stages.i.blocks.j.<layer>
            rest = ".".join(parts[5:])
            layer = {"conv_dw": "dwconv", "norm": "norm", "gamma": "gamma"}.get(parts[4])
            if parts[4] == "mlp":
                layer, rest = {"fc1": "pwconv1", "fc2": "pwconv2"}[parts[5]], ".".join(parts[6:])
            k = f"stages.{parts[1]}.{parts[3]}.{layer}" + (f".{rest}" if rest else "")
        sd[k] = v
    width = net.head.norm.weight.shape[0]
    sd.update({"head.weight": torch.randn(10, width), "head.bias": torch.zeros(10)})
    return {"model": sd, "epoch": 299}


def test_dino_backbone_release_loads_as_its_cls_embedding(tmp_path, tiny_timm):
    ref = _reference("vit_small_patch16_224")
    path = _save(tmp_path, ref.state_dict())
    assert detect_format(ref.state_dict()) == "dino"
    teacher = load_teacher(path, "vit_small_patch16_224")
    assert teacher.format == "dino" and embedding_dim(teacher) == 48
    assert _same_output(teacher, ref)


def test_dino_full_checkpoint_gives_the_teacher_not_the_student(tmp_path, tiny_timm):
    ref = _reference("vit_small_patch16_224", seed=0)
    other = _reference("vit_small_patch16_224", seed=1)
    head = {"head.mlp.0.weight": torch.randn(64, 48), "head.last_layer.weight_g": torch.ones(1000, 1),
            "head.last_layer.weight_v": torch.randn(1000, 64)}
    ckpt = {"teacher": {**{f"backbone.{k}": v for k, v in ref.state_dict().items()}, **head},
            "student": {**{f"module.backbone.{k}": v for k, v in other.state_dict().items()},
                        **{f"module.{k}": v for k, v in head.items()}},
            "optimizer": {"state": {}, "param_groups": []}, "epoch": 100,
            "args": argparse.Namespace(arch="vit_small", patch_size=16)}
    teacher = load_teacher(_save(tmp_path, ckpt), "vit_small_patch16_224")
    assert teacher.format == "dino" and embedding_dim(teacher) == 48  # the 1000-prototype head is not used
    assert _same_output(teacher, ref) and not _same_output(teacher, other)


@pytest.mark.parametrize("arch", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2",
                                  "vit_giant_patch14_dinov2"])
def test_dinov2_hub_layout_loads_into_timm(tmp_path, tiny_timm, arch):
    ref = _reference(arch)
    sd = _dinov2_hub_layout(ref, swiglu="giant" in arch)
    assert any(".w12." in k for k in sd) == ("giant" in arch)
    assert detect_format(sd) == "dinov2"
    teacher = load_teacher(_save(tmp_path, sd), arch)
    # 32 px is not a multiple of 14: the patch grid is padded, the 37 x 37 position embeddings resampled
    assert _same_output(teacher, ref, size=32) and _same_output(teacher, ref, size=56)


def test_convnext_original_layout_loads_as_its_pooled_normalised_feature(tmp_path, tiny_timm):
    ref = _reference("convnext_tiny")
    ckpt = _convnext_original_layout(ref)
    assert detect_format(ckpt["model"]) == "convnext"
    teacher = load_teacher(_save(tmp_path, ckpt), "convnext_tiny")
    assert teacher.format == "convnext" and embedding_dim(teacher) == 32 and _same_output(teacher, ref)


def test_mmselfsup_layout_reads_the_backbone_and_ignores_necks_and_momentum_copies(tmp_path):
    ref = _reference("resnet18")
    sd = {f"backbone.{k}": v for k, v in ref.state_dict().items()}
    sd.update({"neck.mlp.0.weight": torch.randn(64, 512), "target_net.0.conv1.weight": torch.randn(64, 3, 7, 7),
               "head.predictor.mlp.0.weight": torch.randn(64, 64)})
    assert detect_format(sd) == "mmselfsup"
    teacher = load_teacher(_save(tmp_path, {"state_dict": sd, "meta": {"epoch": 200}}), "resnet18")
    assert embedding_dim(teacher) == 512 and _same_output(teacher, ref)


def test_a_layout_we_cannot_read_names_what_was_found(tmp_path, tiny_timm):
    sd = {"encoder.layers.0.attention.weight": torch.randn(8, 8), "encoder.layers.1.attention.weight": torch.randn(8, 8),
          "embeddings.patch.weight": torch.randn(8, 3, 16, 16)}
    with pytest.raises(CheckpointError) as err:
        load_teacher(_save(tmp_path, sd), "vit_small_patch16_224")
    msg = str(err.value)
    assert "3 tensors" in msg and "encoder.* (2)" in msg and "embeddings.* (1)" in msg and "missing keys" in msg


def test_a_seed_step_with_a_dinov2_teacher_equals_a_plain_reimplementation(tmp_path, tiny_timm):
    arch = "vit_small_patch14_reg4_dinov2"
    ref = _reference(arch)
    teacher = load_teacher(_save(tmp_path, _dinov2_hub_layout(ref)), arch)
    dim = embedding_dim(teacher)
    torch.manual_seed(3)
    student = build_student("resnet18", dim)
    plain_student = build_student("resnet18", dim)
    plain_student.load_state_dict(student.state_dict())
    queue = EmbeddingQueue(16, dim, torch.Generator().manual_seed(4))
    plain_queue = queue.embeddings.clone()
    images = torch.randn(4, 3, 28, 28)

    objective = DistillationObjective(teacher, queue, "seed", 0.2, 0.01)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss, to_enqueue = objective(student, images, torch.autocast("cpu", enabled=False))
    opt.zero_grad()
    loss.backward()
    opt.step()
    objective.after_step(student, to_enqueue)

    # The same step written out: the teacher's CLS token (after its final norm), SEED's soft cross-entropy.
    with torch.no_grad():
        z_t = F.normalize(ref.forward_features(images)[:, 0], dim=1)
    z_s = F.normalize(plain_student(images), dim=1)
    logits_s = torch.cat([(z_s * z_t).sum(1, keepdim=True), z_s @ plain_queue.T], 1) / 0.2
    logits_t = torch.cat([(z_t * z_t).sum(1, keepdim=True), z_t @ plain_queue.T], 1) / 0.01
    plain_loss = -(F.softmax(logits_t, 1) * F.log_softmax(logits_s, 1)).sum(1).mean()
    plain_opt = torch.optim.SGD(plain_student.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    plain_opt.zero_grad()
    plain_loss.backward()
    plain_opt.step()

    assert torch.allclose(loss, plain_loss, atol=1e-5)
    for (name, p), q in zip(student.named_parameters(), plain_student.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name
    assert torch.allclose(queue.embeddings[:4], z_t, atol=1e-5) and torch.equal(queue.embeddings[4:], plain_queue[4:])


def test_distilling_from_a_zoo_dinov2_teacher_with_the_head_following_its_width(
        images, tmp_path, tiny_timm, file_server, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    arch = "vit_small_patch14_dinov2"
    buf = tmp_path / "served.pth"
    torch.save(_dinov2_hub_layout(_reference(arch)), buf)
    file_server.files["/dinov2/toy.pth"] = data = buf.read_bytes()
    monkeypatch.setitem(zoo.CATALOGUE, "toy_dinov2", zoo.ZooEntry(
        "toy_dinov2", file_server.url("/dinov2/toy.pth"), arch, "dinov2",
        "sha256:" + hashlib.sha256(data).hexdigest(), "a test teacher"))
    seen = []
    out = str(tmp_path / "run")
    cfg = load_cfg(None, tiny_opts(images, "zoo:toy_dinov2", out, **{
        "MODEL.TEACHER.ARCH": arch, "MODEL.STUDENT.HEAD_DIM": 0, "SOLVER.MAX_ITER": 2}))
    summary = train(cfg, download_progress=lambda done, total: seen.append(done))
    assert summary["finished"] and seen[-1] == len(data)
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["head_dim"] == 48 and meta["teacher"]["weights"] == "zoo:toy_dinov2"
