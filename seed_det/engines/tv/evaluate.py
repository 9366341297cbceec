"""Run a detection model over a test dataset and score it (VOC AP or COCO AP).

With several processes each takes a contiguous shard of the test set; the main process gathers
the shards in rank order, which is dataset order, so every image is scored exactly once and the
AP equals that of one process.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional

import torch
from fvcore.common.config import CfgNode
from tqdm import tqdm

from seed_core.distributed import gather_to_main, stop_if_peer_lost, world_info
from seed_det.data.records import Dataset
from seed_det.data.torch_dataset import DetectionDataset, collate
from seed_det.evaluation import build_evaluator

from .model import set_input_sizes

logger = logging.getLogger(__name__)


def shard(size: int, rank: int, world_size: int) -> range:
    """The contiguous slice of `size` items that process `rank` of `world_size` evaluates."""
    return range(size * rank // world_size, size * (rank + 1) // world_size)


def evaluate_dataset(cfg: CfgNode, model: torch.nn.Module, dataset: Dataset,
                     device: torch.device) -> Optional[Dict[str, float]]:
    """Batch size 1 at the test size, like Detectron2's inference loop; returns percent metrics on
    the main process and None on the others."""
    rank, world = world_info()
    with_masks = bool(cfg.MODEL.MASK_ON) and dataset.spec.kind == "coco"
    if with_masks and not all("segmentation" in a for r in dataset.records for a in r["annotations"]):
        logger.warning("%s has annotations without masks: reporting box AP only", dataset.spec.name)
        with_masks = False
    data = DetectionDataset(dataset, train=False, image_format=cfg.INPUT.FORMAT, with_masks=False)
    mine = torch.utils.data.Subset(data, shard(len(data), rank, world))
    loader = torch.utils.data.DataLoader(mine, batch_size=1, shuffle=False, collate_fn=collate,
                                         num_workers=cfg.DATALOADER.NUM_WORKERS)
    evaluator = build_evaluator(dataset, with_masks=with_masks)
    was_training = model.training
    model.eval()
    set_input_sizes(model, cfg, train=False)
    try:
        with torch.inference_mode():
            for images, targets in tqdm(loader, desc=f"eval {dataset.spec.name}", dynamic_ncols=True,
                                        mininterval=1.0, disable=rank != 0):
                out = model([images[0].to(device)])[0]
                record = data.records[int(targets[0]["index"])]
                masks = out["masks"][:, 0].cpu().numpy() if with_masks else None
                evaluator.process(record, out["boxes"].cpu().numpy(), out["scores"].cpu().numpy(),
                                  (out["labels"] - 1).cpu().numpy(), masks)
    finally:
        model.train(was_training)
        set_input_sizes(model, cfg, train=was_training)
    if world > 1:
        with stop_if_peer_lost(f"while evaluating {dataset.spec.name}", "The training checkpoints are kept."):
            parts = gather_to_main(evaluator.partial())
        if rank != 0:
            return None
        evaluator.merge(parts)
        logger.info("%s: gathered %d images evaluated by %d processes", dataset.spec.name, len(data), world)
    metrics = evaluator.evaluate()
    logger.info("%s: %s", dataset.spec.name, ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
    return metrics
