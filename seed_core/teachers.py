"""Frozen teachers from self-supervised checkpoints: MoCo v1/v2, SwAV, SimCLR, MMSelfSup, DINO and
DINOv2 ViTs, ConvNeXt, torchvision, timm, and this project's own training checkpoints. The format is
detected from the key layout; a `zoo:NAME` is fetched from the teacher zoo (seed_core/zoo.py)."""
from __future__ import annotations

import logging
import re
from collections import OrderedDict

import torch
from torch import nn

from .checkpoint_io import CheckpointError, key_mismatch_report, load_untrusted, unwrap_state_dict
from .encoders import EmbeddingNet, build_backbone
from .resnet_spec import torchvision_depth
from .timm_layouts import describe_keys, detect_layout, dino_teacher, to_timm
from . import zoo

logger = logging.getLogger(__name__)

# Where each format keeps its projection head (an MLP of Linear / BatchNorm1d layers).
_HEAD_PREFIXES = {"moco": "fc.", "swav": "projection_head.", "simclr": "projection_head.", "seed": "head."}
_IGNORED = {"swav": ("prototypes.",)}


def detect_format(state: dict) -> str:
    keys = list(state)
    if any(re.match(r"(module\.)?encoder_q\.", k) for k in keys):
        return "moco"
    if any(re.match(r"(module\.)?(prototypes|projection_head)\.", k) for k in keys):
        return "swav"
    layout = detect_layout(keys)
    if layout:
        return layout
    if any(k.startswith("backbone.") for k in keys):
        others = [k for k in keys if not k.startswith("backbone.")]
        # ours: the backbone and a numbered MLP `head.N.*`; anything else beside `backbone.` is MMSelfSup's
        return "seed" if all(re.match(r"head\.\d+\.", k) for k in others) else "mmselfsup"
    if any(k.startswith("head.") for k in keys):
        return "seed"
    stripped = [k[len("module."):] if k.startswith("module.") else k for k in keys]
    if "conv1.weight" in stripped and any(k.startswith("layer4.") for k in stripped):
        return "torchvision"
    return "timm"


def split_teacher_state(state: dict, fmt: str) -> tuple[dict, dict]:
    """Return (backbone state, head state) with the backbone's own key names."""
    out = OrderedDict()
    for k, v in state.items():
        if not torch.is_tensor(v):
            continue
        k = re.sub(r"^module\.", "", k)
        if fmt == "moco":
            if not k.startswith("encoder_q."):
                continue  # encoder_k, queue: not part of the teacher
            k = k[len("encoder_q."):]
        if fmt == "mmselfsup":
            if not k.startswith("backbone."):
                # MMSelfSup's necks, predictors and momentum copies differ from method to method:
                # the teacher's embedding is its pooled backbone feature.
                continue
            k = k[len("backbone."):]
        if fmt in ("seed", "dino", "dinov2", "convnext") and k.startswith("backbone."):
            k = k[len("backbone."):]
        out[k] = v
    if fmt in ("dino", "dinov2", "convnext"):
        return OrderedDict(to_timm(out, fmt)), OrderedDict()
    head_prefix = _HEAD_PREFIXES.get(fmt)
    ignored = _IGNORED.get(fmt, ())
    backbone, head = OrderedDict(), OrderedDict()
    for k, v in out.items():
        if k.startswith(ignored):
            continue
        if head_prefix and k.startswith(head_prefix):
            head[k[len(head_prefix):]] = v
        else:
            backbone[k] = v
    return backbone, head


def build_mlp_from_state(head_state: dict) -> nn.Module:
    """Rebuild an MLP head (Linear / BatchNorm1d at numbered positions, ReLU between) from its
    weights, keeping the numbering so the state dict loads as it is."""
    if "weight" in head_state:  # a single Linear (MoCo v1 `fc`)
        w = head_state["weight"]
        return nn.Linear(w.shape[1], w.shape[0], bias="bias" in head_state)
    indices = sorted({int(k.split(".")[0]) for k in head_state})
    layers: list[nn.Module] = []
    last = max(indices)
    for i in range(last + 1):
        w = head_state.get(f"{i}.weight")
        if w is None:
            layers.append(nn.ReLU(inplace=True))
        elif w.dim() == 2:
            layers.append(nn.Linear(w.shape[1], w.shape[0], bias=f"{i}.bias" in head_state))
        elif f"{i}.running_mean" in head_state:
            layers.append(nn.BatchNorm1d(w.shape[0]))
        else:
            raise CheckpointError(f"cannot interpret projection-head layer {i} (weight shape {tuple(w.shape)})")
    return nn.Sequential(*layers)


