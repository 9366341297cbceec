"""timm networks as detection backbones (MobileNetV3, EfficientNet, any timm model with `features_only`),
engine-independent: config keys, the feature extractor both engines build, and its weights.

Config (declared in seed_det.config):
    MODEL.BACKBONE.NAME   "build_timm_fpn_backbone"
    MODEL.TIMM.ARCH       timm model name, e.g. "mobilenetv3_large_100", "efficientnet_b0"
    MODEL.TIMM.OUT_INDICES  timm feature levels fed to the FPN; level i has stride 2**(i+1), so
                          [1, 2, 3, 4] gives strides 4..32 (P2..P5, P6 max-pooled from P5)
    MODEL.TIMM.NORM       "SyncBN" (statistics of the global batch; plain BN in one process), "BN",
                          or "FrozenBN" (statistics and affine fixed to the pretrained values)
    MODEL.FPN.IN_FEATURES the levels by name: "stage{i}" for each i of OUT_INDICES

Names: the backbone keeps timm's own parameter names (`timm.create_model(arch, features_only=True)`
renames nothing for MobileNetV3 / EfficientNet), so a converted checkpoint holds
`backbone.bottom_up.<timm name>` and loads without name heuristics in Detectron2 and in the
torchvision engine (which keeps them under `backbone.body.`).
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Mapping, Sequence

import torch
from torch import nn

from seed_core.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

__all__ = ["TIMM_FPN_BACKBONE", "TIMM_NORMS", "D2_PREFIX", "ARCH_KEY", "is_timm_backbone", "is_timm_arch",
           "feature_names", "create_features", "adopt_features", "validate_timm_config", "timm_backbone_names",
           "read_timm_pkl", "match_report", "check_timm_weights", "refuse_timm_weights_for_resnet"]

TIMM_FPN_BACKBONE = "build_timm_fpn_backbone"
TIMM_NORMS = ("SyncBN", "BN", "FrozenBN")
D2_PREFIX = "backbone.bottom_up."  # where a Detectron2 FPN model keeps its bottom-up network
ARCH_KEY = "timm_arch"             # converted .pkl: the timm architecture its tensors belong to


def is_timm_backbone(cfg) -> bool:
    return cfg.MODEL.BACKBONE.NAME == TIMM_FPN_BACKBONE


def is_timm_arch(arch: str) -> bool:
    """True for a timm model name that is not a ResNet (ResNets go through the ResNet converter)."""
    a = arch.lower()
    if "resnet" in a or "resnext" in a:
        return False
    import timm

    return timm.is_model(arch)


# Both engines refuse it: torch's SyncBatchNorm (timm's SyncBatchNormAct) needs CUDA under several processes.
TIMM_SYNC_BN_ON_CPU = ("MODEL.TIMM.NORM SyncBN over several CPU processes: the timm backbone's SyncBatchNorm "
                       "needs CUDA. Set MODEL.TIMM.NORM BN (statistics per process) or train on GPUs.")


def feature_names(out_indices: Sequence[int]) -> List[str]:
    return [f"stage{int(i)}" for i in out_indices]


def create_features(arch: str, out_indices: Sequence[int] = (1, 2, 3, 4), norm: str = "BN",
                    sync: bool = True) -> nn.Module:
    """timm's feature extractor for `arch` (random init: weights are never downloaded) with the
    norm asked for. `sync`: turn BN into SyncBatchNorm for "SyncBN" (False where every process
    computes alone, e.g. one process, where SyncBN is plain BN)."""
    import timm

    if not timm.is_model(arch):
        raise ConfigError(f"MODEL.TIMM.ARCH '{arch}' is not a timm model name (see timm.list_models()).")
    try:
        net = timm.create_model(arch, pretrained=False, features_only=True, out_indices=tuple(out_indices))
    except (RuntimeError, ValueError, IndexError, AssertionError, TypeError) as err:
        raise ConfigError(f"timm cannot build '{arch}' as a feature extractor with out_indices "
                          f"{tuple(out_indices)}: {err}. Check MODEL.TIMM.ARCH / MODEL.TIMM.OUT_INDICES.") from err
    if norm == "FrozenBN":
        from timm.layers import freeze_batch_norm_2d

        net = freeze_batch_norm_2d(net)
    elif norm == "SyncBN" and sync:
        from timm.layers import convert_sync_batchnorm

        net = convert_sync_batchnorm(net)
    elif norm not in TIMM_NORMS:
        raise ConfigError(f"MODEL.TIMM.NORM '{norm}': use one of {TIMM_NORMS}.")
    return net


def adopt_features(owner: nn.Module, features: nn.Module) -> None:
    """Make `features`' submodules the direct children of `owner`, so that owner's state-dict
    names are timm's own (conv_stem.weight, blocks.0.0.conv_dw.weight, ...), and keep `features`
    to run them (it holds the same submodules, so moves, modes and loads reach it)."""
    if any(True for _ in features.parameters(recurse=False)) or any(True for _ in features.buffers(recurse=False)):
        raise ConfigError(f"{type(features).__name__} keeps tensors outside its submodules; this timm "
                          "family cannot be a detection backbone here.")
    for name, child in features.named_children():
        owner.add_module(name, child)
    object.__setattr__(owner, "_timm_features", features)  # not a registered submodule: no name prefix


def validate_timm_config(cfg, defaults) -> None:
    """Checks of a config naming a timm backbone, or of a ResNet config that sets MODEL.TIMM keys
    (keys no engine would read are refused). `defaults`: the schema's default config."""
    t = cfg.MODEL.TIMM
    if not is_timm_backbone(cfg):
        changed = [f"MODEL.TIMM.{k}" for k in t if t[k] != defaults.MODEL.TIMM[k]]
        if changed:
            raise ConfigError(f"{', '.join(changed)} set, but MODEL.BACKBONE.NAME is {cfg.MODEL.BACKBONE.NAME}: "
                              f"these keys are read only with MODEL.BACKBONE.NAME {TIMM_FPN_BACKBONE}.")
        return
    r, r0 = cfg.MODEL.RESNETS, defaults.MODEL.RESNETS
    changed = [f"MODEL.RESNETS.{k}" for k in r if k in r0 and r[k] != r0[k]]
    if changed:
        raise ConfigError(f"{', '.join(changed)} set, but a timm backbone ({TIMM_FPN_BACKBONE}) reads no "
                          "MODEL.RESNETS key: remove them (the timm network is MODEL.TIMM.ARCH).")
    if not t.ARCH:
        raise ConfigError(f"MODEL.BACKBONE.NAME {TIMM_FPN_BACKBONE} needs MODEL.TIMM.ARCH, a timm model name "
                          "such as mobilenetv3_large_100 or efficientnet_b0.")
    if t.NORM not in TIMM_NORMS:
        raise ConfigError(f"MODEL.TIMM.NORM '{t.NORM}': use one of {TIMM_NORMS} (GN cannot hold the BatchNorm "
                          "weights of a timm student).")
    indices = [int(i) for i in t.OUT_INDICES]
    if not indices or indices != sorted(set(indices)) or indices[0] < 0:
        raise ConfigError(f"MODEL.TIMM.OUT_INDICES {list(t.OUT_INDICES)}: give increasing timm feature levels, "
                          "e.g. [1, 2, 3, 4] (strides 4..32).")
    if list(cfg.MODEL.FPN.IN_FEATURES) != feature_names(indices):
        raise ConfigError(f"MODEL.FPN.IN_FEATURES {list(cfg.MODEL.FPN.IN_FEATURES)} must name the timm levels "
                          f"of MODEL.TIMM.OUT_INDICES: {feature_names(indices)}.")
    if cfg.MODEL.BACKBONE.FREEZE_AT != 0:
        raise ConfigError(f"MODEL.BACKBONE.FREEZE_AT {cfg.MODEL.BACKBONE.FREEZE_AT}: a timm backbone trains "
                          "every layer (FREEZE_AT 0); fixed BN statistics are MODEL.TIMM.NORM FrozenBN.")


