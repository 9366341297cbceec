"""Checks every engine needs, run before any model is built: weights (depth; a trained detector for
--eval-only), solver, results file, datasets (files present, every record valid; the one scan of the
training images' headers, whose findings the engines use).

Bad input fails here, with a message naming the key or path, instead of crashing late or training
the wrong thing silently.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Optional

from fvcore.common.config import CfgNode

from seed_core.constants import LAST_CHECKPOINT_FILE
from seed_core.errors import ConfigError, SeedError
from seed_core.results import check_results_file
from seed_det.convert import check_weights_depth, read_weights_file
from seed_det.data.catalog import builtin_spec, check_present, config_specs, is_builtin, validate_dataset
from seed_det.results import KIND, default_csv_path
from seed_det.timm_backbone import (TIMM_SYNC_BN_ON_CPU, check_timm_weights, is_timm_backbone,
                                    refuse_timm_weights_for_resnet)

logger = logging.getLogger(__name__)


def _check_datasets(cfg: CfgNode, eval_only: bool) -> Optional[Dict[str, str]]:
    """Files present, then every record validated (both engines read the same, valid data). Returns
    the training images that do not open ({file name: why}; None when a training set is not ours to
    check), so that the engine leaves them out without reading their headers again."""
    registered = {spec.name: spec for spec in config_specs(cfg)}
    train = [] if eval_only else list(cfg.DATASETS.TRAIN)
    unreadable: Optional[Dict[str, str]] = {}
    for name in train + list(cfg.DATASETS.TEST):
        spec = registered.get(name) or (builtin_spec(name) if is_builtin(name) else None)
        if spec is None:
            if name in train:
                unreadable = None  # its images are the engine's to scan
            continue  # registered elsewhere (e.g. by the user's own code); the engine will complain
        check_present(name, spec)
        validate_dataset(spec, for_training=name in train, for_testing=name in cfg.DATASETS.TEST,
                         filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
                         max_bad_fraction=cfg.DATALOADER.MAX_BAD_FRACTION, num_workers=cfg.DATALOADER.NUM_WORKERS,
                         unreadable=unreadable)
    return unreadable


def _check_eval_weights(cfg: CfgNode, resume: bool) -> None:
    """--eval-only must evaluate a trained detector, never random heads on a converted backbone."""
    weights = cfg.MODEL.WEIGHTS
    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, LAST_CHECKPOINT_FILE)):
        return  # the engine evaluates OUTPUT_DIR's last checkpoint
    if not weights:
        raise SeedError("--eval-only needs MODEL.WEIGHTS: the model_final.pth of a fine-tuning run "
                        "(e.g. MODEL.WEIGHTS output/voc_r18_seed/model_final.pth); without it random "
                        "detection heads would be evaluated.")
    if not os.path.isfile(weights):
        raise SeedError(f"--eval-only needs MODEL.WEIGHTS pointing to a trained model; "
                        f"{weights} does not exist.")
    if not read_weights_file(weights).is_detector:
        raise SeedError(f"--eval-only: MODEL.WEIGHTS {weights} holds a backbone only (no detection heads), "
                        "so its evaluation would score random heads. Fine-tune it first (run without "
                        "--eval-only), then evaluate OUTPUT_DIR/model_final.pth.")


def _check_solver(cfg: CfgNode) -> None:
    if cfg.SOLVER.IMS_PER_BATCH < 1:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH is {cfg.SOLVER.IMS_PER_BATCH}: it is the number of images per "
                          "training step over all GPUs; use 1 or more (the protocol uses 16).")


def preflight(cfg: CfgNode, eval_only: bool = False, resume: bool = False) -> Optional[Dict[str, str]]:
    """Fail fast on inputs that would otherwise crash late or train the wrong thing silently. Returns
    the training images whose header does not open ({file name: why}; None: not all checked here),
    for RunOptions.unreadable_training_images: the engines skip them without a second scan."""
    check_results_file(cfg.RESULTS_CSV or default_csv_path(cfg.OUTPUT_DIR), KIND)
    if eval_only:
        _check_eval_weights(cfg, resume)
    else:
        _check_solver(cfg)
        if cfg.MODEL.WEIGHTS and is_timm_backbone(cfg):
            t = cfg.MODEL.TIMM
            report = check_timm_weights(cfg.MODEL.WEIGHTS, t.ARCH, t.OUT_INDICES)
            logger.info("MODEL.WEIGHTS %s: %s, matched %d/%d backbone tensors", cfg.MODEL.WEIGHTS, t.ARCH,
                        report["matched"], report["total"])
        elif cfg.MODEL.WEIGHTS:
            refuse_timm_weights_for_resnet(cfg.MODEL.WEIGHTS, cfg.MODEL.RESNETS.DEPTH)
            spec = check_weights_depth(cfg.MODEL.WEIGHTS, cfg.MODEL.RESNETS.DEPTH,
                                       cfg.MODEL.RESNETS.RES2_OUT_CHANNELS)
            logger.info("MODEL.WEIGHTS %s: ResNet-%d, fits the config", cfg.MODEL.WEIGHTS, spec.depth)
    if not eval_only and not cfg.DATASETS.TRAIN:
        raise SeedError("DATASETS.TRAIN is empty: name the dataset(s) to fine-tune on.")
    return _check_datasets(cfg, eval_only)


def _check_d2_processes(cfg: CfgNode, world_size: int, training: bool) -> None:
    """Several CPU processes that Detectron2's launcher would start and then fail."""
    import torch  # imported here: the checks are the only use

    if torch.cuda.is_available():
        raise SeedError(f"MODEL.DEVICE {cfg.MODEL.DEVICE} with {world_size} processes on a machine with CUDA: "
                        "Detectron2's launcher then joins the processes with NCCL, which cannot carry CPU "
                        "tensors. Train on the GPUs (MODEL.DEVICE cuda), or hide them (CUDA_VISIBLE_DEVICES= "
                        "python tools/train_net.py ...) to run CPU processes over gloo.")
    if training and is_timm_backbone(cfg) and cfg.MODEL.TIMM.NORM == "SyncBN":
        raise ConfigError(TIMM_SYNC_BN_ON_CPU)


