"""Load an exported student backbone (student_backbone.pth + meta.json) or a random-init baseline.

An export is a directory holding a plain torchvision-style state dict (no `fc`, no `module.`) and a
meta.json naming its architecture. Users may point at the directory, at the .pth (meta.json beside
it), or at a .pth plus an explicit architecture.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..constants import BACKBONE_FILE, META_FILE
from ..checkpoint_io import key_mismatch_report, load_untrusted, state_dict_checksum
from ..encoders import available_backbones, build_backbone

logger = logging.getLogger(__name__)

# How many key names an error message lists before summarising the rest.
_MAX_KEYS_SHOWN = 8


@dataclass
class LoadedBackbone:
    model: nn.Module
    arch: str
    feature_dim: int
    source: str  # path of the weights, or "random-init(seed=N)"
    checksum: str  # sha256 over the parameters and buffers: identifies the weights for caching


def _format_keys(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    more = len(keys) - _MAX_KEYS_SHOWN
    return shown + (f" ... and {more} more" if more > 0 else "")


def _resolve_paths(path: Path) -> tuple[Path, Path]:
    """Return (weights .pth, meta.json location) for a directory or a .pth path."""
    if path.is_dir():
        weights = path / BACKBONE_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{path} is a directory without {BACKBONE_FILE}. Point --backbone at an "
                                    f"exported backbone directory or directly at a .pth state dict.")
        return weights, path / META_FILE
    if path.is_file():
        return path, path.parent / META_FILE
    raise FileNotFoundError(f"backbone {path} does not exist: pass an export directory or a .pth file.")


def _read_meta(meta_path: Path) -> dict:
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path} is not valid JSON ({e}); fix it or pass --arch explicitly.") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} must hold a JSON object with an 'arch' entry.")
    return meta


def _resolve_arch(arch: str | None, meta_path: Path) -> tuple[str, dict]:
    meta = _read_meta(meta_path) if meta_path.is_file() else {}
    meta_arch = meta.get("arch")
    if arch and meta_arch and arch != meta_arch:
        raise ValueError(f"--arch {arch} contradicts {meta_path} (arch={meta_arch!r}); drop --arch or fix meta.json.")
    if arch:
        return arch, meta
    if meta_arch:
        return str(meta_arch), meta
    where = f"{meta_path} has no 'arch' entry" if meta_path.is_file() else f"no {META_FILE} found at {meta_path}"
    raise ValueError(f"cannot tell the backbone architecture: {where}. Pass --arch (one of {available_backbones()}).")


def _load_state_dict(weights: Path) -> dict:
    state = load_untrusted(str(weights))  # weights_only: a checkpoint is a pickle
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{weights} does not hold a plain state dict of tensors (name -> tensor); "
                         f"export the student backbone with the training tools first.")
    if any(k.startswith("module.") for k in state):
        raise ValueError(f"{weights} has keys with a 'module.' prefix (a DistributedDataParallel wrapper): "
                         f"strip the prefix or re-export the backbone.")
    # A classifier head is not part of a backbone; ignoring it lets torchvision checkpoints load too.
    head = [k for k in state if k.startswith("fc.")]
    if head:
        logger.info("ignoring classifier keys in %s: %s", weights, _format_keys(head))
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    return state


def _check_keys(model: nn.Module, state: dict, weights: Path, arch: str) -> None:
    problems = key_mismatch_report(model.state_dict(), state, max_shown=_MAX_KEYS_SHOWN)
    if problems:
        raise ValueError(f"{weights} does not match architecture '{arch}': " + " | ".join(problems)
                         + ". Check the arch in meta.json / --arch.")


def load_backbone(path: str | Path | None = None, arch: str | None = None,
                  random_init: bool = False, seed: int = 0) -> LoadedBackbone:
    """Build the backbone named by the export (or `arch`), load its weights and put it in eval mode.

    With `random_init=True` no weights are read: the network keeps its initialisation drawn with
    `seed`, the random-network baseline every self-supervised table starts from.
    """
    if random_init:
        if path is not None:
            raise ValueError("--random-init builds an untrained network: do not also pass --backbone.")
        if not arch:
            raise ValueError("--random-init needs --arch (e.g. --arch resnet18).")
        # Fork the RNG so building the baseline leaves the caller's random stream untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, dim = build_backbone(arch)
        source = f"random-init(seed={seed})"
    else:
        if path is None:
            raise ValueError("pass --backbone (export directory or .pth), or --arch with --random-init.")
        weights, meta_path = _resolve_paths(Path(path))
        arch, meta = _resolve_arch(arch, meta_path)
        model, dim = build_backbone(arch)
        state = _load_state_dict(weights)
        _check_keys(model, state, weights, arch)
        model.load_state_dict(state, strict=False)  # strictness already checked, with clearer messages
        if "feature_dim" in meta and int(meta["feature_dim"]) != dim:
            raise ValueError(f"{meta_path} says feature_dim={meta['feature_dim']} but {arch} produces {dim}; "
                             f"the meta.json does not describe these weights.")
        source = str(weights)
    model.eval()
    checksum = state_dict_checksum(model)
    logger.info("backbone %s from %s (feature dim %d, sha256 %s)", arch, source, dim, checksum[:12])
    return LoadedBackbone(model=model, arch=arch, feature_dim=dim, source=source, checksum=checksum)
