"""The distillation training loop: torchrun DDP, mixed precision, exact resume, preemption-safe
checkpoints, progress and metrics. The method itself lives in objectives.py / losses.py."""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import random
import signal

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .checkpoint_io import CheckpointError, atomic_save, atomic_write_text, load_untrusted, state_dict_checksum
from .constants import BACKBONE_FILE, CHECKPOINT_FILE, CONFIG_FILE, LOG_FILE, META_FILE, METRICS_LOG_FILE
from .config import CfgNode, ConfigError, cfg_from_string, validate_cfg
from .augmentations import build_transform, resolve_recipe
from .data import ResumableSampler, UnlabeledImages, collate, list_images
from .download import Progress
from .distributed import DistContext, decided_by_main, init_distributed, shutdown, stop_if_peer_lost
from .encoders import build_student
from .optim import build_optimizer
from .export import meta_from_cfg, write_backbone
from .monitoring import BadImageCounter, MetricsLog, NonFiniteGuard, PeriodicReport, StepStats
from .objectives import DistillationObjective, MoCoObjective
from .precision import DTYPES, autocast, keep_large_allocations_on_heap, make_grad_scaler, resolve_precision
from .queue import EmbeddingQueue
from .run_dir import RunLog, claim_if_main, claim_run_dir
from .schedule import lr_at, scaled_lr, warmup_epochs
from .shuffle_bn import resolve_bn_splits
from .stop_signals import Interrupted, StopSignals  # noqa: F401 (Interrupted: what train() raises)
from .teacher_precision import cast_teacher, resolve_teacher_precision
from .teachers import embedding_dim, fold_batchnorm, load_teacher
from .worker_errors import plain_process_errors, plain_worker_errors
from .yaml_config import flatten_cfg
from . import zoo

logger = logging.getLogger(__name__)
# Settings that may change between a run and its resume without changing the result.
RESUME_MAY_CHANGE = {"DATA.NUM_WORKERS", "TRAIN.PROGRESS", "TRAIN.LOG_PERIOD", "TRAIN.CHECKPOINT_PERIOD",
                     "TRAIN.DIST_TIMEOUT", "TRAIN.KEEP_EPOCH_CHECKPOINTS", "OUTPUT_DIR", "DATA.ROOT"}
# A folder holding one of these (not empty) holds a run that must not be overwritten silently.
RUN_MARKERS = (CHECKPOINT_FILE, METRICS_LOG_FILE)
# What a run writes into OUTPUT_DIR; --restart moves these aside (epoch checkpoints are globbed).
RUN_OUTPUTS = RUN_MARKERS + (CONFIG_FILE, LOG_FILE, "tb", BACKBONE_FILE, META_FILE)


def train(cfg: CfgNode, resume: bool = False, stop_at_iter: int | None = None, restart: bool = False,
          download_progress: Progress | None = None) -> dict:
    """Run (or resume) a distillation described by `cfg`; returns a summary dict. An OUTPUT_DIR that
    holds a run is continued (`resume`), moved aside (`restart`), or refused; one another run is
    writing is refused (seed_core.run_dir.claim_run_dir). A `zoo:` teacher is fetched first (its
    download reported to `download_progress` on the main process)."""
    ctx = init_distributed(cfg.TRAIN.DIST_TIMEOUT)
    try:
        validate_cfg(cfg, ctx.world_size)
        if cfg.LOSS.NAME != "moco":
            zoo.resolve(cfg.MODEL.TEACHER.WEIGHTS, download_progress if ctx.is_main else None)
        with claim_output_dir(cfg.OUTPUT_DIR, resume, restart, ctx.is_main):
            # Under DDP an unexpected error of a rank is one line naming it; its traceback goes to the log.
            with RunLog(cfg.OUTPUT_DIR, ["seed_core"], enabled=ctx.is_main), \
                    plain_process_errors(ctx.rank, ctx.world_size, os.path.join(cfg.OUTPUT_DIR, LOG_FILE),
                                         passing=(Interrupted,)):
                return Trainer(cfg, ctx).run(resume=resume, stop_at_iter=stop_at_iter)
    finally:
        shutdown()


