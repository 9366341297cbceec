"""Detectron2 names -> this engine's: a ResNet backbone (a converted .pkl) or a whole trained
detector, every tensor renamed, and the predictors' class order changed (Detectron2 puts
background last and has no background box or mask; torchvision puts it first).

Detectron2 -> torchvision, per part (ResNet names: seed_det.convert, both directions):
  ResNet          backbone.bottom_up.* (FPN) / backbone.* (C4) -> the module `backbone_modules` names
  C4 res5         roi_heads.res5.{i}.*, roi_heads.res5.norm.* -> roi_heads.box_head.res5.layer4 / .norm
  FPN             backbone.fpn_lateral{2-5}[.norm] / fpn_output{2-5}[.norm] -> fpn.inner_blocks / layer_blocks
  RPN             proposal_generator.rpn_head.{conv, objectness_logits, anchor_deltas} -> rpn.head.*
  box head        roi_heads.box_head.conv{i}[.norm] / fc{i} -> roi_heads.box_head.net.{index}
  box predictor   cls_score (background moved first), bbox_pred (a zero background box prepended)
  mask head       roi_heads.mask_head.mask_fcn{i}[.norm] -> roi_heads.mask_head.{i-1}.{0,1};
                  deconv -> mask_predictor.conv5_mask; predictor -> mask_fcn_logits (zero background)
"""
from __future__ import annotations

import re
from typing import Dict, Mapping, Optional

import numpy as np
import torch
from torch import nn

from seed_det.convert import d2_to_torchvision_name

from .model import backbone_prefixes

# Buffers Detectron2 may save that this engine keeps in its transform or recomputes.
_IGNORED = re.compile(r"(^|\.)(pixel_mean|pixel_std|num_batches_tracked|cell_anchors\.\d+)$")
_RPN = {"conv": "conv.0.0", "objectness_logits": "cls_logits", "anchor_deltas": "bbox_pred"}


def _box_head_indices(model: nn.Module) -> Dict[str, str]:
    """Detectron2 box-head layer names (conv1, conv1.norm, fc1, ...) -> index in ConvFCHead.net."""
    net = getattr(model.roi_heads.box_head, "net", None)
    if net is None:
        return {}
    names, convs, fcs = {}, 0, 0
    for i, layer in enumerate(net):
        if isinstance(layer, nn.Conv2d):
            convs += 1
            names[f"conv{convs}"] = str(i)
        elif isinstance(layer, nn.Linear):
            fcs += 1
            names[f"fc{fcs}"] = str(i)
        elif not isinstance(layer, (nn.ReLU, nn.Flatten)):
            names[f"conv{convs}.norm"] = str(i)
    return names


def _rename(key: str, stages: Dict[str, str], box_head: Dict[str, str]) -> Optional[str]:
    """Detectron2 name -> this engine's name; None if the name has no counterpart."""
    m = re.match(r"^roi_heads\.res5\.norm\.(\w+)$", key)
    if m:
        return f"roi_heads.box_head.res5.norm.{m.group(1)}"
    if key.startswith(("backbone.bottom_up.", "roi_heads.res5.")) or re.match(r"^backbone\.(stem|res\d)\.", key):
        name = d2_to_torchvision_name(key.replace("roi_heads.res5.", "res5.", 1))
        if name is None:
            return None
        stage, rest = name.split(".", 1)
        return f"{stages[stage]}.{rest}"
    m = re.match(r"^backbone\.fpn_(lateral|output)(\d)\.(norm\.)?(\w+)$", key)
    if m:
        blocks = "inner_blocks" if m.group(1) == "lateral" else "layer_blocks"
        return f"backbone.fpn.{blocks}.{int(m.group(2)) - 2}.{1 if m.group(3) else 0}.{m.group(4)}"
    m = re.match(r"^proposal_generator\.rpn_head\.(\w+)\.(\w+)$", key)
    if m and m.group(1) in _RPN:
        return f"rpn.head.{_RPN[m.group(1)]}.{m.group(2)}"
    m = re.match(r"^roi_heads\.box_head\.(\w+?\d+(?:\.norm)?)\.(\w+)$", key)
    if m and m.group(1) in box_head:
        return f"roi_heads.box_head.net.{box_head[m.group(1)]}.{m.group(2)}"
    m = re.match(r"^roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(\w+)$", key)
    if m:
        return key
    m = re.match(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(norm\.)?(\w+)$", key)
    if m:
        return f"roi_heads.mask_head.{int(m.group(1)) - 1}.{1 if m.group(2) else 0}.{m.group(3)}"
    m = re.match(r"^roi_heads\.mask_head\.(deconv|predictor)\.(\w+)$", key)
    if m:
        return f"roi_heads.mask_predictor.{'conv5_mask' if m.group(1) == 'deconv' else 'mask_fcn_logits'}.{m.group(2)}"
    return None


def _background_first(name: str, value: torch.Tensor) -> torch.Tensor:
    """Detectron2's predictor rows in torchvision's class order."""
    if name.startswith("roi_heads.box_predictor.cls_score."):
        return torch.cat([value[-1:], value[:-1]])  # background is Detectron2's last class
    if name.startswith("roi_heads.box_predictor.bbox_pred."):
        return torch.cat([value.new_zeros((4,) + value.shape[1:]), value])
    if name.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
        return torch.cat([value.new_zeros((1,) + value.shape[1:]), value])
    return value


def d2_detector_state(state: Mapping[str, object], model: nn.Module):
    """(this engine's state dict for `model`, problems). Problems list every Detectron2 tensor
    without a counterpart, every model tensor the file does not fill and every shape that differs;
    the state is only complete when there are none."""
    stages, box_head = backbone_prefixes(model), _box_head_indices(model)
    own = {k: v for k, v in model.state_dict().items() if not _IGNORED.search(k)}
    out, misfit, problems = {}, set(), []
    for key, value in state.items():
        if _IGNORED.search(key):
            continue
        name = _rename(key, stages, box_head)
        if name is None or name not in own:
            problems.append(f"{key}: no counterpart in this model")
            continue
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        tensor = _background_first(name, tensor)
        if tuple(tensor.shape) != tuple(own[name].shape):
            problems.append(f"{key}: shape {tuple(value.shape)} does not fit {name} {tuple(own[name].shape)}")
            misfit.add(name)
            continue
        out[name] = tensor.to(own[name].dtype)
    # C4 Mask R-CNN runs the same res5 for boxes and masks: one tensor, listed under both heads.
    for name in own:
        if name.startswith("roi_heads.mask_head.res5."):
            shared = name.replace("roi_heads.mask_head.", "roi_heads.box_head.", 1)
            if shared in out:
                out[name] = out[shared]
    problems += [f"{name}: not in the file" for name in sorted(set(own) - set(out) - misfit)]
    return out, problems
