"""The training loop: iterations, not epochs, with Detectron2's schedule, periodic checkpoints and
evaluation, a tqdm bar with ETA, and a per-iteration log (train_log.jsonl) for loss curves.
Training images whose decoding fails are counted once each over all processes, in that log and in
the checkpoints (`count_skipped`).

Several processes train one model with DistributedDataParallel: each takes its slice of every
global batch (SOLVER.IMS_PER_BATCH), the main process writes checkpoints and logs. Mixed
precision (SOLVER.AMP.ENABLED, CUDA only) is fp16 autocast with a GradScaler, like Detectron2."""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Callable, Dict, Optional

import torch
from fvcore.common.config import CfgNode
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from seed_core.constants import FINAL_MODEL_FILE, TIMING_FILE, TRAIN_LOG_FILE
from seed_core.distributed import (all_gather_objects, all_reduce_sum, broadcast_buffers, stop_if_peer_lost,
                                   world_info)
from seed_core.errors import NonFiniteLossError
from seed_core.images import SkippedImages
from seed_core.precision import autocast, make_grad_scaler
from seed_det.data.torch_dataset import (DetectionDataset, InfiniteBatchSampler, collate, model_inputs,
                                         orientation_groups)

from .checkpoint import save_checkpoint
from .model import set_input_sizes
from .precise_bn import update_bn_stats
from .solver import build_optimizer, build_scheduler, clip_gradients

logger = logging.getLogger(__name__)


def count_skipped(counter: SkippedImages, targets, device: torch.device, report: bool) -> None:
    """Add the images this process's samples skipped (their targets' "skipped") and, with several
    processes, every other process's, to `counter` (the same on every process, so all raise its
    TooManyBadImagesError at the same step). One all-reduce of a count per step; the images
    themselves are gathered only at a step where some process met one it had not counted."""
    new = {i: error for t in targets for i, error in t["skipped"].items() if i not in counter}
    if world_info()[1] > 1:
        if not int(all_reduce_sum(torch.tensor([len(new)], device=device)).item()):
            return
        new = {i: error for part in all_gather_objects(new) for i, error in part.items()}
    counter.add(new, report=report)


def loss_weights(cfg: CfgNode) -> Dict[str, float]:
    """Detectron2's loss weights, keyed by torchvision's loss names."""
    m = cfg.MODEL
    return {"loss_objectness": m.RPN.LOSS_WEIGHT,
            "loss_rpn_box_reg": m.RPN.LOSS_WEIGHT * m.RPN.BBOX_REG_LOSS_WEIGHT,
            "loss_box_reg": m.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT}