def _load_exact(module: nn.Module, state: dict, what: str, path: str, optional_prefixes=(),
                found: dict | None = None) -> None:
    """Load `state` into `module` exactly; otherwise name what is missing, unexpected and
    mis-shaped, and describe what the file holds (`found`: its keys as stored)."""
    own = module.state_dict()
    problems = key_mismatch_report(own, state, optional_prefixes)
    if problems:
        hint = guess_resnet_arch(state)
        hint = f" The checkpoint looks like a {hint}." if hint else ""
        held = f" The file holds {describe_keys(found)}." if found is not None else ""
        raise CheckpointError(f"{path} does not fit the {what}: " + "; ".join(problems) + "." + hint + held +
                              " Set MODEL.TEACHER.ARCH (or MODEL.TEACHER.FORMAT) to match the checkpoint.")
    module.load_state_dict({k: state[k] for k in own}, strict=True)


def guess_resnet_arch(state: dict) -> str | None:
    """Name the torchvision ResNet a backbone state dict belongs to, if it is one."""
    if "conv1.weight" not in state:
        return None
    depth = torchvision_depth(state)
    if depth is None:
        return None
    width = state["conv1.weight"].shape[0] // 64
    return f"resnet{depth}" + (f"w{width}" if width > 1 else "")


class FrozenTeacher(EmbeddingNet):
    """A teacher that stays in eval mode (BN statistics never update) and has no gradients.
    `format` names the checkpoint layout it came from (moco, swav, ...), which also tells which
    augmentation recipe it was trained with."""

    def __init__(self, backbone: nn.Module, head: nn.Module | None, format: str | None = None):
        super().__init__(backbone, head)
        self.format = format
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):  # noqa: D401 - keep eval mode whatever the caller asks
        return super().train(False)


def fold_batchnorm(teacher: nn.Module) -> FrozenTeacher:
    """Fold each eval-mode BatchNorm into the preceding conv / linear layer (exact up to rounding):
    a frozen teacher never updates its statistics, and the fold removes about a third of its
    forward time on CPU. Networks that cannot be traced are returned unchanged."""
    from torch.fx.experimental.optimization import fuse
    fmt = teacher.format if isinstance(teacher, FrozenTeacher) else None
    try:
        fused = fuse(teacher.eval(), inplace=False)
    except Exception as e:  # noqa: BLE001 - tracing fails in many ways; the unfused teacher is correct
        logger.info("teacher BatchNorm not folded (%s: %s)", type(e).__name__, str(e)[:120])
        return teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher, None, fmt)
    return FrozenTeacher(fused, None, fmt)


def load_teacher(path: str, arch: str, fmt: str = "auto", use_head: bool = True) -> FrozenTeacher:
    """The frozen teacher in checkpoint `path` (a file, or `zoo:NAME`, fetched if not cached)."""
    path = zoo.resolve(path)
    ckpt = dino_teacher(load_untrusted(path))
    state, container = unwrap_state_dict(ckpt)
    if fmt == "auto":
        fmt = "seed" if container == "student" else detect_format(state)
    backbone_state, head_state = split_teacher_state(state, fmt)
    backbone, _ = build_backbone(arch)
    # Classifiers (torchvision/SimCLR `fc`, timm heads) are not part of the representation.
    classifier = ("fc.", "classifier.", "head.fc.", "head.") if fmt in ("torchvision", "simclr", "timm") else ()
    _load_exact(backbone, backbone_state, f"teacher backbone '{arch}' (format {fmt})", path, classifier, found=state)
    head = build_mlp_from_state(head_state) if (use_head and head_state) else None
    if head is not None:
        _load_exact(head, head_state, f"teacher projection head (format {fmt})", path)
    logger.info("teacher %s loaded from %s (format %s, %s)", arch, path, fmt,
                "with its projection head" if head is not None else "backbone features")
    return FrozenTeacher(backbone, head, fmt)


def embedding_dim(model: nn.Module, image_size: int = 64) -> int:
    """Output width of an embedding network, measured with one dummy forward in eval mode."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        dim = model(torch.zeros(2, 3, image_size, image_size)).shape[1]
    model.train(was_training)
    return int(dim)
