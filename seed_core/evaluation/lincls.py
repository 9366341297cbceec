"""The paper's linear evaluation: MoCo's `main_lincls` protocol, which SEED's numbers come from.

A frozen backbone, in eval mode (its BatchNorm statistics never change), under a linear classifier
trained by SGD on augmented images:

- train: RandomResizedCrop(224) + horizontal flip; val: Resize(256) + CenterCrop(224); ImageNet
  normalisation;
- classifier weights ~ N(0, 0.01), bias 0; cross-entropy; SGD momentum 0.9, weight decay 0,
  lr 30 (not scaled with the batch), times 0.1 at epochs 60 and 80; 100 epochs; global batch 256;
- top-1 / top-5 on val after every epoch; the classifier of the best top-1 epoch is kept.

Unlike MoCo's script, every sample's augmentation is seeded by (seed, epoch, index) and the image
order by (seed, epoch), so a run resumed from any checkpoint ends exactly as the uninterrupted one.
The probe on cached features (linear.py) stays as the fast check: it sees no augmentation.

Unreadable images follow the suite's policy (seed_core.images): a training image is skipped and
counted as distillation does (replaced by the next readable one, with its label; above
`max_bad_fraction` of an epoch the run stops), nothing read up front; every val image is decoded
before any step, at every start and resume, and a bad one is refused naming the file.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms

from ..checkpoint_io import CheckpointError, atomic_save, load_untrusted
from ..constants import BEST_CLASSIFIER_FILE, CHECKPOINT_FILE, IMAGENET_MEAN, IMAGENET_STD, LOG_FILE, METRICS_FILE
from ..config import get_default_cfg
from ..data import ResumableSampler, collate, first_readable, sample_seed
from ..distributed import (DistContext, all_reduce_sum, decided_by_main, init_distributed, shutdown,
                           stop_if_peer_lost)
from ..errors import ConfigError, DatasetError
from ..images import open_rgb, refuse_unreadable
from ..monitoring import BadImageCounter, StepStats
from ..results import write_json
from ..run_dir import RunLog, claim_if_main, claim_run_dir
from ..stop_signals import Interrupted, StopSignals
from ..worker_errors import plain_process_errors, plain_worker_errors
from .backbone_io import load_backbone
from .features import build_eval_transform, open_image_folder
from .metrics import topk_correct

logger = logging.getLogger(__name__)

RUN_MARKERS = (CHECKPOINT_FILE, METRICS_FILE)
RUN_OUTPUTS = RUN_MARKERS + (BEST_CLASSIFIER_FILE, LOG_FILE)
MAX_BAD_FRACTION = get_default_cfg().DATA.MAX_BAD_FRACTION  # distillation's default, from its schema


@dataclass
class LinclsOptions:
    """One linear evaluation; the defaults are MoCo's `main_lincls` (global batch, lr unscaled)."""
    train: str
    val: str
    output_dir: str
    backbone: str | None = None       # export folder or .pth (see backbone_io.load_backbone)
    arch: str | None = None
    random_init: bool = False
    epochs: int = 100
    lr: float = 30.0
    schedule: tuple = (60, 80)        # epochs at which the lr is multiplied by 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 256             # global: split over the processes
    workers: int = 8                  # data-loading processes per process
    image_size: int = 224
    resize_size: int = 256
    seed: int = 0
    checkpoint_period: int = 1000     # iterations between checkpoints (plus every epoch)
    max_bad_fraction: float = MAX_BAD_FRACTION  # unreadable training images tolerated per epoch
    dist_timeout: float = 1800


# Options a resumed run may change: they do not change the result.
RESUME_MAY_CHANGE = {"workers", "checkpoint_period", "dist_timeout", "output_dir", "max_bad_fraction"}


