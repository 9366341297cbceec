"""Checks every engine needs, run before any model is built: weights depth, dataset files.

Bad input fails here, with a message naming the key or path, instead of crashing late or training
the wrong thing silently.
"""
from __future__ import annotations

import logging
import os

from fvcore.common.config import CfgNode

from seed_core.errors import SeedError
from seed_det.convert import check_weights_depth, load_user_checkpoint
from seed_det.data.catalog import builtin_spec, check_present, config_specs, is_builtin

logger = logging.getLogger(__name__)


def _check_datasets(cfg: CfgNode, eval_only: bool) -> None:
    registered = {spec.name: spec for spec in config_specs(cfg)}
    names = ([] if eval_only else list(cfg.DATASETS.TRAIN)) + list(cfg.DATASETS.TEST)
    for name in names:
        if name in registered:
            check_present(name, registered[name])
        elif is_builtin(name):
            check_present(name, builtin_spec(name))
        # else: registered elsewhere (e.g. by the user's own code); the engine will complain


def preflight(cfg: CfgNode, eval_only: bool = False) -> None:
    """Fail fast on inputs that would otherwise crash late or train the wrong thing silently."""
    if cfg.MODEL.WEIGHTS and not eval_only:
        spec = check_weights_depth(cfg.MODEL.WEIGHTS, cfg.MODEL.RESNETS.DEPTH,
                                   cfg.MODEL.RESNETS.RES2_OUT_CHANNELS)
        logger.info("MODEL.WEIGHTS %s: ResNet-%d, fits the config", cfg.MODEL.WEIGHTS, spec.depth)
    elif eval_only and cfg.MODEL.WEIGHTS and not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise SeedError(f"--eval-only needs MODEL.WEIGHTS pointing to a trained model; "
                        f"{cfg.MODEL.WEIGHTS} does not exist.")
    if not eval_only and not cfg.DATASETS.TRAIN:
        raise SeedError("DATASETS.TRAIN is empty: name the dataset(s) to fine-tune on.")
    _check_datasets(cfg, eval_only)


def check_for_detectron2(cfg: CfgNode, eval_only: bool) -> None:
    """Inputs only the Detectron2 engine cannot take (the torchvision engine copes with both)."""
    if cfg.MODEL.DEVICE.startswith("cuda"):
        import torch  # imported here: the check is the only use

        if not torch.cuda.is_available():
            raise SeedError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE} but no CUDA device is available; "
                            "add `MODEL.DEVICE cpu` to run on the CPU (slow).")
    weights = cfg.MODEL.WEIGHTS
    if weights and not eval_only and not weights.endswith(".pkl"):
        # Detectron2 would load a torchvision-named .pth without matching a single name: refuse it.
        obj = load_user_checkpoint(weights)
        model = obj.get("model") if isinstance(obj, dict) else None
        if not (isinstance(model, dict) and any(k.startswith("backbone.") for k in model)):
            raise SeedError(f"MODEL.WEIGHTS {weights} is not a Detectron2 checkpoint. Convert it first: "
                            f"python tools/convert_to_d2.py {weights} {os.path.splitext(weights)[0]}.pkl")
