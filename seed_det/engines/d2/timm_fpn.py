"""A timm network (MobileNetV3, EfficientNet, ...) as a Detectron2 backbone: `build_timm_fpn_backbone`
in BACKBONE_REGISTRY, Detectron2's FPN over the timm feature levels of MODEL.TIMM.OUT_INDICES.

The bottom-up network's parameters keep timm's names, so a converted student
(`backbone.bottom_up.<timm name>`, seed_det.convert_timm) loads without matching heuristics.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Mapping

import numpy as np
import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from seed_det.timm_backbone import D2_PREFIX, adopt_features, create_features, feature_names

logger = logging.getLogger(__name__)

__all__ = ["TimmBackbone", "build_timm_fpn_backbone", "verify_timm_backbone_loaded"]


class TimmBackbone(Backbone):
    """timm's feature extractor with Detectron2's Backbone interface: features "stage{i}" with
    their channels and strides from timm's feature_info."""

    def __init__(self, arch: str, out_indices, norm: str):
        super().__init__()
        features = create_features(arch, out_indices, norm)
        self._names = feature_names(out_indices)
        self._out_features = list(self._names)
        self._out_feature_channels = dict(zip(self._names, features.feature_info.channels()))
        self._out_feature_strides = dict(zip(self._names, features.feature_info.reduction()))
        self.arch = arch
        adopt_features(self, features)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return dict(zip(self._names, self._timm_features(x)))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
                for n in self._out_features}


@BACKBONE_REGISTRY.register()
def build_timm_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """MODEL.TIMM.ARCH with an FPN (MODEL.FPN.*) over MODEL.FPN.IN_FEATURES, P6 max-pooled from
    the last level, as build_resnet_fpn_backbone does for ResNets."""
    t = cfg.MODEL.TIMM
    bottom_up = TimmBackbone(t.ARCH, [int(i) for i in t.OUT_INDICES], t.NORM)
    return FPN(bottom_up=bottom_up, in_features=list(cfg.MODEL.FPN.IN_FEATURES),
               out_channels=cfg.MODEL.FPN.OUT_CHANNELS, norm=cfg.MODEL.FPN.NORM, top_block=LastLevelMaxPool(),
               fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


def verify_timm_backbone_loaded(model: nn.Module, d2_state: Mapping[str, np.ndarray]) -> tuple[int, int, List[str]]:
    """(matched, total, problems): every tensor of the model's timm bottom-up network compared
    with the checkpoint's (BN counters excluded)."""
    state = {k: v for k, v in model.state_dict().items()
             if k.startswith(D2_PREFIX) and not k.endswith("num_batches_tracked")}
    problems = []
    for name, tensor in state.items():
        if name not in d2_state:
            problems.append(f"{name}: not in the checkpoint")
            continue
        value = torch.as_tensor(np.asarray(d2_state[name]))
        if tuple(value.shape) != tuple(tensor.shape):
            problems.append(f"{name}: shape {tuple(tensor.shape)} vs checkpoint {tuple(value.shape)}")
        elif not torch.equal(tensor.detach().cpu(), value.to(tensor.dtype)):
            problems.append(f"{name}: value differs from the checkpoint")
    return len(state) - len(problems), len(state), problems