_NAME_CACHE: Dict[str, Dict[str, tuple]] = {}


def timm_backbone_names(arch: str, out_indices: Sequence[int] = None) -> Dict[str, tuple]:
    """timm name -> shape of every tensor of the feature extractor of `arch` (BN counters
    excluded): what a converted checkpoint must provide. Cached per (arch, out_indices)."""
    key = f"{arch}|{tuple(out_indices) if out_indices is not None else 'all'}"
    if key not in _NAME_CACHE:
        import timm

        kwargs = {} if out_indices is None else {"out_indices": tuple(out_indices)}
        with torch.device("meta"):  # shapes only: nothing is allocated or initialised
            net = timm.create_model(arch, pretrained=False, features_only=True, **kwargs)
        _NAME_CACHE[key] = {k: tuple(v.shape) for k, v in net.state_dict().items()
                            if not k.endswith("num_batches_tracked")}
    return dict(_NAME_CACHE[key])


def read_timm_pkl(path: str) -> tuple[Dict[str, object], str]:
    """(the backbone tensors under their timm names, the architecture recorded at conversion or "")."""
    from seed_det.convert import read_d2_pkl

    data = read_d2_pkl(path)
    model = data["model"]
    state = {k[len(D2_PREFIX):]: v for k, v in model.items() if k.startswith(D2_PREFIX)}
    return state, str(data.get(ARCH_KEY, ""))