def check_for_detectron2(cfg: CfgNode, eval_only: bool, world_size: int = 1) -> None:
    """Inputs only the Detectron2 engine cannot take (the torchvision engine copes with both);
    `world_size`: the processes its launcher will start (--num-gpus x --num-machines)."""
    if cfg.MODEL.DEVICE.startswith("cuda"):
        import torch  # imported here: the check is the only use

        if not torch.cuda.is_available():
            raise SeedError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE} but no CUDA device is available; "
                            "add `MODEL.DEVICE cpu` to run on the CPU (slow).")
    from seed_det.engines.tv.checks import check_run  # the batch split and AMP rules are the engines' same

    on_cuda = cfg.MODEL.DEVICE.startswith("cuda")
    check_run(cfg, world_size, "cuda" if on_cuda else "cpu", training=not eval_only)
    if world_size > 1 and not on_cuda:
        _check_d2_processes(cfg, world_size, training=not eval_only)
    weights = cfg.MODEL.WEIGHTS
    if weights and not eval_only and not weights.endswith(".pkl"):
        # Detectron2 would load torchvision names without matching a single one: refuse them.
        kind = read_weights_file(weights).kind
        if kind == "tv_detector":
            raise SeedError(f"MODEL.WEIGHTS {weights} is a checkpoint of the torchvision engine, whose names "
                            "Detectron2 does not read. Fine-tune from it with --engine torchvision, or start "
                            "from the converted backbone (.pkl).")
        if kind == "backbone":
            raise SeedError(f"MODEL.WEIGHTS {weights} is not a Detectron2 checkpoint. Convert it first: "
                            f"python tools/convert_to_d2.py {weights} {os.path.splitext(weights)[0]}.pkl")
