"""MODEL.WEIGHTS for the torchvision engine: a backbone (converted .pkl, student_backbone.pth,
ResNet .pth), a trained Detectron2 detector or this engine's own checkpoint, read and loaded with
checks (every backbone tensor must come from the file). The renaming is in d2_names."""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Mapping

import torch
from torch import nn

from seed_core.errors import SeedError
from seed_core.resnet_spec import torchvision_depth
from seed_det.convert import d2_to_torchvision_state, read_weights_file
from seed_det.engines.tv.d2_names import d2_detector_state
from seed_det.engines.tv.model import backbone_modules, backbone_prefixes

logger = logging.getLogger(__name__)

BACKBONE_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


class WeightsError(SeedError):
    """MODEL.WEIGHTS cannot be loaded into the model the config builds."""


def read_weights(path: str):
    """Return ("detection", state of this engine's model), ("d2_detector", a Detectron2 detector's
    state) or ("backbone", torchvision ResNet state); the kind is seed_det.convert.read_weights_file's."""
    if not os.path.isfile(path):
        raise WeightsError(f"MODEL.WEIGHTS {path} does not exist: convert the student first "
                           "(tools/convert_to_d2.py) or pass the right path")
    weights = read_weights_file(path)
    if weights.kind == "d2_detector":
        return "d2_detector", weights.state
    if weights.kind == "tv_detector":
        return "detection", weights.state
    state = weights.resnet_state()
    if not state:  # only a .pkl can get here empty: a .pth is d2_backbone only with a ResNet stem
        raise WeightsError(f"{path} holds no Detectron2 ResNet tensors (stem.*, res2..res5.*)")
    return "backbone", state


def _depth_hint(state: Mapping[str, torch.Tensor]) -> str:
    depth = torchvision_depth(state)
    return f" The file holds a ResNet-{depth}: check MODEL.RESNETS.DEPTH." if depth else ""


def copy_backbone_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> Dict[str, List[str]]:
    """Copy every backbone tensor from `state` (torchvision names) into the model.

    Missing or surplus ResNet tensors and shape mismatches are errors (a silently random layer
    would spoil a transfer number). BN `num_batches_tracked` counters are optional.
    Returns {"loaded": [...], "ignored": [...]} for logging and tests.
    """
    modules = backbone_modules(model)
    expected = {}
    for prefix, module in modules.items():
        for k, v in module.state_dict().items():
            expected[f"{prefix}.{k}"] = v
    required = {k for k in expected if not k.endswith("num_batches_tracked")}
    provided = {k for k in state if k.startswith(BACKBONE_PREFIXES) and not k.endswith("num_batches_tracked")}
    missing, surplus = sorted(required - provided), sorted(provided - required)
    if missing or surplus:
        raise WeightsError(
            f"{source} does not fit the backbone the config builds: {len(missing)} missing backbone keys "
            f"{missing[:5]}, {len(surplus)} unexpected {surplus[:5]}.{_depth_hint(state)}")
    for k in sorted(required):
        if tuple(state[k].shape) != tuple(expected[k].shape):
            raise WeightsError(f"{source}: {k} has shape {tuple(state[k].shape)}, the model needs "
                               f"{tuple(expected[k].shape)}; check MODEL.RESNETS.DEPTH / RES2_OUT_CHANNELS")
    for prefix, module in modules.items():
        sub = {k[len(prefix) + 1:]: state[k] for k in required if k.startswith(prefix + ".")}
        own = module.state_dict()
        sub.update({k: v for k, v in own.items() if k.endswith("num_batches_tracked")})
        module.load_state_dict(sub, strict=True)
    ignored = sorted(k for k in state if k not in required and not k.endswith("num_batches_tracked"))
    logger.info("loaded %d backbone tensors from %s; missing backbone keys: none%s", len(required), source,
                f"; ignored {len(ignored)} non-backbone keys" if ignored else "")
    return {"loaded": sorted(required), "ignored": ignored}


def load_d2_detector(model: nn.Module, state: Mapping, path: str, complete: bool) -> Dict[str, List[str]]:
    """Load a Detectron2 detector. `complete`: every tensor must fit (evaluation); otherwise, as
    Detectron2 does when fine-tuning, what fits is loaded and the rest named (e.g. a predictor
    for another class count), but the backbone must be whole."""
    mapped, problems = d2_detector_state(state, model)
    if problems and complete:
        raise WeightsError(f"{path} is a Detectron2 detector that does not fit the model the config builds "
                           f"({len(problems)} problems, e.g. {problems[:3]}); use the config it was trained with")
    backbone = set(_backbone_keys(model))
    if not backbone <= set(mapped):
        missing = sorted(backbone - set(mapped))
        raise WeightsError(f"{path}: the backbone of this Detectron2 detector does not fit the config "
                           f"({len(missing)} tensors, e.g. {missing[:3]}).{_depth_hint(d2_to_torchvision_state(state))}")
    model.load_state_dict(mapped, strict=False)  # only the model's own names; the rest is in `problems`
    if problems:
        logger.warning("%s: %d tensors did not fit and keep their initialisation: %s", path, len(problems),
                       "; ".join(problems[:5]))
    logger.info("loaded %d tensors of the Detectron2 detector %s", len(mapped), path)
    return {"loaded": sorted(mapped), "ignored": problems}


def _backbone_keys(model: nn.Module) -> List[str]:
    modules, prefixes = backbone_modules(model), backbone_prefixes(model)
    return [f"{prefixes[stage]}.{k}" for stage, module in modules.items()
            for k in module.state_dict() if not k.endswith("num_batches_tracked")]


def load_weights(model: nn.Module, path: str, detector: bool = False) -> Dict[str, List[str]]:
    """Load MODEL.WEIGHTS: a backbone (.pkl / student_backbone.pth / ResNet .pth), a Detectron2
    detector or this engine's own detection checkpoint. `detector` (evaluation): the file must be
    a detector that fills the whole model."""
    if hasattr(model.backbone, "arch"):  # a timm backbone (seed_det.engines.tv.timm_fpn)
        from seed_det.engines.tv.timm_fpn import load_timm_weights
        return load_timm_weights(model, path, detector)
    kind, state = read_weights(path)
    if kind == "d2_detector":
        return load_d2_detector(model, state, path, complete=detector)
    if kind == "detection":
        return load_own_detector(model, state, path)
    if detector:
        raise backbone_only(path)
    return copy_backbone_weights(model, state, path)


def load_own_detector(model: nn.Module, state: Mapping[str, torch.Tensor], path: str) -> Dict[str, List[str]]:
    """This engine's detection checkpoint: it must fill `model` exactly."""
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(f"{path} is a torchvision-engine checkpoint of another model: missing "
                           f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}; "
                           "use the config it was trained with")
    logger.info("loaded the full detection model from %s", path)
    return {"loaded": sorted(state), "ignored": []}


def backbone_only(path: str) -> WeightsError:
    """Evaluation was asked of a file that holds no detection heads."""
    return WeightsError(f"{path} holds a backbone only: evaluating it would score random detection heads. "
                        "Fine-tune it first, then evaluate OUTPUT_DIR/model_final.pth.")
