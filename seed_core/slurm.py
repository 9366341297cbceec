"""A distillation as a SLURM job, through submitit (as MoCo's and DINO's launchers): one task per
GPU on each of N nodes, every task one DDP process of the trainer.

Preemption and time-out: submitit asks SLURM to send SIGUSR2 (`--signal USR2@90`) before it stops
the job. Every task turns it into the SIGTERM the trainer already stops on: the ranks agree on the
step, the main one writes checkpoint.pth, and then submitit's checkpoint protocol
(`DistillJob.checkpoint`) requeues the same job. A job finds its run by OUTPUT_DIR: with a
checkpoint there it resumes (exactly, as --resume does), without one it starts. A plain SIGTERM
(scancel) also writes the checkpoint but ends the job: continue it with --resume.

submitit is optional (the `slurm` extra); without it `require_submitit` says how to install it.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
from dataclasses import dataclass

from .config import CfgNode, ConfigError, cfg_from_string, validate_cfg
from .constants import CHECKPOINT_FILE
from .download import Progress
from .errors import CheckpointError, SeedError
from .trainer import Interrupted, claim_output_dir, train
from . import zoo

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "seed-transfer[slurm]" (or: pip install submitit)'
SUBMITIT_FOLDER = "slurm"  # inside OUTPUT_DIR: the job's pickles and stdout/stderr, one pair per task


@dataclass
class SlurmOptions:
    nodes: int = 1
    gpus_per_node: int = 8
    partition: str = ""           # empty: the cluster's default partition
    time: str = "72:00:00"        # SLURM's time-limit syntax; the job is requeued when it runs out
    cpus_per_task: int = 0        # 0: DATA.NUM_WORKERS + 1 (the loader's workers and the trainer)


class SubmititMissingError(SeedError):
    """--slurm without the submitit package."""


def require_submitit():
    """The submitit module, or an error saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise SubmititMissingError(f"--slurm submits through the submitit package, which is not installed: "
                                   f"{INSTALL_HINT}") from None
    return submitit


