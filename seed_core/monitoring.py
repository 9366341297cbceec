"""What the distillation loop watches and reports, one small part each: the per-step numbers every
rank agrees on, the non-finite-loss policy, unreadable images, and the periodic metrics record."""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

import torch

from .checkpoint_io import atomic_write_text
from .constants import METRICS_LOG_FILE
from .distributed import all_reduce_sum
from .errors import NonFiniteLossError, TooManyBadImagesError
from .results import move_aside

logger = logging.getLogger(__name__)


@dataclass
class StepStats:
    """Summed over all ranks by one small all-reduce, so every rank takes the same decision at the
    same step (no rank is left waiting in a collective)."""
    loss: float            # sum of the ranks' losses
    stop_requested: bool   # a rank received SIGTERM / SIGINT
    bad_images: int        # unreadable images first seen in this step, all ranks

    @classmethod
    def gather(cls, loss: torch.Tensor, stop_requested: bool, new_bad: int, device: torch.device) -> "StepStats":
        t = torch.tensor([loss.detach().float().item(), float(stop_requested), float(new_bad)], dtype=torch.float64)
        loss_sum, stops, bad = all_reduce_sum(t.to(device)).cpu().tolist()
        return cls(loss_sum, stops > 0, int(bad))

    @property
    def finite(self) -> bool:
        return bool(torch.isfinite(torch.tensor(self.loss)))


class NonFiniteGuard:
    """A step whose loss is not finite is skipped (no update, the queue untouched); more than
    LOSS.MAX_NONFINITE of them in a row stop the run."""

    def __init__(self, max_consecutive: int, checkpoint_path: str):
        self.max_consecutive, self.checkpoint_path = max_consecutive, checkpoint_path
        self.consecutive = 0

    def observe(self, stats: StepStats, iteration: int, lr: float) -> None:
        if stats.finite:
            self.consecutive = 0
            return
        self.consecutive += 1
        if self.consecutive > self.max_consecutive:
            raise NonFiniteLossError(
                f"the loss is not finite at iteration {iteration} (lr {lr:.4g}; {self.consecutive} such step(s) "
                f"in a row, LOSS.MAX_NONFINITE = {self.max_consecutive}); stopping. The last good checkpoint "
                f"is kept at {self.checkpoint_path}. Lower SOLVER.BASE_LR or check the teacher weights.")
        logger.warning("iteration %d: loss not finite, step skipped (%d in a row, LOSS.MAX_NONFINITE = %d)",
                       iteration, self.consecutive, self.max_consecutive)


