"""Convert a distilled timm student (student_backbone.pth + meta.json naming the architecture) to a
Detectron2 `.pkl` that both engines load with every backbone tensor matched.

Output: `{"model": {"backbone.bottom_up.<timm name>": numpy array}, "__author__": "SEED",
"matching_heuristics": False, "timm_arch": <arch>}`. The names are those of timm's feature extractor
(`features_only=True`): the model's own for MobileNetV3 / EfficientNet; families timm wraps in a
FeatureListNet (ConvNeXt, GhostNet, ...) have nested stages flattened ("stages.0" ->
"stages_0"), which the conversion follows. The student's pooled head (MobileNetV3 `conv_head`,
EfficientNet `conv_head` + `bn2`), which no detector runs, and BatchNorm counters are dropped.
Values are copied bit for bit. Without heuristics Detectron2 loads exactly these names.
"""
from __future__ import annotations

import logging
import os
import pickle
from typing import Dict, Mapping

import numpy as np
import torch

from seed_core.checkpoint_io import atomic_write, unwrap_state_dict
from seed_core.errors import CheckpointError
from seed_det.convert import to_numpy
from seed_det.timm_backbone import ARCH_KEY, D2_PREFIX, match_report, timm_backbone_names

logger = logging.getLogger(__name__)

__all__ = ["timm_student_state", "timm_to_d2_state", "write_timm_pkl", "convert_timm_student"]

# Prefixes under which a checkpoint may hold the student's backbone (distillation checkpoint, DDP).
_PREFIXES = ("module.backbone.", "backbone.", "module.", "")


def timm_student_state(obj, arch: str, source: str) -> Dict[str, torch.Tensor]:
    """The timm-named backbone tensors of `arch` in a checkpoint: a student_backbone.pth (plain
    names) or a distillation checkpoint ("student": backbone.* + head.*)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict checkpoint, got {type(obj).__name__}.")
    sd, _ = unwrap_state_dict(obj)
    expected = timm_backbone_names(arch)
    for prefix in _PREFIXES:
        state = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if any(_plain_name(k, state, shape) for k, shape in expected.items()):
            break
    else:
        sample = ", ".join(list(sd)[:5])
        raise CheckpointError(f"{source}: no {arch} tensors found (keys start: {sample}). meta.json says the "
                              f"student is {arch}; the checkpoint and its meta.json do not belong together.")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: {bad[0]} is a {type(state[bad[0]]).__name__}, not a tensor.")
    state = _feature_names(state, expected)
    report = match_report(state, expected, source, arch)
    dropped = sorted(k for k in state if k not in expected and not k.endswith("num_batches_tracked"))
    if dropped:
        logger.info("%s: %d tensors no detector runs are dropped (%s%s)", source, len(dropped),
                    ", ".join(dropped[:4]), " ..." if len(dropped) > 4 else "")
    logger.info("%s: %s backbone, matched %d/%d tensors", source, arch, report["matched"], report["total"])
    return {k: state[k] for k in expected}


def _plain_name(feature_name: str, plain: Mapping[str, torch.Tensor], shape: tuple) -> str | None:
    """The full model's name of a feature-extractor tensor. Most families keep names; those timm
    wraps in a FeatureListNet flatten nested stages into one level ("stages.0" -> "stages_0"), so
    some underscores of the first name part were dots. The candidate of the same shape is taken."""
    if feature_name in plain:
        return feature_name
    head, _, rest = feature_name.partition(".")
    gaps = [i for i, c in enumerate(head) if c == "_"]
    for mask in range(1, 2 ** len(gaps)):
        chars = list(head)
        for bit, i in enumerate(gaps):
            if mask >> bit & 1:
                chars[i] = "."
        candidate = "".join(chars) + ("." + rest if rest else "")
        if candidate in plain and tuple(getattr(plain[candidate], "shape", ())) == tuple(shape):
            return candidate
    return None


def _feature_names(state: Dict[str, torch.Tensor], expected: Mapping[str, tuple]) -> Dict[str, torch.Tensor]:
    """`state` (the student's names) with each tensor the feature extractor needs under its name there."""
    out = dict(state)
    for name, shape in expected.items():
        if name not in out:
            source = _plain_name(name, state, shape)
            if source is not None:
                out[name] = out.pop(source)
    return out


def timm_to_d2_state(state: Mapping[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """timm names -> `backbone.bottom_up.<timm name>`, values as numpy arrays, copied exactly."""
    return {D2_PREFIX + k: to_numpy(v) for k, v in state.items()}


def write_timm_pkl(model: Mapping[str, np.ndarray], arch: str, out_path: str | os.PathLike) -> None:
    """Write the converted checkpoint atomically; names are exact, so no matching heuristics."""
    payload = {"model": dict(model), "__author__": "SEED", "matching_heuristics": False, ARCH_KEY: arch}
    atomic_write(os.fspath(out_path), "wb", lambda f: pickle.dump(payload, f, protocol=4))


def convert_timm_student(in_path: str, out_path: str, arch: str, obj) -> dict:
    """Convert a loaded checkpoint `obj` of the timm student `arch`; returns the summary."""
    state = timm_student_state(obj, arch, in_path)
    model = timm_to_d2_state(state)
    write_timm_pkl(model, arch, out_path)
    logger.info("converted %s (%s) -> %s (%d tensors)", in_path, arch, out_path, len(model))
    return {"input": in_path, "output": out_path, "source": "seed-distill", "arch": arch,
            "num_tensors": len(model), "matched": len(model), "total": len(model),
            "config_overrides": f"MODEL.BACKBONE.NAME build_timm_fpn_backbone MODEL.TIMM.ARCH {arch}"}
