"""The distillation training loop: torchrun DDP, mixed precision, exact resume, preemption-safe
checkpoints, progress and metrics. The method itself lives in objectives.py / losses.py."""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import time

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .checkpoint_io import CheckpointError, atomic_save, atomic_write_text, load_untrusted
from .constants import CHECKPOINT_FILE
from .config import CfgNode, ConfigError, cfg_from_string, flatten_cfg, validate_cfg
from .data import ResumableSampler, UnlabeledImages, collate, list_images, training_transform
from .errors import TrainingError
from .distributed import DistContext, all_reduce_sum, init_distributed, shutdown
from .encoders import build_student
from .export import meta_from_cfg, write_backbone
from .objectives import DistillationObjective, MoCoObjective
from .precision import DTYPES, autocast, keep_large_allocations_on_heap, make_grad_scaler, resolve_precision
from .queue import EmbeddingQueue
from .shuffle_bn import resolve_bn_splits
from .schedule import lr_at, scaled_lr, warmup_epochs
from .teachers import embedding_dim, load_teacher

logger = logging.getLogger(__name__)
# Settings that may change between a run and its resume without changing the result.
RESUME_MAY_CHANGE = {"DATA.NUM_WORKERS", "TRAIN.PROGRESS", "TRAIN.LOG_PERIOD", "TRAIN.CHECKPOINT_PERIOD",
                     "TRAIN.DIST_TIMEOUT", "TRAIN.KEEP_EPOCH_CHECKPOINTS", "OUTPUT_DIR", "DATA.ROOT"}


class NonFiniteLossError(TrainingError):
    pass


class TooManyBadImagesError(TrainingError):
    pass


class PeerLostError(TrainingError):
    """Another rank died or stopped answering: this rank stops instead of waiting forever."""


class Interrupted(Exception):
    """Raised after a SIGTERM/SIGINT once a checkpoint is safely written."""

    def __init__(self, signum: int, iteration: int, path: str):
        super().__init__(f"stopped by signal {signal.Signals(signum).name} after iteration {iteration}; "
                         f"checkpoint written to {path}; continue with --resume")
        self.signum, self.iteration, self.path = signum, iteration, path


def train(cfg: CfgNode, resume: bool = False, stop_at_iter: int | None = None) -> dict:
    """Run (or resume) a distillation described by `cfg`; returns a summary dict."""
    ctx = init_distributed(cfg.TRAIN.DIST_TIMEOUT)
    try:
        validate_cfg(cfg, ctx.world_size)
        return Trainer(cfg, ctx).run(resume=resume, stop_at_iter=stop_at_iter)
    finally:
        shutdown()