def check_timm_weights(path: str, arch: str, out_indices: Sequence[int]) -> Dict[str, int]:
    """Refuse, before training, MODEL.WEIGHTS that do not fill the timm backbone the config builds
    (another architecture, a ResNet, a file that is not converted); returns matched/total."""
    from seed_det.convert import require_local_weights
    require_local_weights(path)
    if not path.endswith(".pkl"):
        raise CheckpointError(f"MODEL.WEIGHTS {path}: a timm backbone loads a converted .pkl; convert it: "
                              f"python tools/convert_to_d2.py {path} {os.path.splitext(path)[0]}.pkl")
    state, file_arch = read_timm_pkl(path)
    if file_arch and file_arch != arch:
        raise CheckpointError(f"MODEL.WEIGHTS {path} holds a converted {file_arch} student but the config builds "
                              f"{arch} (MODEL.TIMM.ARCH). Use the {file_arch} config or {arch} weights.")
    if not state:
        from seed_det.convert import infer_d2_spec, read_d2_pkl

        try:
            what = f"a ResNet-{infer_d2_spec(read_d2_pkl(path)['model'], path).depth}"
        except CheckpointError:
            what = "no converted timm student"
        raise CheckpointError(f"MODEL.WEIGHTS {path} holds {what} but the config builds {arch} (MODEL.TIMM.ARCH): "
                              f"it has no {D2_PREFIX}* tensors to fill that backbone. Use the matching config, "
                              f"or convert the {arch} student.")
    return match_report(state, timm_backbone_names(arch, out_indices), f"MODEL.WEIGHTS {path}", arch)


def match_report(state: Mapping[str, object], expected: Mapping[str, tuple], source: str, arch: str) -> Dict[str, int]:
    """matched/total of the backbone's tensors in `state`; raises on any missing or misshapen one."""
    missing = sorted(k for k in expected if k not in state)
    wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k]))
    if missing or wrong:
        details = [f"{k}: missing" for k in missing[:4]] + [
            f"{k}: shape {tuple(state[k].shape)}, {arch} needs {tuple(expected[k])}" for k in wrong[:4]]
        raise CheckpointError(f"{source} does not fit the {arch} backbone of the config: {len(missing)} of "
                              f"{len(expected)} tensors missing, {len(wrong)} of another shape ({'; '.join(details)}). "
                              f"Is it a {arch} student? Check MODEL.TIMM.ARCH.")
    surplus = sorted(k for k in state if k not in expected and not k.endswith("num_batches_tracked"))
    return {"matched": len(expected), "total": len(expected), "unused": len(surplus)}


def refuse_timm_weights_for_resnet(path: str, depth: int) -> None:
    """A converted timm student given to a ResNet config: refused naming both."""
    if not (path.endswith(".pkl") and os.path.isfile(path)):
        return
    state, arch = read_timm_pkl(path)
    if arch or any(not k.startswith(("stem.", "res2.", "res3.", "res4.", "res5.")) for k in state):
        raise CheckpointError(f"MODEL.WEIGHTS {path} holds a converted {arch or 'timm'} student but the config builds "
                              f"ResNet-{depth} (MODEL.BACKBONE.NAME ResNet). Use a config with MODEL.BACKBONE.NAME "
                              f"{TIMM_FPN_BACKBONE} and MODEL.TIMM.ARCH {arch or '<its timm name>'}.")