def check_options(opts: LinclsOptions, world_size: int = 1) -> None:
    """Refuse impossible values before any work, naming the flag."""
    problems = []
    for name in ("epochs", "batch_size", "image_size", "resize_size", "checkpoint_period"):
        if getattr(opts, name) < 1:
            problems.append(f"--{name.replace('_', '-')} {getattr(opts, name)} must be >= 1")
    if not opts.lr > 0:
        problems.append(f"--lr {opts.lr} must be > 0")
    if not 0 <= opts.momentum < 1:
        problems.append(f"--momentum {opts.momentum} must be in [0, 1)")
    if not 0 <= opts.max_bad_fraction <= 1:
        problems.append(f"--max-bad-fraction {opts.max_bad_fraction} must be in [0, 1]")
    if opts.weight_decay < 0 or opts.workers < 0:
        problems.append("--weight-decay and --workers must be >= 0")
    if any(m < 1 for m in opts.schedule) or list(opts.schedule) != sorted(opts.schedule):
        problems.append(f"--schedule {' '.join(map(str, opts.schedule))}: epochs >= 1 in increasing order")
    if opts.resize_size < opts.image_size:
        problems.append(f"--resize-size {opts.resize_size} is smaller than the crop --image-size {opts.image_size}")
    if opts.batch_size % world_size:
        problems.append(f"--batch-size {opts.batch_size} must be divisible by the number of processes ({world_size})")
    if problems:
        raise ConfigError("linear evaluation: " + "; ".join(problems))