_TIME_FORMATS = (  # SLURM's --time: minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]]
    (r"(\d+)", ("m",)), (r"(\d+):(\d+)", ("m", "s")), (r"(\d+):(\d+):(\d+)", ("h", "m", "s")),
    (r"(\d+)-(\d+)", ("d", "h")), (r"(\d+)-(\d+):(\d+)", ("d", "h", "m")), (r"(\d+)-(\d+):(\d+):(\d+)", ("d", "h", "m", "s")))
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def time_limit_minutes(text: str) -> int:
    """Minutes of a SLURM time limit ("90", "1:30:00", "2-00:00:00"), rounded up."""
    for pattern, units in _TIME_FORMATS:
        match = re.fullmatch(pattern, text.strip())
        if match:
            seconds = sum(int(v) * _SECONDS[u] for v, u in zip(match.groups(), units))
            if seconds > 0:
                return -(-seconds // 60)
    raise ConfigError(f"--time {text!r} is not a SLURM time limit > 0: use minutes (90), hours:minutes:seconds "
                      "(1:30:00) or days-hours:minutes:seconds (2-00:00:00)")


def executor_parameters(cfg: CfgNode, opts: SlurmOptions) -> dict:
    """submitit's AutoExecutor parameters for the job (checked: bad values raise ConfigError)."""
    problems = [f"--{name.replace('_', '-')} {getattr(opts, name)} must be >= 1"
                for name in ("nodes", "gpus_per_node") if getattr(opts, name) < 1]
    if opts.cpus_per_task < 0:
        problems.append(f"--cpus-per-task {opts.cpus_per_task} must be >= 0 (0: DATA.NUM_WORKERS + 1)")
    if problems:
        raise ConfigError("; ".join(problems))
    params = {"name": "seed-distill", "nodes": opts.nodes, "gpus_per_node": opts.gpus_per_node,
              "tasks_per_node": opts.gpus_per_node, "timeout_min": time_limit_minutes(opts.time),
              "cpus_per_task": opts.cpus_per_task or cfg.DATA.NUM_WORKERS + 1}
    if opts.partition:
        params["slurm_partition"] = opts.partition
    return params


def submit(cfg: CfgNode, opts: SlurmOptions, resume: bool = False, restart: bool = False, cluster: str = "slurm",
           download_progress: Progress | None = None, job_setup=None):
    """Check the run and submit it; returns the submitit job. Everything a user can get wrong is
    refused here, on the login node, not in a job log: the config for N x G processes, the data
    and teacher paths, and OUTPUT_DIR (a run there needs --resume or --restart, which moves it
    aside now). A `zoo:NAME` teacher is fetched here (its download reported to `download_progress`),
    so a job never starts without it. `cluster` "local" runs the job on this machine (submitit's
    local executor). `job_setup`: a picklable function every task calls first, once its rank is
    known (the application's logging setup)."""
    submitit = require_submitit()
    params = executor_parameters(cfg, opts)
    cfg = cfg.clone()
    cfg.defrost()
    paths = ("OUTPUT_DIR", "DATA.ROOT") + (() if zoo.zoo_name(cfg.MODEL.TEACHER.WEIGHTS) else ("MODEL.TEACHER.WEIGHTS",))
    for key in paths:  # the job may start in another folder; a zoo:NAME is not a path
        node, name = cfg, key
        while "." in name:
            head, name = name.split(".", 1)
            node = node[head]
        if node[name]:
            node[name] = os.path.abspath(node[name])
    validate_cfg(cfg, opts.nodes * opts.gpus_per_node)
    if not os.path.isdir(cfg.DATA.ROOT):
        raise ConfigError(f"DATA.ROOT {cfg.DATA.ROOT} is not a folder: the job would fail at once")
    no_file = cfg.LOSS.NAME == "moco" or zoo.zoo_name(cfg.MODEL.TEACHER.WEIGHTS) is not None
    if not no_file and not os.path.isfile(cfg.MODEL.TEACHER.WEIGHTS):
        raise ConfigError(f"MODEL.TEACHER.WEIGHTS {cfg.MODEL.TEACHER.WEIGHTS} is not a file: the job would fail at once")
    checkpoint = os.path.join(cfg.OUTPUT_DIR, CHECKPOINT_FILE)
    if resume and not os.path.isfile(checkpoint):
        raise CheckpointError(f"--resume: no checkpoint at {checkpoint}; start without --resume")
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("--slurm: sbatch is not on PATH; submit from a SLURM login node")
    if cfg.LOSS.NAME != "moco":
        zoo.resolve(cfg.MODEL.TEACHER.WEIGHTS, download_progress)  # a zoo teacher: fetched now, not in the job
    with claim_output_dir(cfg.OUTPUT_DIR, resume, restart, is_main=True):
        pass  # refused, or free for the job (a --restart has moved the old run aside)
    executor = submitit.AutoExecutor(folder=os.path.join(cfg.OUTPUT_DIR, SUBMITIT_FOLDER), cluster=cluster)
    executor.update_parameters(**params)
    job = executor.submit(DistillJob(cfg.dump(), job_setup))
    logger.info("submitted job %s: %d node(s) x %d task(s); logs in %s", job.job_id, opts.nodes,
                opts.gpus_per_node, job.paths.folder)
    return job


def _preemption_signal() -> int:
    """The signal submitit has SLURM send before a preemption or time-out (USR2 unless changed)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


class DistillJob:
    """What every task of the job runs; picklable (the config travels as YAML text)."""

    def __init__(self, cfg_text: str, setup=None):
        self.cfg_text, self.setup = cfg_text, setup

    def __call__(self) -> dict | None:
        submitit = require_submitit()
        env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if self.setup is not None:
            self.setup()  # after export(): RANK is set
        cfg = cfg_from_string(self.cfg_text)
        preempted = []
        sig = _preemption_signal()
        requeue = signal.getsignal(sig)  # submitit's: calls self.checkpoint, then requeues the job

        def stop_for_requeue(signum, frame):
            preempted.append(signum)
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer checkpoints and stops on SIGTERM

        signal.signal(sig, stop_for_requeue)
        # A checkpoint in OUTPUT_DIR is this job's (submission refused a run it was not asked to
        # resume): continue it. Without one, files of an attempt killed before its first
        # checkpoint are moved aside.
        resume = os.path.isfile(os.path.join(cfg.OUTPUT_DIR, CHECKPOINT_FILE))
        try:
            return train(cfg, resume=resume, restart=not resume)
        except Interrupted:
            if not preempted:
                raise  # scancel or another SIGTERM: checkpoint written, the job ends
            if env.rank == 0 and callable(requeue):
                requeue(sig, None)  # exits the process (requeued) or raises (requeued too often)
            logger.warning("stopped for preemption or time-out; the job is requeued")
            return None

    def checkpoint(self, *args, **kwargs):
        """submitit's checkpoint protocol: the job to requeue (this one: it resumes from OUTPUT_DIR)."""
        return require_submitit().helpers.DelayedSubmission(DistillJob(self.cfg_text, self.setup))