class Trainer:
    def __init__(self, cfg: CfgNode, ctx: DistContext):
        self.cfg, self.ctx = cfg, ctx
        self.device = ctx.device
        torch.manual_seed(cfg.SEED)
        random.seed(cfg.SEED)
        self.moco = cfg.LOSS.NAME == "moco"
        self.precision = resolve_precision(cfg.TRAIN.PRECISION, self.device)
        if self.device.type == "cpu":
            keep_large_allocations_on_heap()
        self.out_dir = cfg.OUTPUT_DIR
        self.ckpt_path = os.path.join(self.out_dir, CHECKPOINT_FILE)

        self._build_data()
        self._build_models()
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=self.peak_lr,
                                         momentum=cfg.SOLVER.MOMENTUM, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
        self.scaler = make_grad_scaler(self.precision, self.device)
        self.stop_signal: int | None = None

    # ----------------------------------------------------------------------------- building
    def _build_data(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        files = list_images(cfg.DATA.ROOT)
        size = cfg.DATA.IMAGE_SIZE
        transform = training_transform(cfg.DATA.AUGMENTATION, size)
        self.dataset = UnlabeledImages(files, transform, views=2 if self.moco else 1, seed=cfg.SEED)
        self.sampler = ResumableSampler(len(files), cfg.SOLVER.BATCH_SIZE, ctx.rank, ctx.world_size, cfg.SEED)
        workers = cfg.DATA.NUM_WORKERS
        self.loader = DataLoader(
            self.dataset, batch_size=self.sampler.local_batch, sampler=self.sampler, collate_fn=collate,
            num_workers=workers, pin_memory=self.device.type == "cuda", drop_last=True,
            persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
            # A private generator: creating an epoch's iterator must not consume the global RNG,
            # or a resumed run would draw different random numbers than an uninterrupted one.
            generator=torch.Generator().manual_seed(cfg.SEED))
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.total_iters = cfg.SOLVER.MAX_ITER or cfg.SOLVER.EPOCHS * self.steps_per_epoch
        warmup = warmup_epochs(cfg.SOLVER.WARMUP_EPOCHS, cfg.LOSS.NAME, cfg.SOLVER.BATCH_SIZE)
        self.warmup_iters = int(round(warmup * self.steps_per_epoch))
        self.peak_lr = scaled_lr(cfg.SOLVER.BASE_LR, cfg.SOLVER.BATCH_SIZE)
        if ctx.is_main:
            logger.info("%d images, %d iterations per epoch, %d iterations in total, lr %.4g",
                        len(files), self.steps_per_epoch, self.total_iters, self.peak_lr)

    def _build_models(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        fmt = torch.channels_last if cfg.TRAIN.CHANNELS_LAST else torch.contiguous_format
        self.memory_format = fmt
        student = build_student(cfg.MODEL.STUDENT.ARCH, cfg.MODEL.STUDENT.HEAD_DIM, cfg.MODEL.STUDENT.HEAD_HIDDEN_DIM)
        if cfg.MODEL.SYNC_BN and ctx.distributed:
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        self.student = student.to(self.device, memory_format=fmt)
        queue_gen = torch.Generator().manual_seed(cfg.SEED + 1)
        # SEED's student similarities run in the training precision; the teacher side stays fp32.
        shadow = DTYPES[self.precision] if (self.precision != "fp32" and cfg.LOSS.NAME == "seed") else None
        self.queue = EmbeddingQueue(cfg.QUEUE.SIZE, cfg.MODEL.STUDENT.HEAD_DIM, queue_gen, shadow).to(self.device)
        if self.moco:
            splits = resolve_bn_splits(cfg.LOSS.MOCO_BN_SPLITS, self.sampler.local_batch, ctx.world_size)
            self.objective = MoCoObjective(self.student, self.queue, cfg.LOSS.MOCO_TEMP, cfg.LOSS.MOCO_MOMENTUM, splits)
        else:
            teacher = load_teacher(cfg.MODEL.TEACHER.WEIGHTS, cfg.MODEL.TEACHER.ARCH,
                                   cfg.MODEL.TEACHER.FORMAT, cfg.MODEL.TEACHER.USE_HEAD)
            t_dim = embedding_dim(teacher)
            if t_dim != cfg.MODEL.STUDENT.HEAD_DIM:
                raise ConfigError(f"the teacher's embeddings are {t_dim}-d but the student head outputs "
                                  f"MODEL.STUDENT.HEAD_DIM = {cfg.MODEL.STUDENT.HEAD_DIM}: set "
                                  f"MODEL.STUDENT.HEAD_DIM {t_dim}")
            t_prec = self.precision if cfg.TRAIN.TEACHER_PRECISION == "auto" else \
                resolve_precision(cfg.TRAIN.TEACHER_PRECISION, self.device)
            self.objective = DistillationObjective(
                teacher.to(self.device), self.queue, cfg.LOSS.NAME, cfg.LOSS.STUDENT_TEMP,
                cfg.LOSS.TEACHER_TEMP, DTYPES[t_prec], cfg.TRAIN.CHANNELS_LAST)
        if ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.student, device_ids=ids)
        else:
            self.model = self.student
        self.feature_dim = self.student.head[0].in_features

    # ----------------------------------------------------------------------------- checkpoints
    def state(self, next_iter: int) -> dict:
        state = {
            "student": self.student.state_dict(),
            "queue": self.queue.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": next_iter,
            "steps_per_epoch": self.steps_per_epoch,
            "config": self.cfg.dump(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }
        if self.moco:
            state["key_encoder"] = self.objective.key_encoder.state_dict()
        return state

    def save(self, next_iter: int) -> None:
        if not self.ctx.is_main:
            return
        try:
            atomic_save(self.state(next_iter), self.ckpt_path)
            if self.cfg.TRAIN.KEEP_EPOCH_CHECKPOINTS and next_iter % self.steps_per_epoch == 0:
                epoch = next_iter // self.steps_per_epoch
                atomic_save(self.state(next_iter), os.path.join(self.out_dir, f"checkpoint_epoch{epoch:04d}.pth"))
        except OSError as e:
            raise CheckpointError(f"could not write a checkpoint to {self.out_dir} ({e.strerror or e}); "
                                  f"the previous checkpoint, if any, is intact. Free space or fix "
                                  f"permissions, then --resume") from e

    def load(self) -> int:
        if not os.path.isfile(self.ckpt_path):
            raise CheckpointError(f"--resume: no checkpoint at {self.ckpt_path}; start without --resume")
        ckpt = load_untrusted(self.ckpt_path, map_location=self.device)
        self._check_resume_config(ckpt.get("config", ""))
        self.student.load_state_dict(ckpt["student"])
        self.queue.load_state_dict(ckpt["queue"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.moco:
            self.objective.key_encoder.load_state_dict(ckpt["key_encoder"])
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        random.setstate(_as_tuple(rng["python"]))
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        return int(ckpt["iteration"])

    def _check_resume_config(self, saved_text: str) -> None:
        saved = flatten_cfg(cfg_from_string(saved_text)) if saved_text else {}
        now = flatten_cfg(self.cfg)
        changed = [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in now
                   if k in saved and saved[k] != now[k] and k not in RESUME_MAY_CHANGE]
        if changed:
            raise ConfigError("--resume with a config that differs from the checkpoint's, which would not "
                              "continue the same run:\n  " + "\n  ".join(changed) +
                              "\nUse the original settings or a new OUTPUT_DIR.")

    def _prepare_output_dir(self) -> None:
        """Fail before training if checkpoints could not be written; drop temp files of a killed write."""
        try:
            os.makedirs(self.out_dir, exist_ok=True)
            probe = os.path.join(self.out_dir, ".write_test")
            with open(probe, "w") as f:
                f.write("ok")
            os.unlink(probe)
        except OSError as e:
            raise CheckpointError(f"OUTPUT_DIR {self.out_dir} is not writable ({e.strerror or e}): "
                                  f"choose another OUTPUT_DIR or fix its permissions") from None
        for name in os.listdir(self.out_dir):
            if name.startswith("." + CHECKPOINT_FILE) and name.endswith(".tmp"):
                os.unlink(os.path.join(self.out_dir, name))

    # ----------------------------------------------------------------------------- loop
    def run(self, resume: bool = False, stop_at_iter: int | None = None) -> dict:
        cfg, ctx = self.cfg, self.ctx
        if ctx.is_main:
            self._prepare_output_dir()
        start = self.load() if resume else 0
        if ctx.is_main:
            atomic_write_text(cfg.dump(), os.path.join(self.out_dir, "config.yaml"))
        end = self.total_iters if stop_at_iter is None else min(self.total_iters, stop_at_iter)
        log = MetricsLog(self.out_dir, start, enabled=ctx.is_main)
        progress = _progress_bar(ctx.is_main and cfg.TRAIN.PROGRESS, self.total_iters, start)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        bad_total, skipped_nonfinite, it = 0, 0, start
        t_last, n_last, loss_sum = time.time(), start, 0.0
        try:
            while it < end:
                epoch, step = divmod(it, self.steps_per_epoch)
                self.sampler.set_position(epoch, step)
                bad_seen: set[int] = set()
                epoch_bad = 0
                for images, bad in self.loader:
                    new_bad = len(set(bad) - bad_seen)
                    bad_seen.update(bad)
                    loss, stats = self._guarded_step(images, it, new_bad)
                    bad_total += int(stats[2])
                    epoch_bad += int(stats[2])
                    if stats[1] > 0:  # a rank was asked to stop: every rank stops at the same step
                        self.save(it + 1)
                        raise Interrupted(self.stop_signal or signal.SIGTERM, it + 1, self.ckpt_path)
                    if not torch.isfinite(stats[0]):
                        skipped_nonfinite += 1
                        if skipped_nonfinite > 20:
                            raise NonFiniteLossError(f"loss not finite for 20 consecutive iterations "
                                                     f"(last: {it}); the last good checkpoint is {self.ckpt_path}")
                    else:
                        skipped_nonfinite = 0
                        loss_sum += float(stats[0]) / ctx.world_size
                    self._check_bad_images(epoch_bad, epoch)
                    it += 1
                    progress.update(1)
                    if it % cfg.TRAIN.LOG_PERIOD == 0 or it == end:
                        now = time.time()
                        n = it - n_last
                        rec = {"iteration": it, "epoch": round(it / self.steps_per_epoch, 4),
                               "loss": loss_sum / max(1, n), "lr": self.optimizer.param_groups[0]["lr"],
                               "images_per_s": n * cfg.SOLVER.BATCH_SIZE / max(now - t_last, 1e-9),
                               "bad_images": bad_total}
                        log.write(rec)
                        progress.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.3g}")
                        t_last, n_last, loss_sum = now, it, 0.0
                    if it % cfg.TRAIN.CHECKPOINT_PERIOD == 0 or it % self.steps_per_epoch == 0 or it == end:
                        self.save(it)
                    if it >= end:
                        break
                if epoch_bad and ctx.is_main:
                    logger.warning("epoch %d: %d unreadable images skipped (replaced by the next readable "
                                   "image); %d in the run so far", epoch, epoch_bad, bad_total)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            progress.close()
            log.close()
        summary = {"iterations": it, "finished": it >= self.total_iters, "checkpoint": self.ckpt_path,
                   "bad_images": bad_total, "precision": self.precision}
        if it >= self.total_iters and ctx.is_main:
            meta = meta_from_cfg(cfg, self.feature_dim, it, it / self.steps_per_epoch)
            summary["backbone"] = write_backbone(self.student.state_dict(), self.out_dir, meta)
        return summary

    def _guarded_step(self, images: torch.Tensor, it: int, new_bad: int):
        try:
            return self._step(images, it, new_bad)
        except RuntimeError as e:
            if self.ctx.distributed and _is_communication_error(e):
                raise PeerLostError(
                    f"rank {self.ctx.rank} lost contact with the other processes at iteration {it} "
                    f"(another rank crashed or hung; see its log). Last checkpoint: {self.ckpt_path}; "
                    f"restart with --resume. Detail: {str(e).splitlines()[0][:300]}") from e
            raise

    def _step(self, images: torch.Tensor, it: int, new_bad: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        images = images.to(self.device, non_blocking=True)
        if images.dim() == 4:
            images = images.contiguous(memory_format=self.memory_format)
        lr = lr_at(it, self.total_iters, self.peak_lr, self.warmup_iters, cfg.SOLVER.MIN_LR)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, to_enqueue = self.objective(self.model, images, autocast(self.precision, self.device))
        # One small all-reduce carries the loss, a stop request and the bad-image count, so every
        # rank takes the same decision at the same step (no rank is left waiting in a collective).
        stats = torch.tensor([loss.detach().float().item(), float(self.stop_signal is not None), float(new_bad)],
                             dtype=torch.float64)
        stats = all_reduce_sum(stats.to(self.device)).cpu()
        if not torch.isfinite(stats[0]):
            if self.precision != "fp16":
                raise NonFiniteLossError(
                    f"the loss is not finite at iteration {it} (lr {lr:.4g}); stopping. The last good "
                    f"checkpoint is kept at {self.ckpt_path}. Lower SOLVER.BASE_LR or check the teacher weights.")
            return loss, stats  # fp16 overflow: skip this step, keep the queue clean
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.objective.after_step(self.model, to_enqueue)
        return loss, stats

    def _check_bad_images(self, epoch_bad: int, epoch: int) -> None:
        limit = self.cfg.DATA.MAX_BAD_FRACTION * len(self.dataset)
        if epoch_bad > limit:
            raise TooManyBadImagesError(
                f"{epoch_bad} unreadable images in epoch {epoch}, more than DATA.MAX_BAD_FRACTION = "
                f"{self.cfg.DATA.MAX_BAD_FRACTION} of {len(self.dataset)}: check {self.cfg.DATA.ROOT} "
                f"(run with log level DEBUG to list them) or raise DATA.MAX_BAD_FRACTION")

    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.stop_signal = signum
        logger.warning("received %s: finishing this iteration, writing a checkpoint, then stopping",
                       signal.Signals(signum).name)


class MetricsLog:
    """metrics.jsonl (+ TensorBoard) on rank 0; on resume, records past the checkpoint are dropped
    so the log matches the resumed run."""

    def __init__(self, out_dir: str, start_iter: int, enabled: bool):
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.path = os.path.join(out_dir, "metrics.jsonl")
        kept = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                for line in f:
                    try:
                        if json.loads(line)["iteration"] <= start_iter:
                            kept.append(line)
                    except (ValueError, KeyError):
                        continue  # a torn last line from a killed run
        with open(self.path, "w") as f:
            f.writelines(kept)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(out_dir, "tb"))
        except ImportError:
            logger.info("tensorboard not installed: metrics go to metrics.jsonl only")

    def write(self, rec: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.writer is not None:
            for k, v in rec.items():
                if k != "iteration":
                    self.writer.add_scalar(f"train/{k}", v, rec["iteration"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _is_communication_error(e: RuntimeError) -> bool:
    import torch.distributed as dist
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e).lower()
    return any(s in text for s in ("connection closed", "connection reset", "timed out", "timeout",
                                   "gloo", "nccl", "broken pipe", "peer"))


def _progress_bar(enabled: bool, total: int, initial: int):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, desc="distill", unit="it",
                dynamic_ncols=True, smoothing=0.05)


def _as_tuple(x):
    return tuple(_as_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x
