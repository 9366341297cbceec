"""A timm network (MobileNetV3, EfficientNet, ...) with torchvision's FPN: the torchvision engine's
`build_timm_fpn_backbone`, the same network, feature levels and FPN as the Detectron2 engine's.

State names: `backbone.body.<timm name>` (Detectron2: `backbone.bottom_up.<timm name>`) and
`backbone.fpn.*` as for the ResNet FPN, so a converted student and a Detectron2 detector load by
renaming the prefix alone.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Dict, List, Mapping

import numpy as np
import torch
import torch.distributed as dist
from fvcore.common.config import CfgNode
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from seed_core.errors import ConfigError
from seed_det.convert import is_d2_detector, read_d2_pkl
from seed_det.timm_backbone import (D2_PREFIX, TIMM_SYNC_BN_ON_CPU, adopt_features, create_features, match_report,
                                    read_timm_pkl)

from .d2_names import d2_detector_state
from .model import FPN_STRIDES, norm_layer
from .weights import WeightsError, backbone_only, load_own_detector, read_weights

logger = logging.getLogger(__name__)

__all__ = ["TimmBody", "TimmFPNBackbone", "load_timm_weights"]

BODY = "backbone.body."


class TimmBody(nn.Module):
    """timm's feature extractor under its own parameter names; features as an ordered dict "0".."3"."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.channels = list(features.feature_info.channels())
        self.strides = list(features.feature_info.reduction())
        adopt_features(self, features)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return OrderedDict((str(i), f) for i, f in enumerate(self._timm_features(x)))


def _sync_norms(cfg: CfgNode) -> bool:
    """SyncBN synchronises only when several processes train; torch's SyncBatchNorm needs CUDA."""
    several = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if several and cfg.MODEL.TIMM.NORM == "SyncBN" and not (cfg.MODEL.DEVICE.startswith("cuda")
                                                             and torch.cuda.is_available()):
        raise ConfigError(TIMM_SYNC_BN_ON_CPU)
    return several


class TimmFPNBackbone(nn.Module):
    """body (timm features at strides 4..32) -> FPN P2..P5, P6 max-pooled from P5."""

    def __init__(self, cfg: CfgNode):
        super().__init__()
        t, f = cfg.MODEL.TIMM, cfg.MODEL.FPN
        features = create_features(t.ARCH, [int(i) for i in t.OUT_INDICES], t.NORM, sync=_sync_norms(cfg))
        self.arch = t.ARCH
        self.body = TimmBody(features)
        if tuple(self.body.strides) + (FPN_STRIDES[-1],) != FPN_STRIDES:
            raise ConfigError(f"MODEL.TIMM.OUT_INDICES {list(t.OUT_INDICES)} give {t.ARCH} features at strides "
                              f"{self.body.strides}; the torchvision engine's FPN needs strides {list(FPN_STRIDES[:-1])} "
                              "(OUT_INDICES [1, 2, 3, 4] for MobileNetV3 / EfficientNet).")
        self.fpn = FeaturePyramidNetwork(self.body.channels, f.OUT_CHANNELS, extra_blocks=LastLevelMaxPool(),
                                         norm_layer=norm_layer(f.NORM))
        self.out_channels = f.OUT_CHANNELS

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.fpn(self.body(x))


def _body_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items()
            if k.startswith(BODY) and not k.endswith("num_batches_tracked")}


def _load_backbone(model: nn.Module, state: Mapping[str, object], source: str) -> Dict[str, List[str]]:
    """Copy every body tensor from `state` (timm names); a missing or misshapen one is an error."""
    own = _body_state(model)
    expected = {k[len(BODY):]: tuple(v.shape) for k, v in own.items()}
    arch = model.backbone.arch
    try:
        report = match_report(state, expected, source, arch)
    except Exception as err:  # CheckpointError: reported as this engine's weights error
        raise WeightsError(str(err)) from err
    with torch.no_grad():
        for name in expected:
            value = state[name]
            value = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
            own[BODY + name].copy_(value.to(own[BODY + name].dtype))
    ignored = sorted(k for k in state if k not in expected and not k.endswith("num_batches_tracked"))
    logger.info("%s: matched %d/%d backbone tensors of %s%s", source, report["matched"], report["total"], arch,
                f"; ignored {len(ignored)} unused" if ignored else "")
    return {"loaded": sorted(BODY + k for k in expected), "ignored": ignored}


def _d2_detector(model: nn.Module, state: Mapping[str, object], path: str, complete: bool) -> Dict[str, List[str]]:
    """A Detectron2 detector with a timm backbone: the bottom-up network by prefix, the rest
    (FPN, RPN, heads) as for a ResNet detector."""
    body = {k[len(D2_PREFIX):]: v for k, v in state.items() if k.startswith(D2_PREFIX)}
    mapped, problems = d2_detector_state({k: v for k, v in state.items() if not k.startswith(D2_PREFIX)}, model)
    own = model.state_dict()
    for k, v in body.items():
        name = BODY + k
        if k.endswith("num_batches_tracked"):
            continue
        tensor = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
        if name not in own or tuple(tensor.shape) != tuple(own[name].shape):
            problems.append(f"{D2_PREFIX}{k}: does not fit the {model.backbone.arch} backbone")
            continue
        mapped[name] = tensor.to(own[name].dtype)
    problems = [p for p in problems if p.split(":")[0] not in mapped]  # filled from the bottom-up names
    missing = sorted(set(_body_state(model)) - set(mapped))
    if missing or (problems and complete):
        raise WeightsError(f"{path} is a Detectron2 detector that does not fit the {model.backbone.arch} model the "
                           f"config builds ({len(missing)} backbone tensors missing, {len(problems)} problems, e.g. "
                           f"{(missing + problems)[:3]}); use the config it was trained with")
    model.load_state_dict(mapped, strict=False)
    if problems:
        logger.warning("%s: %d tensors did not fit and keep their initialisation: %s", path, len(problems),
                       "; ".join(problems[:5]))
    logger.info("loaded %d tensors of the Detectron2 detector %s", len(mapped), path)
    return {"loaded": sorted(mapped), "ignored": problems}


def load_timm_weights(model: nn.Module, path: str, detector: bool = False) -> Dict[str, List[str]]:
    """MODEL.WEIGHTS for a timm-backbone model: a converted student (.pkl), a Detectron2 detector or
    this engine's own checkpoint. `detector`: the file must be a whole detector (evaluation)."""
    if path.endswith(".pkl"):
        data = read_d2_pkl(path)["model"]
        if is_d2_detector(data):
            return _d2_detector(model, data, path, complete=detector)
        if detector:
            raise backbone_only(path)
        state, arch = read_timm_pkl(path)
        if arch and arch != model.backbone.arch:
            raise WeightsError(f"{path} holds a converted {arch} student but the config builds {model.backbone.arch} "
                               f"(MODEL.TIMM.ARCH). Use the {arch} config or {model.backbone.arch} weights.")
        return _load_backbone(model, state, path)
    kind, state = read_weights(path)
    if kind == "d2_detector":
        return _d2_detector(model, state, path, complete=detector)
    if kind == "detection":
        return load_own_detector(model, state, path)
    raise WeightsError(f"{path} is a ResNet backbone; the config builds a {model.backbone.arch} backbone "
                       "(MODEL.TIMM.ARCH). Convert the timm student: python tools/convert_to_d2.py "
                       "<run>/student_backbone.pth <out>.pkl")
