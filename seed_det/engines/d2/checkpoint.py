"""Check that a converted backbone really landed in the model (backbone and res5 ROI head)."""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np
import torch
from torch import nn

from seed_det.convert import D2_RESNET_PREFIXES

# Model prefixes under which Detectron2 places ResNet weights: C4 backbone, FPN bottom-up, C4 res5 head.
_RESNET_PREFIX = re.compile("^(" + "|".join(re.escape(p) for p in D2_RESNET_PREFIXES) + r")(?=(stem|res[2-5])\.)")


def resnet_state_names(model: nn.Module) -> dict[str, str]:
    """Model state name -> checkpoint name for every ResNet tensor (BN counters excluded)."""
    out = {}
    for name in model.state_dict():
        m = _RESNET_PREFIX.match(name)
        if m and not name.endswith("num_batches_tracked"):
            rest = name[m.end():]
            if not re.match(r"^res5\.norm\.", rest):  # the optional extra norm is new, not pretrained
                out[name] = rest
    return out


def verify_backbone_loaded(model: nn.Module, d2_state: Mapping[str, np.ndarray]) -> list[str]:
    """Problems (missing / different tensors) between the model's ResNet and a converted state."""
    state = model.state_dict()
    problems = []
    for model_name, ckpt_name in resnet_state_names(model).items():
        if ckpt_name not in d2_state:
            problems.append(f"{model_name}: not in the checkpoint")
            continue
        value = torch.as_tensor(np.asarray(d2_state[ckpt_name]))
        if tuple(value.shape) != tuple(state[model_name].shape):
            problems.append(f"{model_name}: shape {tuple(state[model_name].shape)} vs checkpoint "
                            f"{tuple(value.shape)}")
        elif not torch.equal(state[model_name].detach().cpu(), value.to(state[model_name].dtype)):
            problems.append(f"{model_name}: value differs from the checkpoint")
    return problems
