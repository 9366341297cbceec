"""Public ViT and ConvNeXt checkpoint layouts, renamed into the timm models we build them as.

- DINO: the backbone-only release has timm's own ViT names; the full checkpoint keeps `teacher` and
  `student` networks whose keys carry `module.` / `backbone.` prefixes and a `head.*` projection to
  65,536 prototypes (not an embedding: dropped, the CLS token is the teacher's embedding).
- DINOv2 (torch.hub layout): timm's names plus `mask_token` (training only), `register_tokens`
  (timm: `reg_token`) and, for ViT-g, SwiGLU `mlp.w12` / `mlp.w3` (timm: `mlp.fc1` / `mlp.fc2`).
- ConvNeXt (facebookresearch/ConvNeXt): `downsample_layers.i`, `stages.i.j.{dwconv,pwconv1,pwconv2}`,
  the final `norm` (timm: `head.norm`), a classifier `head` (dropped).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Mapping

VIT_FORMATS = ("dino", "dinov2")


def dino_teacher(ckpt: Mapping) -> Mapping:
    """DINO's full checkpoint holds two networks: take the teacher, the one DINO evaluates (left
    alone, its `student` would be read as this project's own training checkpoint)."""
    if isinstance(ckpt.get("teacher"), Mapping) and isinstance(ckpt.get("student"), Mapping):
        if any("backbone." in k for k in ckpt["teacher"]):
            return ckpt["teacher"]
    return ckpt


def detect_layout(keys: list[str]) -> str | None:
    """dino / dinov2 / convnext from key names (prefixes `module.`, `backbone.` stripped), or None."""
    bare = {re.sub(r"^(module\.)?(backbone\.)?", "", k) for k in keys}
    if "downsample_layers.0.0.weight" in bare and any(k.startswith("stages.") for k in bare):
        return "convnext"
    if "cls_token" in bare and "patch_embed.proj.weight" in bare:
        dinov2 = {"mask_token", "register_tokens"} & bare or any(".ls1.gamma" in k for k in bare)
        return "dinov2" if dinov2 else "dino"
    return None


def to_timm(state: Mapping, fmt: str) -> dict:
    """Rename a dino / dinov2 / convnext backbone state (prefixes already stripped) to timm's names,
    dropping what is not part of the backbone."""
    out = {}
    for k, v in state.items():
        k = _RENAMERS[fmt](k)
        if k is not None:
            out[k] = v
    return out


def _dino(k: str) -> str | None:
    return None if k.startswith("head.") else k


def _dinov2(k: str) -> str | None:
    if k == "mask_token":
        return None
    if k == "register_tokens":
        return "reg_token"
    return k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")


def _convnext(k: str) -> str | None:
    if k.startswith("head."):
        return None  # the ImageNet classifier
    if k.startswith("norm."):
        return "head." + k
    m = re.match(r"downsample_layers\.(\d+)\.(\d+)\.(.*)", k)
    if m:
        stage, layer, rest = m.groups()
        return f"stem.{layer}.{rest}" if stage == "0" else f"stages.{stage}.downsample.{layer}.{rest}"
    m = re.match(r"stages\.(\d+)\.(\d+)\.(.*)", k)
    if m:
        stage, block, rest = m.groups()
        layer, dot, tail = rest.partition(".")
        layer = {"dwconv": "conv_dw", "pwconv1": "mlp.fc1", "pwconv2": "mlp.fc2"}.get(layer, layer)
        return f"stages.{stage}.blocks.{block}.{layer}{dot}{tail}"
    return k


_RENAMERS = {"dino": _dino, "dinov2": _dinov2, "convnext": _convnext}


def describe_keys(state: Mapping, shown: int = 8) -> str:
    """What a state dict holds, for an error about a layout we cannot read: its size, the most
    common key prefixes, a few keys."""
    tensors = [k for k in state if hasattr(state[k], "shape")]
    groups = Counter(".".join(k.split(".")[:2]) if k.split(".")[0] in ("module", "backbone") else k.split(".")[0]
                     for k in tensors)
    common = ", ".join(f"{g}.* ({n})" for g, n in groups.most_common(shown))
    sample = ", ".join(tensors[:4])
    return f"{len(tensors)} tensors; key groups: {common}; first keys: {sample}"
