"""The portable detection engine: the same YAML configs, converted checkpoints and results format
as the Detectron2 engine, on Faster / Mask R-CNN from torchvision.models.detection.

`run(cfg, options)` is what `tools/train_net.py --engine torchvision` calls, with the launch options
of seed_det.engines.RunOptions (Detectron2's launch flags, same meaning; on CPU --num-gpus N starts N
processes). Under torchrun the processes torchrun started form the run.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Dict, Optional

import torch
from fvcore.common.config import CfgNode

from seed_core.constants import CONFIG_FILE, LOG_FILE
from seed_core.distributed import (DistContext, broadcast_from_main, launch, launched_by_torchrun,
                                   requested_world_size)
from seed_core.run_dir import RunLog
from seed_core.worker_errors import plain_process_errors, plain_worker_errors
from seed_det import RUN_LOGGERS
from seed_det.data.catalog import register_from_config
from seed_det.data.torch_dataset import DetectionDataset
from seed_det.engines.options import RunOptions
from seed_det.engines.tv.checkpoint import last_checkpoint, load_checkpoint
from seed_det.engines.tv.checks import check_run, check_supported, mask_format_note
from seed_det.engines.tv.datasets import load_checked, merge
from seed_det.engines.tv.evaluate import evaluate_dataset
from seed_det.engines.tv.model import build_model
from seed_det.engines.tv.trainer import Trainer
from seed_det.engines.tv.weights import load_weights
from seed_det.results import metrics_file, record_run

logger = logging.getLogger(__name__)

ENGINE = "torchvision"


def _device(cfg: CfgNode) -> torch.device:
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE is %s but CUDA is not available: running on CPU", cfg.MODEL.DEVICE)
        return torch.device("cpu")
    return torch.device(cfg.MODEL.DEVICE)


def _seed(cfg: CfgNode) -> int:
    """SEED, or (SEED < 0) one drawn by the main process: every process uses the same."""
    seed = broadcast_from_main(cfg.SEED if cfg.SEED >= 0 else int(time.time() * 1000) % (2 ** 31))
    torch.manual_seed(seed)
    logger.info("random seed %d", seed)
    return seed


def _evaluate_all(cfg, model, test_sets, device) -> Dict[str, float]:
    """Headline metrics are those of the first test set; others are kept as '<name>/<metric>'.
    Every process evaluates its shard; the metrics exist on the main process only (empty elsewhere)."""
    metrics: Dict[str, float] = {}
    for i, ds in enumerate(test_sets):
        result = evaluate_dataset(cfg, model, ds, device)
        if result is None:
            continue
        if i == 0:
            metrics.update(result)
        else:
            metrics.update({f"{ds.spec.name}/{k}": v for k, v in result.items()})
    return metrics


def _run_process(ctx: DistContext, cfg: CfgNode, options: RunOptions,
                 device: torch.device) -> Optional[Dict[str, float]]:
    """One process of the run (the only one, or one of several): train, evaluate, record."""
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    # A SeedError of a DataLoader worker reaches the user as its own message, with the log for details;
    # any other error of one of several processes as one line naming its rank (traceback in the log).
    log = os.path.join(cfg.OUTPUT_DIR, LOG_FILE)
    with RunLog(cfg.OUTPUT_DIR, RUN_LOGGERS, enabled=ctx.is_main, quiet=True), \
            plain_process_errors(ctx.rank, ctx.world_size, log), plain_worker_errors(log):
        if ctx.is_main:
            with open(os.path.join(cfg.OUTPUT_DIR, CONFIG_FILE), "w") as f:
                f.write(cfg.dump())
        logger.info("torchvision engine, config %s, output %s, %d process(es)", options.config_file,
                    cfg.OUTPUT_DIR, ctx.world_size)
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)  # as Detectron2's default_setup
        if mask_format_note(cfg):
            logger.info(mask_format_note(cfg))
        register_from_config(cfg)
        test_sets = load_checked(cfg, cfg.DATASETS.TEST, "DATASETS.TEST")
        device = ctx.device if ctx.distributed else device  # one GPU per process: cuda:<local rank>
        seed = _seed(cfg)
        model = build_model(cfg)
        # The main process finds and reads the checkpoint and hands it to the others, so other
        # machines need not see OUTPUT_DIR.
        resume_from = broadcast_from_main(last_checkpoint(cfg.OUTPUT_DIR)
                                          if options.resume and ctx.is_main else None)
        checkpoint = broadcast_from_main(load_checkpoint(resume_from) if resume_from and ctx.is_main else None)

        if options.eval_only:
            if resume_from:
                model.load_state_dict(checkpoint["model"])
            elif cfg.MODEL.WEIGHTS:
                load_weights(model, cfg.MODEL.WEIGHTS, detector=True)
            else:
                logger.warning("--eval-only without MODEL.WEIGHTS evaluates a randomly initialised model")
            model.to(device)
        else:
            train_set = merge(load_checked(cfg, cfg.DATASETS.TRAIN, "DATASETS.TRAIN"))
            train_data = DetectionDataset(
                train_set, train=True, image_format=cfg.INPUT.FORMAT, with_masks=cfg.MODEL.MASK_ON,
                flip_prob=0.5 if cfg.INPUT.RANDOM_FLIP == "horizontal" else 0.0,
                filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
                max_bad_fraction=cfg.DATALOADER.MAX_BAD_FRACTION, unreadable=options.unreadable())
            if resume_from is None:
                if cfg.MODEL.WEIGHTS:
                    load_weights(model, cfg.MODEL.WEIGHTS)
                else:
                    logger.info("MODEL.WEIGHTS is empty: training from random initialisation")
            model.to(device)
            trainer = Trainer(cfg, model, train_data, device,
                              evaluate=lambda: _evaluate_all(cfg, model, test_sets, device))
            if resume_from:
                trainer.restore(checkpoint, resume_from)
            del checkpoint
            # The same augmentation and sampling whatever was loaded before; each process its own draws.
            torch.manual_seed(seed + ctx.rank)
            trainer.train()

        metrics = _evaluate_all(cfg, model, test_sets, device)
        if not ctx.is_main:
            return None
        record_run(cfg.OUTPUT_DIR, options.config_file, cfg.MODEL.WEIGHTS, metrics,
                   csv_path=cfg.RESULTS_CSV or None, engine=ENGINE, eval_only=options.eval_only,
                   dataset="+".join(cfg.DATASETS.TEST))
        return metrics


def run(cfg: CfgNode, options: RunOptions) -> Optional[Dict[str, float]]:
    """Train (unless options.eval_only) and evaluate in 1..N processes (options.num_gpus per machine x
    options.num_machines, or those torchrun started); writes logs, checkpoints and metrics under
    OUTPUT_DIR from the main process and returns its metrics (None on the other processes)."""
    cfg = cfg.clone()
    check_supported(cfg)  # before touching data or weights: a config error should come first
    nprocs, machines, machine_rank = options.num_gpus, options.num_machines, options.machine_rank
    world_size = requested_world_size(nprocs, machines)
    device = _device(cfg)
    check_run(cfg, world_size, device.type, training=not options.eval_only)
    metrics = launch(_run_process, (cfg, options, device), nprocs, machines, machine_rank,
                     options.dist_url, cfg.DIST_TIMEOUT, device.type)
    if world_size > 1 and not launched_by_torchrun() and machine_rank == 0:
        # The spawned main process recorded the run; hand its metrics to the caller.
        with open(metrics_file(cfg.OUTPUT_DIR, options.eval_only)) as f:
            metrics = json.load(f)["metrics"]
    return metrics
