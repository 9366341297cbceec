"""The training loop: iterations, not epochs, with Detectron2's schedule, periodic checkpoints and
evaluation, a tqdm bar with ETA, and a per-iteration log (train_log.jsonl) for loss curves."""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Callable, Dict, Optional

import torch
from fvcore.common.config import CfgNode
from tqdm import tqdm

from seed_core.errors import TrainingError
from seed_det.data.torch_dataset import DetectionDataset, InfiniteBatchSampler, collate

from .checkpoint import save_checkpoint
from .model import set_input_sizes
from .precise_bn import update_bn_stats
from .solver import build_optimizer, build_scheduler, clip_gradients

logger = logging.getLogger(__name__)


def _to_device(images, targets, device):
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items() if k != "index"} for t in targets]
    return images, targets


def loss_weights(cfg: CfgNode) -> Dict[str, float]:
    """Detectron2's loss weights, keyed by torchvision's loss names."""
    m = cfg.MODEL
    return {"loss_objectness": m.RPN.LOSS_WEIGHT,
            "loss_rpn_box_reg": m.RPN.LOSS_WEIGHT * m.RPN.BBOX_REG_LOSS_WEIGHT,
            "loss_box_reg": m.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT}


def _last_checkpoint_note(output_dir: str) -> str:
    last = os.path.join(output_dir, "last_checkpoint")
    if not os.path.isfile(last):
        return ""
    with open(last) as f:
        return f"The last good checkpoint is kept at {os.path.join(output_dir, f.read().strip())}. "


class Trainer:
    """Owns model, optimizer and schedule; `train()` runs from `start_iter` to SOLVER.MAX_ITER."""

    def __init__(self, cfg: CfgNode, model: torch.nn.Module, train_data: DetectionDataset, device: torch.device,
                 evaluate: Optional[Callable[[], Dict]] = None):
        self.cfg, self.model, self.data, self.device, self.evaluate = cfg, model, train_data, device, evaluate
        self.optimizer = build_optimizer(cfg, model)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.start_iter = 0
        self.step_times = []
        self.loss_weights = loss_weights(cfg)

    def restore(self, ckpt: Dict) -> None:
        """Resume model, optimizer, schedule and data order from a checkpoint of this engine."""
        self.model.load_state_dict(ckpt["model"])
        if "optimizer" in ckpt:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if "scheduler" in ckpt:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.start_iter = int(ckpt.get("iteration", 0))
        logger.info("resuming at iteration %d", self.start_iter)

    def _loader(self, seed_offset: int = 0, start_batch: int = 0):
        s = self.cfg.SOLVER
        seed = (self.cfg.SEED if self.cfg.SEED >= 0 else 0) + seed_offset
        sampler = InfiniteBatchSampler(len(self.data), s.IMS_PER_BATCH, seed, start_batch=start_batch)
        return iter(torch.utils.data.DataLoader(self.data, batch_sampler=sampler, collate_fn=collate,
                                                num_workers=self.cfg.DATALOADER.NUM_WORKERS))

    def train(self) -> None:
        cfg, s = self.cfg, self.cfg.SOLVER
        out = cfg.OUTPUT_DIR
        if self.start_iter >= s.MAX_ITER:
            logger.info("training already finished (%d/%d iterations)", self.start_iter, s.MAX_ITER)
            return
        self.model.train()
        set_input_sizes(self.model, cfg, train=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        data = self._loader(start_batch=self.start_iter)
        log = open(os.path.join(out, "train_log.jsonl"), "a")
        bar = tqdm(range(self.start_iter, s.MAX_ITER), initial=self.start_iter, total=s.MAX_ITER,
                   desc="train", dynamic_ncols=True, mininterval=1.0)
        logger.info("training iterations %d..%d, batch %d", self.start_iter, s.MAX_ITER, s.IMS_PER_BATCH)
        try:
            for it in bar:
                t0 = time.perf_counter()
                images, targets = _to_device(*next(data), self.device)
                t1 = time.perf_counter()
                losses = {k: v * self.loss_weights.get(k, 1.0) for k, v in self.model(images, targets).items()}
                loss = sum(losses.values())
                if not math.isfinite(loss.item()):
                    parts = {k: round(v.item(), 4) for k, v in losses.items()}
                    raise TrainingError(f"the detection loss is not finite ({loss.item()}) at iteration {it} "
                                        f"({parts}); stopping. {_last_checkpoint_note(out)}Lower SOLVER.BASE_LR "
                                        "or lengthen SOLVER.WARMUP_ITERS.")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                clip_gradients(cfg, params)
                self.optimizer.step()
                lr = self.optimizer.param_groups[0]["lr"]
                self.scheduler.step()
                t2 = time.perf_counter()
                self.step_times.append((t1 - t0, t2 - t1))
                row = {"iteration": it + 1, "loss": loss.item(), **{k: v.item() for k, v in losses.items()},
                       "lr": lr, "data_time": t1 - t0, "time": t2 - t0}
                log.write(json.dumps(row) + "\n")
                bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}")
                done = it + 1
                if s.CHECKPOINT_PERIOD and done % s.CHECKPOINT_PERIOD == 0 and done < s.MAX_ITER:
                    log.flush()
                    save_checkpoint(out, f"model_{done:07d}.pth", self.model, self.optimizer, self.scheduler, done)
                if self.evaluate and cfg.TEST.EVAL_PERIOD and done % cfg.TEST.EVAL_PERIOD == 0 and done < s.MAX_ITER:
                    self.precise_bn(done)
                    self.evaluate()
                    self.model.train()
                    set_input_sizes(self.model, cfg, train=True)
        finally:
            bar.close()
            log.close()
        self.precise_bn(s.MAX_ITER)
        save_checkpoint(out, "model_final.pth", self.model, self.optimizer, self.scheduler, s.MAX_ITER)
        self._write_timing()

    def precise_bn(self, iteration: int) -> None:
        """Recompute BN statistics on training batches (a separate, seeded data stream)."""
        p = self.cfg.TEST.PRECISE_BN
        if p.ENABLED:
            update_bn_stats(self.model, self._loader(seed_offset=iteration), p.NUM_ITER, self.device)
            set_input_sizes(self.model, self.cfg, train=True)

    def _write_timing(self) -> None:
        # Skip the first iterations: allocator warm-up would dominate a short run.
        times = self.step_times[min(2, len(self.step_times) - 1):] if self.step_times else []
        if not times:
            return
        stats = {"iterations_timed": len(times), "ims_per_batch": self.cfg.SOLVER.IMS_PER_BATCH,
                 "mean_data_s": sum(t[0] for t in times) / len(times),
                 "mean_step_s": sum(t[1] for t in times) / len(times), "device": str(self.device),
                 "threads": torch.get_num_threads()}
        with open(os.path.join(self.cfg.OUTPUT_DIR, "timing.json"), "w") as f:
            json.dump(stats, f, indent=2)
        logger.info("mean time per iteration: %.3fs step + %.3fs data", stats["mean_step_s"], stats["mean_data_s"])