class Trainer:
    """Owns model, optimizer and schedule; `train()` runs from `start_iter` to SOLVER.MAX_ITER."""

    def __init__(self, cfg: CfgNode, model: torch.nn.Module, train_data: DetectionDataset, device: torch.device,
                 evaluate: Optional[Callable[[], Dict]] = None):
        self.cfg, self.model, self.data, self.device, self.evaluate = cfg, model, train_data, device, evaluate
        self.rank, self.world_size = world_info()
        self.optimizer = build_optimizer(cfg, model)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.precision = "fp16" if cfg.SOLVER.AMP.ENABLED else "fp32"  # engine checks refuse AMP off CUDA
        self.scaler = make_grad_scaler(self.precision, device)
        self.start_iter = 0
        # Training images whose decoding failed, over all processes and, through checkpoints, resumes.
        self.skipped = train_data.skipped_images()
        self.last_checkpoint: Optional[str] = None  # named in errors that stop the run
        self.step_times = []
        self.loss_weights = loss_weights(cfg)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # Gradients are averaged over processes in backward; DDP also starts every process from
        # rank 0's weights. Inference and checkpoints use the plain model.
        self.forward = model if self.world_size == 1 else DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def restore(self, ckpt: Dict, path: str) -> None:
        """Resume model, optimizer, schedule, loss scale and data order from a checkpoint of this engine."""
        self.last_checkpoint = path
        self.model.load_state_dict(ckpt["model"])
        if "optimizer" in ckpt:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if "scheduler" in ckpt:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if "grad_scaler" in ckpt and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["grad_scaler"])
        self.start_iter = int(ckpt.get("iteration", 0))
        self.skipped.load_state_dict(ckpt.get("skipped_images", {}))  # older checkpoints: none
        logger.info("resuming at iteration %d%s", self.start_iter,
                    f" ({len(self.skipped)} unreadable training image(s) skipped so far)" if len(self.skipped) else "")

    def _loader(self, seed_offset: int = 0, start_batch: int = 0):
        s = self.cfg.SOLVER
        seed = (self.cfg.SEED if self.cfg.SEED >= 0 else 0) + seed_offset
        groups = orientation_groups(self.data.records) if self.cfg.DATALOADER.ASPECT_RATIO_GROUPING else None
        sampler = InfiniteBatchSampler(len(self.data), s.IMS_PER_BATCH, seed, start_batch=start_batch,
                                       rank=self.rank, world_size=self.world_size, groups=groups)
        return iter(torch.utils.data.DataLoader(self.data, batch_sampler=sampler, collate_fn=collate,
                                                num_workers=self.cfg.DATALOADER.NUM_WORKERS))

    def _save(self, name: str, iteration: int) -> None:
        self.last_checkpoint = os.path.join(self.cfg.OUTPUT_DIR, name)
        if self.is_main:
            save_checkpoint(self.cfg.OUTPUT_DIR, name, self.model, self.optimizer, self.scheduler, iteration,
                            self.scaler if self.scaler.is_enabled() else None, self.skipped)

    def _resume_hint(self) -> str:
        if self.last_checkpoint is None:
            return "No checkpoint was written yet."
        return f"The last checkpoint, {self.last_checkpoint}, is kept; restart with --resume."

    def train(self) -> None:
        cfg, s = self.cfg, self.cfg.SOLVER
        out = cfg.OUTPUT_DIR
        if self.start_iter >= s.MAX_ITER:
            logger.info("training already finished (%d/%d iterations)", self.start_iter, s.MAX_ITER)
            return
        self.model.train()
        set_input_sizes(self.model, cfg, train=True)
        data = self._loader(start_batch=self.start_iter)
        log = open(os.path.join(out, TRAIN_LOG_FILE), "a") if self.is_main else None
        bar = tqdm(range(self.start_iter, s.MAX_ITER), initial=self.start_iter, total=s.MAX_ITER,
                   desc="train", dynamic_ncols=True, mininterval=1.0, disable=not self.is_main)
        logger.info("training iterations %d..%d, batch %d (%d per process x %d processes)%s", self.start_iter,
                    s.MAX_ITER, s.IMS_PER_BATCH, s.IMS_PER_BATCH // self.world_size, self.world_size,
                    ", mixed precision (fp16)" if self.precision == "fp16" else "")
        try:
            for it in bar:
                t0 = time.perf_counter()
                images, targets = next(data)
                images, model_input = model_inputs(images, targets, self.device)
                t1 = time.perf_counter()
                with stop_if_peer_lost(f"at iteration {it}", self._resume_hint()):
                    count_skipped(self.skipped, targets, self.device, report=self.is_main)
                    losses, lr = self._step(images, model_input, it)
                t2 = time.perf_counter()
                self.step_times.append((t1 - t0, t2 - t1))
                done = it + 1
                if log is not None:
                    row = {"iteration": done, "loss": sum(losses.values()), **losses, "lr": lr,
                           "data_time": t1 - t0, "time": t2 - t0, "skipped_images": len(self.skipped)}
                    log.write(json.dumps(row) + "\n")
                    bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}")
                if s.CHECKPOINT_PERIOD and done % s.CHECKPOINT_PERIOD == 0 and done < s.MAX_ITER:
                    if log is not None:
                        log.flush()
                    self._save(f"model_{done:07d}.pth", done)
                if self.evaluate and cfg.TEST.EVAL_PERIOD and done % cfg.TEST.EVAL_PERIOD == 0 and done < s.MAX_ITER:
                    self.precise_bn(done)
                    broadcast_buffers(self.model)
                    self.evaluate()
                    self.model.train()
                    set_input_sizes(self.model, cfg, train=True)
        finally:
            bar.close()
            if log is not None:
                log.close()
        self.precise_bn(s.MAX_ITER)
        broadcast_buffers(self.model)  # the saved and evaluated model is the same on every process
        self._save(FINAL_MODEL_FILE, s.MAX_ITER)
        self._write_timing()

    def _step(self, images, targets, it: int):
        """One optimisation step; returns the loss parts averaged over processes, and the lr used."""
        with autocast(self.precision, self.device):
            parts = self.forward(images, targets)
        losses = {k: v.float() * self.loss_weights.get(k, 1.0) for k, v in parts.items()}
        loss = sum(losses.values())
        # One small all-reduce of the loss parts: the logged loss is the global one, and every
        # process sees a non-finite loss at the same step, so they all stop together.
        reduced = all_reduce_sum(torch.stack([v.detach().sum() for v in losses.values()]).double()) / self.world_size
        reduced = dict(zip(losses, reduced.tolist()))
        total = sum(reduced.values())
        if not math.isfinite(total):
            raise NonFiniteLossError(
                f"the detection loss is not finite ({total}) at iteration {it} "
                f"({ {k: round(v, 4) for k, v in reduced.items()} }); stopping. {self._resume_hint()} "
                "Lower SOLVER.BASE_LR or lengthen SOLVER.WARMUP_ITERS")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            clip_gradients(self.cfg, self.params)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return reduced, lr

    def precise_bn(self, iteration: int) -> None:
        """Recompute BN statistics on training batches (a separate, seeded data stream)."""
        p = self.cfg.TEST.PRECISE_BN
        if p.ENABLED:
            update_bn_stats(self.model, self._loader(seed_offset=iteration), p.NUM_ITER, self.device)
            set_input_sizes(self.model, self.cfg, train=True)

    def _write_timing(self) -> None:
        # Skip the first iterations: allocator warm-up would dominate a short run.
        times = self.step_times[min(2, len(self.step_times) - 1):] if self.step_times else []
        if not times or not self.is_main:
            return
        stats = {"iterations_timed": len(times), "ims_per_batch": self.cfg.SOLVER.IMS_PER_BATCH,
                 "processes": self.world_size, "precision": self.precision,
                 "mean_data_s": sum(t[0] for t in times) / len(times),
                 "mean_step_s": sum(t[1] for t in times) / len(times), "device": str(self.device),
                 "threads": torch.get_num_threads()}
        with open(os.path.join(self.cfg.OUTPUT_DIR, TIMING_FILE), "w") as f:
            json.dump(stats, f, indent=2)
        logger.info("mean time per iteration: %.3fs step + %.3fs data", stats["mean_step_s"], stats["mean_data_s"])
