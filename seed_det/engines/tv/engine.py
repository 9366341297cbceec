"""The portable detection engine: the same YAML configs, converted checkpoints and results format
as the Detectron2 engine, on Faster / Mask R-CNN from torchvision.models.detection.

`run(cfg, args)` is what `tools/train_net.py --engine torchvision` calls. args needs
`.config_file`; `.resume` and `.eval_only` are optional.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Dict

import torch
from fvcore.common.config import CfgNode

from seed_det.data.torch_dataset import DetectionDataset
from seed_det.results import record_run
from seed_det.engines.tv.checkpoint import last_checkpoint, load_checkpoint
from seed_det.engines.tv.checks import check_supported
from seed_det.data.catalog import register_from_config
from seed_det.engines.tv.datasets import load_checked, merge
from seed_det.engines.tv.evaluate import evaluate_dataset
from seed_det.engines.tv.model import build_model
from seed_det.engines.tv.trainer import Trainer
from seed_det.engines.tv.weights import load_weights

logger = logging.getLogger(__name__)

ENGINE = "torchvision"


def _device(cfg: CfgNode) -> torch.device:
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE is %s but CUDA is not available: running on CPU", cfg.MODEL.DEVICE)
        return torch.device("cpu")
    return torch.device(cfg.MODEL.DEVICE)


def _seed(cfg: CfgNode) -> int:
    seed = cfg.SEED if cfg.SEED >= 0 else int(time.time() * 1000) % (2 ** 31)
    torch.manual_seed(seed)
    logger.info("random seed %d", seed)
    return seed


class _RunLog:
    """OUTPUT_DIR/log.txt receives the seed_det log of this run (one log folder per run)."""

    def __init__(self, output_dir: str):
        self.handler = logging.FileHandler(os.path.join(output_dir, "log.txt"))
        self.handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s"))
        self.logger = logging.getLogger("seed_det")

    def __enter__(self):
        self.level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)
        self.handler.close()


def _evaluate_all(cfg, model, test_sets, device) -> Dict[str, float]:
    """Headline metrics are those of the first test set; others are kept as '<name>/<metric>'."""
    metrics: Dict[str, float] = {}
    for i, ds in enumerate(test_sets):
        result = evaluate_dataset(cfg, model, ds, device)
        if i == 0:
            metrics.update(result)
        else:
            metrics.update({f"{ds.spec.name}/{k}": v for k, v in result.items()})
    return metrics


def run(cfg: CfgNode, args) -> Dict[str, float]:
    """Train (unless args.eval_only) and evaluate; writes logs, checkpoints, metrics under OUTPUT_DIR."""
    cfg = cfg.clone()
    check_supported(cfg)  # before touching data or weights: a config error should come first
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with _RunLog(cfg.OUTPUT_DIR):
        with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
            f.write(cfg.dump())
        logger.info("torchvision engine, config %s, output %s", getattr(args, "config_file", ""), cfg.OUTPUT_DIR)
        register_from_config(cfg)
        test_sets = load_checked(cfg, cfg.DATASETS.TEST, "DATASETS.TEST")
        device = _device(cfg)
        seed = _seed(cfg)
        model = build_model(cfg)
        resume_from = last_checkpoint(cfg.OUTPUT_DIR) if getattr(args, "resume", False) else None

        if getattr(args, "eval_only", False):
            if resume_from:
                model.load_state_dict(load_checkpoint(resume_from)["model"])
            elif cfg.MODEL.WEIGHTS:
                load_weights(model, cfg.MODEL.WEIGHTS)
            else:
                logger.warning("--eval-only without MODEL.WEIGHTS evaluates a randomly initialised model")
            model.to(device)
        else:
            train_set = merge(load_checked(cfg, cfg.DATASETS.TRAIN, "DATASETS.TRAIN"))
            train_data = DetectionDataset(
                train_set, train=True, image_format=cfg.INPUT.FORMAT, with_masks=cfg.MODEL.MASK_ON,
                flip_prob=0.5 if cfg.INPUT.RANDOM_FLIP == "horizontal" else 0.0,
                filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
            if resume_from is None:
                if cfg.MODEL.WEIGHTS:
                    load_weights(model, cfg.MODEL.WEIGHTS)
                else:
                    logger.info("MODEL.WEIGHTS is empty: training from random initialisation")
            model.to(device)
            trainer = Trainer(cfg, model, train_data, device,
                              evaluate=lambda: _evaluate_all(cfg, model, test_sets, device))
            if resume_from:
                trainer.restore(load_checkpoint(resume_from))
            torch.manual_seed(seed)  # the same data augmentation whatever was loaded before
            trainer.train()

        metrics = _evaluate_all(cfg, model, test_sets, device)
        record_run(cfg.OUTPUT_DIR, getattr(args, "config_file", ""), cfg.MODEL.WEIGHTS, metrics,
                   csv_path=cfg.RESULTS_CSV or None, engine=ENGINE, eval_only=getattr(args, "eval_only", False),
                   dataset="+".join(cfg.DATASETS.TEST))
        return metrics
