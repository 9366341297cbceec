"""Backbones by name: torchvision ResNets, SwAV-style wide ResNets and any timm model.

Every backbone maps images (N, 3, H, W) to pooled features (N, C) and keeps the key names of the
library it comes from (torchvision: conv1, bn1, layer1..4), so checkpoints load without renaming.
"""
from __future__ import annotations

import torch
from torch import nn
import torchvision
from torchvision.models.resnet import Bottleneck, ResNet

from .errors import ConfigError

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                       "wide_resnet50_2", "wide_resnet101_2", "resnext50_32x4d", "resnext101_32x8d")
# SwAV's wide ResNet-50: every width (stem included) multiplied, unlike torchvision's wide_resnet50_2.
SWAV_WIDE_RESNETS = {"resnet50w2": 2, "resnet50w4": 4, "resnet50w5": 5}


class SwAVWideResNet(ResNet):
    """ResNet-50 with all channel widths scaled by `widen`, with torchvision parameter names."""

    def __init__(self, widen: int):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.dilation, self.groups, self.base_width = 1, 1, 64
        width = 64 * widen
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        # torchvision's Bottleneck derives its inner width from planes * base_width / 64.
        self.layer1 = self._make_layer(Bottleneck, width, 3)
        self.layer2 = self._make_layer(Bottleneck, width * 2, 4, stride=2)
        self.layer3 = self._make_layer(Bottleneck, width * 4, 6, stride=2)
        self.layer4 = self._make_layer(Bottleneck, width * 8, 3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def available_backbones() -> str:
    return ", ".join(TORCHVISION_RESNETS + tuple(SWAV_WIDE_RESNETS)) + ", or any timm model name"


def build_backbone(name: str, zero_init_residual: bool = False) -> tuple[nn.Module, int]:
    """Return (backbone, feature_dim) for `name`; the classifier is removed (`fc` is Identity).
    `zero_init_residual`: each residual block's last BatchNorm starts at zero, so that the block
    starts as the identity (Goyal et al. 2017): torchvision ResNets only."""
    if zero_init_residual and name not in TORCHVISION_RESNETS:
        raise ConfigError(f"MODEL.STUDENT.ZERO_INIT_RESIDUAL is for torchvision ResNets ({', '.join(TORCHVISION_RESNETS)}), "
                          f"not '{name}': set it to False")
    if name in SWAV_WIDE_RESNETS:
        net = SwAVWideResNet(SWAV_WIDE_RESNETS[name])
        return net, 2048 * SWAV_WIDE_RESNETS[name]
    if name in TORCHVISION_RESNETS:
        net = getattr(torchvision.models, name)(weights=None, zero_init_residual=zero_init_residual)
        dim = net.fc.in_features
        net.fc = nn.Identity()
        return net, dim
    try:
        import timm
    except ImportError as e:  # pragma: no cover - timm is a declared dependency
        raise ImportError(f"backbone '{name}' is not a torchvision ResNet and timm is not installed") from e
    if not timm.is_model(name):
        raise ConfigError(f"unknown backbone '{name}'. Use one of: {available_backbones()} "
                         f"(see timm.list_models()).")
    kwargs = {}
    if timm.models.model_entrypoint(name).__module__.endswith(".vision_transformer"):
        # Any image size: patches padded to a whole number, position embeddings resampled (DINOv2's
        # are for 518 px, distillation crops are 224 px).
        kwargs = {"dynamic_img_size": True, "dynamic_img_pad": True}
    net = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    # num_features is the pre-head width for some models (MobileNetV3): measure the real output.
    was_training = net.training
    net.eval()
    with torch.no_grad():
        dim = net(torch.zeros(1, 3, 64, 64)).shape[1]
    net.train(was_training)
    return net, int(dim)


def backbone_size(name: str) -> int:
    """Parameter count of the backbone `name` without its classifier: what a "larger" teacher means."""
    net, _ = build_backbone(name)
    return sum(p.numel() for p in net.parameters())


def build_mlp_head(in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = False) -> nn.Sequential:
    """Projection head Linear-ReLU-Linear (SEED / MoCo-v2; keys 0.* and 2.* as MoCo's `fc`), or with
    `batch_norm` Linear-BatchNorm-ReLU-Linear (SimCLR's and MoCo v3's hidden layer)."""
    if not batch_norm:
        return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                         nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def head_output_dim(state: dict, prefix: str = "head.") -> int | None:
    """Width of the embeddings of an MLP head stored under `prefix`: its last Linear's output."""
    linear = [k for k, v in state.items() if k.startswith(prefix) and k.endswith(".weight") and v.dim() == 2]
    if not linear:
        return None
    last = max(linear, key=lambda k: int(k[len(prefix):].split(".")[0]))
    return int(state[last].shape[0])


class EmbeddingNet(nn.Module):
    """Backbone followed by an optional projection head; returns unnormalised embeddings.
    `feature_dim` is the backbone's output width (the head's input), when the builder knows it."""

    def __init__(self, backbone: nn.Module, head: nn.Module | None, feature_dim: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, ...]):
        if isinstance(x, (tuple, list)):
            # Views of different sizes (SEED's small patches) in one call, so that DDP sees a
            # single forward per backward.
            return tuple(self.head(self.backbone(v)) for v in x)
        return self.head(self.backbone(x))


def build_student(arch: str, head_dim: int, head_hidden_dim: int = 0, zero_init_residual: bool = False,
                  head_batch_norm: bool = False) -> EmbeddingNet:
    backbone, feat_dim = build_backbone(arch, zero_init_residual)
    hidden = head_hidden_dim or feat_dim
    return EmbeddingNet(backbone, build_mlp_head(feat_dim, hidden, head_dim, head_batch_norm), feat_dim)
