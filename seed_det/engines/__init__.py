"""Engine dispatch for tools/train_net.py: Detectron2 when installed, else the torchvision engine.

Both engines read the same YAML, take the same converted `.pkl`, and end the same way: each calls
`seed_det.results.record_run` (metrics.json + one results-CSV row) in its main process. Checks that need no
engine (config, weights depth, dataset folders) run here first, so bad input fails before any
model is built.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import re

from fvcore.common.config import CfgNode

from seed_det import SeedDetError
from seed_det.config import load_det_config
from seed_det.convert import check_weights_depth, load_user_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["ENGINES", "EngineUnavailable", "detectron2_available", "resolve_engine", "preflight",
           "builtin_dataset_paths", "main"]

ENGINES = ("auto", "detectron2", "torchvision")
DATASETS_ENV = "DETECTRON2_DATASETS"

INSTALL_D2 = ("Detectron2 is not installed. Install it from source (it has no release on PyPI): "
              "`pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'` "
              "(see https://detectron2.readthedocs.io/en/latest/tutorials/install.html), "
              "or run the portable engine with `--engine torchvision`.")


class EngineUnavailable(SeedDetError):
    """The requested engine cannot run in this environment."""


def detectron2_available() -> bool:
    return importlib.util.find_spec("detectron2") is not None


def resolve_engine(name: str) -> str:
    if name not in ENGINES:
        raise EngineUnavailable(f"unknown engine '{name}'; choose one of {ENGINES}.")
    if name == "auto":
        return "detectron2" if detectron2_available() else "torchvision"
    if name == "detectron2" and not detectron2_available():
        raise EngineUnavailable(INSTALL_D2)
    return name


# ----------------------------------------------------------------------------------------------
# Pre-flight checks (engine independent)
# ----------------------------------------------------------------------------------------------

def datasets_root() -> str:
    return os.path.expanduser(os.environ.get(DATASETS_ENV, "datasets"))


def builtin_dataset_paths(name: str, root: str) -> list[str] | None:
    """Files/folders a Detectron2 builtin VOC/COCO dataset needs under `root`; None if not builtin.

    Layout as Detectron2 expects it: root/VOC2007, root/VOC2012, root/coco/{train2017,val2017,annotations}.
    """
    m = re.fullmatch(r"voc_(2007|2012)_(train|val|trainval|test)", name)
    if m:
        voc = os.path.join(root, f"VOC{m.group(1)}")
        return [os.path.join(voc, "JPEGImages"), os.path.join(voc, "Annotations"),
                os.path.join(voc, "ImageSets", "Main", f"{m.group(2)}.txt")]
    m = re.fullmatch(r"coco_(2014|2017)_(train|val)", name)
    if m:
        split = f"{m.group(2)}{m.group(1)}"
        return [os.path.join(root, "coco", split),
                os.path.join(root, "coco", "annotations", f"instances_{split}.json")]
    return None


def _check_datasets(cfg: CfgNode, eval_only: bool) -> None:
    registered = {}
    for name, json_file, image_root in cfg.DATASETS.COCO_JSON:
        registered[name] = [json_file, image_root]
    for name, dirname, split, _year in cfg.DATASETS.VOC:
        registered[name] = [os.path.join(dirname, "ImageSets", "Main", f"{split}.txt"),
                            os.path.join(dirname, "Annotations"), os.path.join(dirname, "JPEGImages")]
    names = ([] if eval_only else list(cfg.DATASETS.TRAIN)) + list(cfg.DATASETS.TEST)
    root = datasets_root()
    for name in names:
        if name in registered:
            missing = [p for p in registered[name] if not os.path.exists(p)]
            if missing:
                raise SeedDetError(f"dataset '{name}' (registered in DATASETS.COCO_JSON/VOC) is missing "
                                   f"{missing}; fix the paths in the config.")
            continue
        needed = builtin_dataset_paths(name, root)
        if needed is None:
            continue  # registered elsewhere (e.g. by the user's own code); the engine will complain
        missing = [p for p in needed if not os.path.exists(p)]
        if missing:
            raise SeedDetError(
                f"dataset '{name}' not found: missing {missing[0]}. Builtin VOC/COCO datasets are read "
                f"from ${DATASETS_ENV} (now '{root}'); set {DATASETS_ENV} to the folder holding "
                "VOC2007/, VOC2012/ and coco/ (see the README), or register your own data with "
                "DATASETS.COCO_JSON / DATASETS.VOC.")


def preflight(cfg: CfgNode, eval_only: bool = False) -> None:
    """Fail fast on inputs that would otherwise crash late or train the wrong thing silently."""
    if cfg.MODEL.WEIGHTS and not eval_only:
        spec = check_weights_depth(cfg.MODEL.WEIGHTS, cfg.MODEL.RESNETS.DEPTH,
                                   cfg.MODEL.RESNETS.RES2_OUT_CHANNELS)
        logger.info("MODEL.WEIGHTS %s: ResNet-%d, fits the config", cfg.MODEL.WEIGHTS, spec.depth)
    elif eval_only and cfg.MODEL.WEIGHTS and not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise SeedDetError(f"--eval-only needs MODEL.WEIGHTS pointing to a trained model; "
                           f"{cfg.MODEL.WEIGHTS} does not exist.")
    if not eval_only and not cfg.DATASETS.TRAIN:
        raise SeedDetError("DATASETS.TRAIN is empty: name the dataset(s) to fine-tune on.")
    _check_datasets(cfg, eval_only)


def _check_for_detectron2(cfg: CfgNode, eval_only: bool) -> None:
    """Inputs only the Detectron2 engine cannot take (the torchvision engine copes with both)."""
    if cfg.MODEL.DEVICE.startswith("cuda"):
        import torch  # imported here: the check is the only use

        if not torch.cuda.is_available():
            raise SeedDetError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE} but no CUDA device is available; "
                               "add `MODEL.DEVICE cpu` to run on the CPU (slow).")
    weights = cfg.MODEL.WEIGHTS
    if weights and not eval_only and not weights.endswith(".pkl"):
        # Detectron2 would load a torchvision-named .pth without matching a single name: refuse it.
        obj = load_user_checkpoint(weights)
        model = obj.get("model") if isinstance(obj, dict) else None
        if not (isinstance(model, dict) and any(k.startswith("backbone.") for k in model)):
            raise SeedDetError(f"MODEL.WEIGHTS {weights} is not a Detectron2 checkpoint. Convert it first: "
                               f"python tools/convert_to_d2.py {weights} {os.path.splitext(weights)[0]}.pkl")


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

def main(args: argparse.Namespace) -> dict | None:
    """Run tools/train_net.py's arguments on the chosen engine; returns the metrics (main process)."""
    engine = resolve_engine(getattr(args, "engine", "auto"))
    cfg = load_det_config(args.config_file, args.opts)
    preflight(cfg, eval_only=args.eval_only)
    logger.info("engine: %s", engine)
    if engine == "detectron2":
        _check_for_detectron2(cfg, args.eval_only)
        from seed_det.d2.engine import launch_from_args  # Detectron2 imports stay behind this line

        return launch_from_args(args)

    from seed_det.engines.torchvision_engine import run  # lazy: pulls in the detection models

    return run(cfg, args)  # records metrics.json and the results row itself
