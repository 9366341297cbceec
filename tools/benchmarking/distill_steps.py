"""The SEED training step as the trainer runs it, for speed benchmarks (benchmarks/distill_step.py,
benchmarks/teacher_precision.py), and the interleaved timing both use."""
from __future__ import annotations

import statistics
import time

import torch

from seed_core.config import get_default_cfg
from seed_core.encoders import build_student
from seed_core.objectives import DistillationObjective
from seed_core.precision import DTYPES, autocast, make_grad_scaler
from seed_core.queue import EmbeddingQueue
from seed_core.teacher_precision import cast_teacher, resolve_teacher_precision
from seed_core.teachers import FrozenTeacher, fold_batchnorm

LOSS = get_default_cfg().LOSS  # the paper's temperatures, tau_S and tau_T
TEACHER_PRECISION = get_default_cfg().TRAIN.TEACHER_PRECISION  # the trainer's default


def make_teacher(arch, dim, seed=1):
    torch.manual_seed(seed)
    net = build_student(arch, head_dim=dim)
    return FrozenTeacher(net.backbone, net.head)


class OursStep:
    """Our training step, on any device (the trainer's code path: AMP autocast, a GradScaler for
    fp16, channels_last, optionally a compiled student); with `small_patches`, inputs are (main
    views, small patches) and a second queue holds the small patches' teacher embeddings."""

    def __init__(self, student, teacher, queue_init, precision, channels_last=True, small_patches=False,
                 device=torch.device("cpu"), compile_student=False, teacher_precision=TEACHER_PRECISION):
        self.precision, self.device = precision, device
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.student = student.to(device, memory_format=self.fmt)
        self.queue = queue_from(queue_init, device)
        small_queue = queue_from(queue_init, device) if small_patches else None
        # The teacher prepared and the objective built as in training (the objective gives each
        # queue its reduced-precision copy).
        t_prec = resolve_teacher_precision(teacher_precision, device.type)
        t_net, t_dtype = cast_teacher(teacher.to(device), t_prec, fold_batchnorm, self.fmt)
        self.objective = DistillationObjective(t_net, self.queue, "seed", LOSS.STUDENT_TEMP, LOSS.TEACHER_TEMP,
                                               teacher_dtype=t_dtype, student_dtype=DTYPES[precision],
                                               small_queue=small_queue)
        self.opt = torch.optim.SGD(self.student.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        self.scaler = make_grad_scaler(precision, device)
        self.forward_student = torch.compile(self.student) if compile_student else self.student

    def _inputs(self, x):
        to = dict(device=self.device, non_blocking=True)
        if isinstance(x, tuple):
            return x[0].to(**to).contiguous(memory_format=self.fmt), x[1].to(**to)
        return x.to(**to).contiguous(memory_format=self.fmt)

    def loss_only(self, x):
        with torch.no_grad():
            loss, _ = self.objective(self.student, self._inputs(x), autocast(self.precision, self.device))
        return float(loss)

    def __call__(self, x):
        loss, z_t = self.objective(self.forward_student, self._inputs(x), autocast(self.precision, self.device))
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.objective.after_step(self.student, z_t)
        return loss


def queue_from(init: torch.Tensor, device=torch.device("cpu")) -> EmbeddingQueue:
    queue = EmbeddingQueue(*init.shape)
    queue.load_state_dict({"embeddings": init.clone(), "ptr": torch.zeros((), dtype=torch.long)})
    return queue.to(device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU runs asynchronously: time only finished steps)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(steps: dict, x, repeats: int, warmup: int, device=torch.device("cpu")) -> dict:
    for _ in range(warmup):
        for fn in steps.values():
            fn(x)
    times = {k: [] for k in steps}
    for _ in range(repeats):
        for k, fn in steps.items():
            synchronize(device)
            t0 = time.perf_counter()
            fn(x)
            synchronize(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}