class BadImageCounter:
    """Unreadable images (replaced by the next readable one by the dataset), counted over all
    ranks per epoch and for the run; above `key` (DATA.MAX_BAD_FRACTION for distillation) of an
    epoch the run stops and names a few of them."""

    def __init__(self, files: list[str], max_fraction: float, root: str, shown: int = 5,
                 key: str = "DATA.MAX_BAD_FRACTION"):
        self.files, self.max_fraction, self.root, self.shown, self.key = files, max_fraction, root, shown, key
        self.total = 0
        self.start_epoch(0)

    def state_dict(self) -> dict:
        """The counts a checkpoint keeps, so that a resumed run reports the epoch's and the run's."""
        return {"epoch": self.epoch, "in_epoch": self.in_epoch, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.start_epoch(int(state["epoch"]))
        self.in_epoch, self.total = int(state["in_epoch"]), int(state["total"])

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.in_epoch, self.seen_here = epoch, 0, set()

    def new_here(self, bad_indices) -> int:
        """How many of this batch's unreadable images this rank had not met yet this epoch."""
        new = set(bad_indices) - self.seen_here
        self.seen_here |= new
        return len(new)

    def add(self, count_all_ranks: int) -> None:
        self.in_epoch += count_all_ranks
        self.total += count_all_ranks
        limit = self.max_fraction * len(self.files)
        if self.in_epoch > limit:
            raise TooManyBadImagesError(
                f"{self.in_epoch} unreadable images in epoch {self.epoch}, more than {self.key} = "
                f"{self.max_fraction} of {len(self.files)}; for example {self._examples()}. Fix or remove "
                f"them under {self.root}, or raise {self.key}")

    def end_epoch(self, is_main: bool) -> None:
        if self.in_epoch and is_main:
            logger.warning("epoch %d: %d unreadable images skipped (replaced by the next readable image); "
                           "%d in the run so far, e.g. %s", self.epoch, self.in_epoch, self.total, self._examples())

    def _examples(self) -> str:
        names = [os.path.relpath(self.files[i], self.root) for i in sorted(self.seen_here)[:self.shown]]
        more = len(self.seen_here) - len(names)
        return ", ".join(names) + (f" (+{more} more)" if more > 0 else "") if names else "(seen by another process)"


def _metric_record(line: bytes) -> dict | None:
    """A metrics.jsonl line as its record, or None when it is not one (torn, binary, another schema)."""
    try:
        rec = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    iteration = rec.get("iteration") if isinstance(rec, dict) else None
    return rec if isinstance(iteration, int) and not isinstance(iteration, bool) else None


def resumed_metrics_lines(path: str, start_iter: int) -> list[str]:
    """The lines of an existing metrics log a run resumed at `start_iter` keeps (records up to it).

    Nothing is lost silently: a torn last line (a run killed while writing it) is dropped with a
    warning; any other line that is not a record (garbage, binary, another tool's file) has the whole
    file moved aside to `<name>.damaged-<time>` with a warning, and its good records are kept."""
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    records = [_metric_record(line) for line in lines]
    bad = [n for n, rec in enumerate(records, 1) if rec is None and lines[n - 1].strip()]
    torn_last = bad == [len(lines)] and not lines[-1].endswith(b"\n")
    if torn_last:
        logger.warning("%s: its last line (line %d) is torn, as a run killed while writing it leaves it; "
                       "dropped it", path, len(lines))
    elif bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        move_aside(path, "damaged", f"line{'s' if len(bad) > 1 else ''} {shown} ({len(bad)} of {len(lines)}) "
                                    "are not metric records")
    kept = [line.decode("utf-8").rstrip() + "\n" for line, rec in zip(lines, records)
            if rec is not None and rec["iteration"] <= start_iter]
    later = sum(1 for rec in records if rec is not None and rec["iteration"] > start_iter)
    if later:
        logger.info("%s: %d records past the resumed iteration %d dropped (they are run again)", path, later,
                    start_iter)
    return kept


class MetricsLog:
    """metrics.jsonl (+ TensorBoard) on rank 0; on resume, records past the checkpoint are dropped
    so the log matches the resumed run (a damaged log: see `resumed_metrics_lines`)."""

    def __init__(self, out_dir: str, start_iter: int, enabled: bool):
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.path = os.path.join(out_dir, METRICS_LOG_FILE)
        kept = resumed_metrics_lines(self.path, start_iter) if os.path.exists(self.path) else []
        atomic_write_text("".join(kept), self.path)
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


class PeriodicReport:
    """Every `period` iterations (and at the last one): mean loss of the finite steps (NaN when every
    step was skipped), skipped steps, lr, images/s and unreadable images so far, to the metrics log
    and the progress bar."""

    def __init__(self, metrics: MetricsLog, progress, period: int, batch_size: int, steps_per_epoch: int,
                 start: int, world_size: int):
        self.metrics, self.progress, self.period = metrics, progress, period
        self.batch_size, self.steps_per_epoch, self.world_size = batch_size, steps_per_epoch, world_size
        self.t_last, self.it_last, self.loss_sum, self.finite_steps = time.time(), start, 0.0, 0

    def step_done(self, it: int, stats: StepStats, lr: float, bad_total: int, end: int) -> None:
        if stats.finite:
            self.loss_sum += stats.loss / self.world_size
            self.finite_steps += 1
        self.progress.update(1)
        if it % self.period and it != end:
            return
        now, n = time.time(), it - self.it_last
        loss = self.loss_sum / self.finite_steps if self.finite_steps else float("nan")
        rec = {"iteration": it, "epoch": round(it / self.steps_per_epoch, 4), "loss": loss,
               "skipped_steps": n - self.finite_steps, "lr": lr, "images_per_s": n * self.batch_size / max(now - self.t_last, 1e-9), "bad_images": bad_total}
        self.metrics.write(rec)
        self.progress.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.3g}")
        self.t_last, self.it_last, self.loss_sum, self.finite_steps = now, it, 0.0, 0