def claim_output_dir(out_dir: str, resume: bool, restart: bool, is_main: bool):
    """Before any work: OUTPUT_DIR must be a writable folder that no other run is writing, and a run
    already in it is never overwritten without being asked (--resume continues it, --restart moves
    its files aside). Only the main process checks and locks the folder; the others get its verdict.
    Returns the folder's lock (a context manager; nothing on the other processes)."""
    if resume and restart:
        raise ConfigError("--resume continues the run in OUTPUT_DIR and --restart moves it aside: choose one")

    def claim():
        epochs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(out_dir), "checkpoint_epoch*.pth")))
        lock = claim_run_dir(out_dir, RUN_MARKERS, resume=resume, overwrite=restart,
                             outputs=RUN_OUTPUTS + tuple(epochs), overwrite_flag="--restart")
        for tmp in glob.glob(os.path.join(glob.escape(out_dir), f".{CHECKPOINT_FILE}.*.tmp")):
            os.unlink(tmp)  # left by a checkpoint write that was killed (the folder is ours now)
        return lock
    lock = decided_by_main(is_main, claim)
    return lock if lock is not None else claim_if_main(False)


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

        # Models first: a wrong architecture or teacher fails before the image folder is listed;
        # the teacher's format then decides the augmentation recipe (DATA.AUGMENTATION auto).
        self._build_models()
        self._build_data()
        self.optimizer = build_optimizer(self.student, cfg.SOLVER.OPTIMIZER, self.peak_lr, cfg.SOLVER.MOMENTUM,
                                         cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.LARS_ETA)
        self.scaler = make_grad_scaler(self.precision, self.device)
        self.stop = StopSignals()

    # ----------------------------------------------------------------------------- building
    def _build_data(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        files = list_images(cfg.DATA.ROOT)
        self.augmentation = resolve_recipe(cfg.DATA.AUGMENTATION, self.teacher_format)
        transform = build_transform(self.augmentation, cfg.DATA.IMAGE_SIZE, pipeline=cfg.DATA.PIPELINE)
        patches = cfg.DATA.SMALL_PATCHES
        small = (build_transform(self.augmentation, patches.SIZE, tuple(patches.SCALE), cfg.DATA.PIPELINE)
                 if patches.NUM else None)
        self.dataset = UnlabeledImages(files, transform, views=2 if self.moco else 1, seed=cfg.SEED,
                                       small_transform=small, small_views=patches.NUM)
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
            logger.info("%d images, %d iterations per epoch, %d iterations in total, lr %.4g, "
                        "augmentation %s%s", len(files), self.steps_per_epoch, self.total_iters,
                        self.peak_lr, self.augmentation,
                        f" + {patches.NUM} small patches of {patches.SIZE} px" if patches.NUM else "")

    def _build_models(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        fmt = torch.channels_last if cfg.TRAIN.CHANNELS_LAST else torch.contiguous_format
        self.memory_format = fmt
        # The teacher first: MODEL.STUDENT.HEAD_DIM 0 takes the width of its embeddings. Its random
        # initialisation (overwritten by its weights) must not change the student's.
        teacher, self.head_dim = None, cfg.MODEL.STUDENT.HEAD_DIM  # > 0 without a teacher (validate_cfg)
        if not self.moco:
            with torch.random.fork_rng(devices=[]):
                teacher, self.head_dim = self._load_teacher()
        try:
            student = build_student(cfg.MODEL.STUDENT.ARCH, self.head_dim, cfg.MODEL.STUDENT.HEAD_HIDDEN_DIM,
                                    cfg.MODEL.STUDENT.ZERO_INIT_RESIDUAL, cfg.MODEL.STUDENT.HEAD_BATCH_NORM)
        except ConfigError as e:
            raise ConfigError(f"MODEL.STUDENT.ARCH: {e}") from None
        _check_batch_norm_batch(student, cfg, ctx.world_size)
        if cfg.MODEL.SYNC_BN and ctx.distributed:
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        self.student = student.to(self.device, memory_format=fmt)
        queue_gen = torch.Generator().manual_seed(cfg.SEED + 1)
        self.queue = EmbeddingQueue(cfg.QUEUE.SIZE, self.head_dim, queue_gen).to(self.device)
        self.small_queue = None
        if cfg.DATA.SMALL_PATCHES.NUM:
            self.small_queue = EmbeddingQueue(cfg.QUEUE.SIZE, self.head_dim,
                                              torch.Generator().manual_seed(cfg.SEED + 2)).to(self.device)
        self.teacher_format = None  # MoCo mode has no teacher
        if self.moco:
            splits = resolve_bn_splits(cfg.LOSS.MOCO_BN_SPLITS, cfg.SOLVER.BATCH_SIZE // ctx.world_size, ctx.world_size)
            self.objective = MoCoObjective(self.student, self.queue, cfg.LOSS.MOCO_TEMP, cfg.LOSS.MOCO_MOMENTUM, splits)
        else:
            t_prec = resolve_teacher_precision(cfg.TRAIN.TEACHER_PRECISION, self.device.type)
            self.teacher_format = teacher.format
            logger.info("teacher precision: %s", t_prec)
            # The teacher is frozen: BatchNorm folded, kept in its precision for good (never re-cast
            # in every autocast forward), possibly with its last stage + head in fp32.
            t_net, t_dtype = cast_teacher(teacher.to(self.device), t_prec, fold_batchnorm, fmt)
            self.objective = DistillationObjective(
                t_net, self.queue, cfg.LOSS.NAME, cfg.LOSS.STUDENT_TEMP, cfg.LOSS.TEACHER_TEMP, teacher_dtype=t_dtype,
                student_dtype=DTYPES[self.precision], small_queue=self.small_queue)
        if ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.student, device_ids=ids)
        else:
            self.model = self.student

    def _load_teacher(self):
        """The frozen teacher and the width of its embeddings (which the student head must have)."""
        cfg = self.cfg
        teacher = load_teacher(cfg.MODEL.TEACHER.WEIGHTS, cfg.MODEL.TEACHER.ARCH,
                               cfg.MODEL.TEACHER.FORMAT, cfg.MODEL.TEACHER.USE_HEAD)
        t_dim = embedding_dim(teacher)
        # What the teacher is, not where it lives: a resume checks the same teacher still sits there.
        self.teacher_sha256 = state_dict_checksum(teacher)
        if cfg.MODEL.STUDENT.HEAD_DIM and t_dim != cfg.MODEL.STUDENT.HEAD_DIM:
            raise ConfigError(f"the teacher's embeddings are {t_dim}-d but the student head outputs "
                              f"MODEL.STUDENT.HEAD_DIM = {cfg.MODEL.STUDENT.HEAD_DIM}: set "
                              f"MODEL.STUDENT.HEAD_DIM {t_dim} (or 0: the teacher's width)")
        return teacher, t_dim

    # ----------------------------------------------------------------------------- checkpoints
    def state(self, next_iter: int) -> dict:
        state = {
            "student": self.student.state_dict(),
            "queue": self.queue.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": next_iter,
            "steps_per_epoch": self.steps_per_epoch,
            "num_images": len(self.dataset),
            "augmentation": self.augmentation,
            "config": self.cfg.dump(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }
        if self.moco:
            state["key_encoder"] = self.objective.key_encoder.state_dict()
        else:
            state["teacher_sha256"] = self.teacher_sha256
        if self.small_queue is not None:
            state["small_queue"] = self.small_queue.state_dict()
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
        self._check_resume_teacher(ckpt.get("teacher_sha256"))
        self._check_resume_schedule(ckpt)
        self.student.load_state_dict(ckpt["student"])
        self.queue.load_state_dict(ckpt["queue"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.moco:
            self.objective.key_encoder.load_state_dict(ckpt["key_encoder"])
        if self.small_queue is not None:
            self.small_queue.load_state_dict(ckpt["small_queue"])
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

    def _check_resume_teacher(self, saved: str | None) -> None:
        """The config names the teacher by its path: a file replaced there (a teacher retrained in
        place) would silently distil the rest of the run from another network."""
        if saved is None or self.moco or saved == self.teacher_sha256:
            return  # (checkpoints written before the teacher's checksum was recorded: not checkable)
        raise CheckpointError(
            f"--resume: MODEL.TEACHER.WEIGHTS {self.cfg.MODEL.TEACHER.WEIGHTS} now holds other weights than the "
            f"teacher this run started from (sha256 {saved[:12]}, now {self.teacher_sha256[:12]}): the rest of "
            f"the run would distil from another network. Put the original teacher back, or start over with "
            f"--restart (the run is moved aside, not deleted)")

    def _check_resume_schedule(self, ckpt: dict) -> None:
        """The schedule (epoch length, warmup, lr) and the image order follow from the number of
        images: a folder that grew or shrank since the checkpoint cannot continue the same run."""
        images, steps = ckpt.get("num_images"), ckpt.get("steps_per_epoch")
        if (images is None or images == len(self.dataset)) and (steps is None or steps == self.steps_per_epoch):
            return
        then = f"{images} images" if images is not None else "a different number of images"
        raise CheckpointError(
            f"--resume: DATA.ROOT {self.cfg.DATA.ROOT} now holds {len(self.dataset)} images ({self.steps_per_epoch} "
            f"iterations per epoch) but the run started with {then} ({steps} iterations per epoch). Resuming "
            f"would change the schedule (warmup, learning rate, epoch boundaries) and the image order. Restore "
            f"the image folder, or start a new run (--restart, or another OUTPUT_DIR).")

    # ----------------------------------------------------------------------------- loop
    def run(self, resume: bool = False, stop_at_iter: int | None = None) -> dict:
        start = self.load() if resume else 0
        if self.ctx.is_main:
            atomic_write_text(self.cfg.dump(), os.path.join(self.out_dir, CONFIG_FILE))
        end = self.total_iters if stop_at_iter is None else min(self.total_iters, stop_at_iter)
        self.bad_images = BadImageCounter(self.dataset.files, self.cfg.DATA.MAX_BAD_FRACTION, self.cfg.DATA.ROOT)
        self.nonfinite = NonFiniteGuard(self.cfg.LOSS.MAX_NONFINITE, self.ckpt_path)
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.stop)
            metrics = MetricsLog(self.out_dir, start, enabled=self.ctx.is_main)
            stack.callback(metrics.close)
            progress = _progress_bar(self.ctx.is_main and self.cfg.TRAIN.PROGRESS, self.total_iters, start)
            stack.callback(progress.close)
            report = PeriodicReport(metrics, progress, self.cfg.TRAIN.LOG_PERIOD, self.cfg.SOLVER.BATCH_SIZE,
                                    self.steps_per_epoch, start, self.ctx.world_size)
            # A SeedError of a DataLoader worker: its own message, the worker's traceback in the log.
            with plain_worker_errors(os.path.join(self.out_dir, LOG_FILE)):
                it = self._train(start, end, report)
        return self._finish(it)

    def _train(self, start: int, end: int, report: PeriodicReport) -> int:
        """Iterations start..end-1, epoch by epoch; returns the next iteration."""
        it = start
        while it < end:
            epoch, step = divmod(it, self.steps_per_epoch)
            self.sampler.set_position(epoch, step)
            self.bad_images.start_epoch(epoch)
            for images, bad in self.loader:
                stats = self._guarded_step(images, it, self.bad_images.new_here(bad))
                self.bad_images.add(stats.bad_images)
                if stats.stop_requested:  # every rank stops at the same step
                    self.save(it + 1)
                    raise Interrupted(self.stop.signum or signal.SIGTERM, it + 1, self.ckpt_path)
                self.nonfinite.observe(stats, it, self._lr())
                it += 1
                report.step_done(it, stats, self._lr(), self.bad_images.total, end)
                if self._checkpoint_due(it, end):
                    self.save(it)
                if it >= end:
                    break
            self.bad_images.end_epoch(self.ctx.is_main)
        return it

    def _checkpoint_due(self, it: int, end: int) -> bool:
        return it % self.cfg.TRAIN.CHECKPOINT_PERIOD == 0 or it % self.steps_per_epoch == 0 or it == end

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _finish(self, it: int) -> dict:
        summary = {"iterations": it, "finished": it >= self.total_iters, "checkpoint": self.ckpt_path,
                   "bad_images": self.bad_images.total, "precision": self.precision}
        if it >= self.total_iters and self.ctx.is_main:
            meta = meta_from_cfg(self.cfg, self.student.feature_dim, it, it / self.steps_per_epoch,
                                 self.augmentation, self.head_dim)
            summary["backbone"] = write_backbone(self.student.state_dict(), self.out_dir, meta)
        return summary

    def _guarded_step(self, images: torch.Tensor, it: int, new_bad: int):
        with stop_if_peer_lost(f"at iteration {it}", f"Last checkpoint: {self.ckpt_path}; restart with --resume."):
            return self._step(images, it, new_bad)

    def _step(self, images: torch.Tensor, it: int, new_bad: int) -> StepStats:
        cfg = self.cfg
        if isinstance(images, tuple):  # main views and small patches
            images = (images[0].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format),
                      images[1].to(self.device, non_blocking=True))
        else:
            images = images.to(self.device, non_blocking=True)
            if images.dim() == 4:
                images = images.contiguous(memory_format=self.memory_format)
        lr = lr_at(it, self.total_iters, self.peak_lr, self.warmup_iters, cfg.SOLVER.MIN_LR)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, to_enqueue = self.objective(self.model, images, autocast(self.precision, self.device))
        stats = StepStats.gather(loss, self.stop.signum is not None, new_bad, self.device)
        if not stats.finite:
            return stats  # skipped on every rank: no update, the queue stays clean (NonFiniteGuard decides)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.objective.after_step(self.model, to_enqueue)
        return stats


def _check_batch_norm_batch(student: nn.Module, cfg: CfgNode, world_size: int) -> None:
    """BatchNorm needs at least two images per batch to compute its statistics."""
    synced = cfg.MODEL.SYNC_BN and world_size > 1
    per_norm = cfg.SOLVER.BATCH_SIZE if synced else cfg.SOLVER.BATCH_SIZE // world_size
    if per_norm < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in student.modules()):
        raise ConfigError(f"SOLVER.BATCH_SIZE = {cfg.SOLVER.BATCH_SIZE} over {world_size} process(es) gives the "
                          f"BatchNorm layers of {cfg.MODEL.STUDENT.ARCH} one image per batch, from which they "
                          f"cannot compute statistics: use at least 2 images per process"
                          f"{' (or MODEL.SYNC_BN True)' if world_size > 1 else ''}")


def _progress_bar(enabled: bool, total: int, initial: int):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, desc="distill", unit="it",
                dynamic_ncols=True, smoothing=0.05)


def _as_tuple(x):
    return tuple(_as_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x