def build_train_transform(image_size: int) -> transforms.Compose:
    return transforms.Compose([
        transforms.RandomResizedCrop(image_size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def lr_at_epoch(opts: LinclsOptions, epoch: int) -> float:
    """MoCo's step schedule: lr x 0.1 for every milestone reached (epochs counted from 0)."""
    return opts.lr * 0.1 ** sum(epoch >= m for m in opts.schedule)


def new_classifier(feature_dim: int, num_classes: int, seed: int) -> nn.Linear:
    """MoCo's initialisation, weights ~ N(0, 0.01) drawn from `seed`, bias 0."""
    classifier = nn.Linear(feature_dim, num_classes)
    with torch.no_grad():
        classifier.weight.normal_(0.0, 0.01, generator=torch.Generator().manual_seed(seed))
        classifier.bias.zero_()
    return classifier


class AugmentedImageFolder(Dataset):
    """An ImageFolder indexed by (epoch, index) (ResumableSampler's keys); each sample's
    augmentation is seeded by seed_core.data.sample_seed, the same on any worker or resume. An
    unreadable file is replaced by the next readable one (seed_core.data.first_readable), with that
    one's label; a sample is ((image, label), the indices skipped), batched by seed_core.data.collate."""

    def __init__(self, folder: datasets.ImageFolder, transform, seed: int):
        self.folder, self.transform, self.seed = folder, transform, seed
        self.files = [path for path, _ in folder.samples]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key) -> tuple[tuple[torch.Tensor, torch.Tensor], list[int]]:
        epoch, index = key
        i, image, bad = first_readable(self.files, index, open_rgb)
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed formats a stack trace per sample (seed_core.data).
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            return (self.transform(image), torch.tensor(self.folder.samples[i][1])), bad


def run_linear_evaluation(opts: LinclsOptions, resume: bool = False, overwrite: bool = False,
                          stop_at_iter: int | None = None) -> dict:
    """Run (or resume) a linear evaluation, alone or in the process group torchrun describes;
    returns a summary. An output folder holding a run is continued (`resume`), moved aside
    (`overwrite`) or refused, before any work."""
    ctx = init_distributed(opts.dist_timeout)
    try:
        check_options(opts, ctx.world_size)
        lock = decided_by_main(ctx.is_main, lambda: claim_run_dir(
            opts.output_dir, RUN_MARKERS, resume=resume, overwrite=overwrite, outputs=RUN_OUTPUTS,
            what="--output-dir"))
        with lock if lock is not None else claim_if_main(False):
            # A SeedError of a DataLoader worker: its own message; under DDP an unexpected error of a
            # rank: one line naming it. Either traceback goes to the log.
            log = os.path.join(opts.output_dir, LOG_FILE)
            with RunLog(opts.output_dir, ["seed_core"], enabled=ctx.is_main), \
                    plain_process_errors(ctx.rank, ctx.world_size, log, passing=(Interrupted,)), \
                    plain_worker_errors(log):
                return LinearEvaluation(opts, ctx).run(resume=resume, stop_at_iter=stop_at_iter)
    finally:
        shutdown()


class LinearEvaluation:
    def __init__(self, opts: LinclsOptions, ctx: DistContext):
        self.opts, self.ctx, self.device = opts, ctx, ctx.device
        self.ckpt_path = os.path.join(opts.output_dir, CHECKPOINT_FILE)
        try:
            loaded = load_backbone(opts.backbone, opts.arch, opts.random_init, opts.seed)
        except (ValueError, FileNotFoundError) as e:  # the backbone loader's own wording, as a SeedError
            raise CheckpointError(str(e)) from None
        self.source = {"arch": loaded.arch, "backbone": loaded.source, "backbone_sha256": loaded.checksum}
        self.backbone = loaded.model.to(self.device).eval()
        self.backbone.requires_grad_(False)
        self._build_data()
        self.classifier = new_classifier(loaded.feature_dim, len(self.classes), opts.seed).to(self.device)
        if ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.classifier, device_ids=ids)
        else:
            self.model = self.classifier
        self.optimizer = torch.optim.SGD(self.classifier.parameters(), lr=opts.lr, momentum=opts.momentum,
                                         weight_decay=opts.weight_decay)
        self.history: list[dict] = []       # one entry per finished epoch
        self.best: dict | None = None       # the history entry with the best top-1
        self.epoch_loss = [0.0, 0]          # this process's loss sum and steps in the current epoch
        self.stop = StopSignals()

    def _build_data(self) -> None:
        opts, ctx = self.opts, self.ctx
        try:
            train = open_image_folder(opts.train)
            val = open_image_folder(opts.val, build_eval_transform(opts.image_size, opts.resize_size))
        except FileNotFoundError as e:
            raise DatasetError(str(e)) from None
        if train.classes != val.classes:
            raise DatasetError(f"the class folders of --train {opts.train} and --val {opts.val} differ: "
                               f"{sorted(set(train.classes) ^ set(val.classes))[:8]}; both need the same classes")
        if len(train.samples) < opts.batch_size:
            raise DatasetError(f"--train {opts.train} has {len(train.samples)} images, fewer than one batch "
                               f"(--batch-size {opts.batch_size}): lower --batch-size or add images")
        # The image policy (seed_core.images): training skips and counts (the loop's BadImageCounter);
        # evaluation refuses: every val image decodes, or one error naming a bad file, before any step,
        # at every start and resume (a val set is small; a skipped image would change the metric).
        decided_by_main(ctx.is_main, lambda: refuse_unreadable(
            [path for path, _ in val.samples], f"--val {opts.val}", opts.workers))
        self.classes = train.classes
        self.train_set = AugmentedImageFolder(train, build_train_transform(opts.image_size), opts.seed)
        self.bad_images = BadImageCounter(self.train_set.files, opts.max_bad_fraction, opts.train,
                                          key="--max-bad-fraction")
        self.sampler = ResumableSampler(len(self.train_set), opts.batch_size, ctx.rank, ctx.world_size, opts.seed)
        cuda = self.device.type == "cuda"
        self.loader = DataLoader(self.train_set, batch_size=self.sampler.local_batch, sampler=self.sampler,
                                 collate_fn=collate, num_workers=opts.workers, pin_memory=cuda, drop_last=True,
                                 persistent_workers=opts.workers > 0,
                                 generator=torch.Generator().manual_seed(opts.seed))
        # Each process scores its own share of val; the counts are summed.
        self.num_val = len(val.samples)
        shard = Subset(val, range(ctx.rank, self.num_val, ctx.world_size))
        self.val_loader = DataLoader(shard, batch_size=self.sampler.local_batch, num_workers=opts.workers,
                                     pin_memory=cuda)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.total_iters = opts.epochs * self.steps_per_epoch
        if ctx.is_main:
            logger.info("linear evaluation of %s: %d train / %d val images, %d classes, %d iterations per "
                        "epoch, %d epochs, lr %g", self.source["backbone"], len(self.train_set), self.num_val,
                        len(self.classes), self.steps_per_epoch, opts.epochs, opts.lr)

    # ----------------------------------------------------------------------------- the recipe
    def step(self, images: torch.Tensor, labels: torch.Tensor, lr: float) -> torch.Tensor:
        """One SGD step of the classifier on the frozen backbone's features; returns the loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.no_grad():
            features = self.backbone(images.to(self.device, non_blocking=True)).flatten(1)
        loss = F.cross_entropy(self.model(features), labels.to(self.device, non_blocking=True))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def validate(self) -> dict:
        """Top-1 / top-5 (%) over the whole val set, summed over the processes' shares."""
        counts = torch.zeros(3, dtype=torch.int64)
        for images, labels in self.val_loader:
            scores = self.classifier(self.backbone(images.to(self.device, non_blocking=True)).flatten(1))
            correct = topk_correct(scores.cpu(), labels, ks=(1, 5))
            counts += torch.tensor([len(labels), correct[1], correct[5]])
        n, top1, top5 = all_reduce_sum(counts.to(self.device)).cpu().tolist()
        return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n}

    # ----------------------------------------------------------------------------- the loop
    def run(self, resume: bool = False, stop_at_iter: int | None = None) -> dict:
        it = self.load() if resume else 0
        end = self.total_iters if stop_at_iter is None else min(self.total_iters, stop_at_iter)
        with self.stop:  # SIGTERM / SIGINT: finish the step, checkpoint, raise Interrupted
            while it < end:
                epoch, step = divmod(it, self.steps_per_epoch)
                self.sampler.set_position(epoch, step)
                if step == 0:  # a resumed epoch keeps the counts of its checkpoint
                    self.bad_images.start_epoch(epoch + 1)
                lr = lr_at_epoch(self.opts, epoch)
                for (images, labels), bad in self.loader:
                    with stop_if_peer_lost(f"at iteration {it}", f"Continue with --resume ({self.ckpt_path})."):
                        loss = self.step(images, labels, lr)
                        # every process stops at the same step, whichever received the signal, and
                        # counts the same unreadable images
                        stats = StepStats.gather(loss, self.stop.signum is not None,
                                                 self.bad_images.new_here(bad), self.device)
                    self.bad_images.add(stats.bad_images)
                    stop = stats.stop_requested
                    self.epoch_loss = [self.epoch_loss[0] + loss.item(), self.epoch_loss[1] + 1]
                    it += 1
                    if it % self.steps_per_epoch == 0:
                        self._end_epoch(epoch, lr)
                        self.save(it)
                    elif it % self.opts.checkpoint_period == 0 or it == end or stop:
                        self.save(it)
                    if stop:
                        raise Interrupted(self.stop.signum or signal.SIGTERM, it, self.ckpt_path)
                    if it >= end:
                        break
        return self.summary(it)

    def _end_epoch(self, epoch: int, lr: float) -> None:
        with stop_if_peer_lost(f"validating epoch {epoch + 1}", f"Continue with --resume ({self.ckpt_path})."):
            acc = self.validate()
        entry = {"epoch": epoch + 1, "lr": lr, "train_loss": self.epoch_loss[0] / max(1, self.epoch_loss[1]), **acc,
                 "bad_images": self.bad_images.in_epoch}  # unreadable training images skipped, all processes
        self.history.append(entry)
        self.epoch_loss = [0.0, 0]
        self.bad_images.end_epoch(self.ctx.is_main)
        improved = self.best is None or acc["top1"] > self.best["top1"]
        if improved:
            self.best = entry
        if self.ctx.is_main:
            logger.info("epoch %d/%d: lr %g, train loss %.4f, val top-1 %.2f, top-5 %.2f%s", epoch + 1,
                        self.opts.epochs, lr, entry["train_loss"], acc["top1"], acc["top5"],
                        " (best)" if improved else "")
            if improved:
                atomic_save({"classifier": self.classifier.state_dict(), **entry, **self.source,
                             "classes": self.classes},
                            os.path.join(self.opts.output_dir, BEST_CLASSIFIER_FILE))
            write_json(os.path.join(self.opts.output_dir, METRICS_FILE), self.report())

    def report(self) -> dict:
        """What metrics.json holds: the settings, the last and the best epoch, every epoch."""
        last, best = (self.history[-1] if self.history else {}), self.best or {}
        return {"protocol": "lincls", **self.source, "train": self.opts.train, "val": self.opts.val,
                "num_train": len(self.train_set), "num_val": self.num_val, "num_classes": len(self.classes),
                "settings": _settings(self.opts), "epochs_done": len(self.history),
                "top1": last.get("top1"), "top5": last.get("top5"), "best_epoch": best.get("epoch"),
                "best_top1": best.get("top1"), "best_top5": best.get("top5"), "bad_images": self.bad_images.total,
                "history": self.history}

    def summary(self, it: int) -> dict:
        return {"iterations": it, "finished": it >= self.total_iters, "checkpoint": self.ckpt_path,
                "best": os.path.join(self.opts.output_dir, BEST_CLASSIFIER_FILE),
                "metrics": os.path.join(self.opts.output_dir, METRICS_FILE), **self.report()}

    # ----------------------------------------------------------------------------- checkpoints
    def save(self, next_iter: int) -> None:
        if not self.ctx.is_main:
            return
        state = {"classifier": self.classifier.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "iteration": next_iter, "history": self.history, "best": self.best,
                 "epoch_loss": self.epoch_loss, "bad_images": self.bad_images.state_dict(),
                 "settings": _settings(self.opts), **self.source,
                 "num_train": len(self.train_set), "classes": self.classes}
        try:
            atomic_save(state, self.ckpt_path)
        except OSError as e:
            raise CheckpointError(f"could not write {self.ckpt_path} ({e.strerror or e}); the previous "
                                  "checkpoint, if any, is intact. Free space or fix permissions, then --resume") from e

    def load(self) -> int:
        if not os.path.isfile(self.ckpt_path):
            raise CheckpointError(f"--resume: no checkpoint at {self.ckpt_path}; start without --resume")
        ckpt = load_untrusted(self.ckpt_path, map_location=self.device)
        if not isinstance(ckpt, dict) or not {"classifier", "optimizer", "iteration"} <= set(ckpt):
            raise CheckpointError(f"--resume: {self.ckpt_path} is not a checkpoint of the linear evaluation; "
                                  "use the --output-dir of one, or start without --resume")
        identity = ("backbone_sha256", "num_train", "classes")
        saved = {**ckpt.get("settings", {}), **{k: ckpt.get(k) for k in identity}}
        now = {**_settings(self.opts), "backbone_sha256": self.source["backbone_sha256"],
               "num_train": len(self.train_set), "classes": self.classes}
        changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v]
        if changed:
            raise CheckpointError(f"--resume: {self.ckpt_path} was written by another evaluation, which this one "
                                  "would not continue:\n  " + "\n  ".join(changed) +
                                  "\nUse the original backbone, images and settings, or another --output-dir.")
        self.classifier.load_state_dict(ckpt["classifier"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.history, self.best = list(ckpt["history"]), ckpt["best"]
        self.epoch_loss = list(ckpt["epoch_loss"])
        if "bad_images" in ckpt:  # absent from checkpoints written before training skipped them
            self.bad_images.load_state_dict(ckpt["bad_images"])
        return int(ckpt["iteration"])


def _settings(opts: LinclsOptions) -> dict:
    """The options that decide the result (those a resume may not change), in plain types."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(opts).items()
            if k not in RESUME_MAY_CHANGE}
