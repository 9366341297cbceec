#!/usr/bin/env python
"""Distil a self-supervised teacher into a student (SEED), or train with MoCo-v2.

    python tools/distill.py --config configs/distill/r18_from_mocov2_r50.yaml DATA.ROOT /data/imagenet/train
    torchrun --nproc_per_node 8 tools/distill.py --config ... [KEY VALUE ...] [--resume | --restart]

An OUTPUT_DIR (--output-dir DIR is OUTPUT_DIR DIR) that already holds a run is never overwritten:
continue it with --resume, or start over with --restart (also spelt --overwrite; its files are first
moved to OUTPUT_DIR/previous-<time>/). A folder another run is writing is refused (OUTPUT_DIR/.lock
names it). The log of the run goes to OUTPUT_DIR/log.txt. MODEL.TEACHER.WEIGHTS zoo:NAME names a
public teacher (tools/zoo.py list), downloaded before the run starts. Installed as `seed-distill`.

On a SLURM cluster (needs submitit: pip install "seed-transfer[slurm]"), submit the same run as a
job of N nodes x G GPUs, requeued on preemption or time-out and resumed exactly:

    python tools/distill.py --config ... --slurm --nodes 4 --gpus-per-node 8 [--partition P --time 72:00:00]
"""
import argparse
import sys

from seed_core.config import load_cfg
from seed_core.distributed import is_main_process
from seed_core.slurm import SlurmOptions, submit
from seed_core.trainer import Interrupted, train
from tools import cli

SLURM_DEFAULTS = SlurmOptions()
SLURM_FLAGS = ("nodes", "gpus_per_node", "partition", "time", "cpus_per_task")


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.ArgumentParser(__doc__)
    cli.add_config(p, "YAML config (see configs/distill/)")
    cli.add_output_dir(p, "output folder (the config's OUTPUT_DIR)")
    cli.add_resume(p, "continue from OUTPUT_DIR/checkpoint.pth")
    p.add_argument("--restart", "--overwrite", dest="restart", action="store_true",
                   help="OUTPUT_DIR holds a run: move its files to OUTPUT_DIR/previous-<time>/ and start over")
    p.add_argument("--stop-at-iter", type=int, default=None,
                   help="checkpoint and stop after this iteration (the schedule is unchanged)")
    g = p.add_argument_group("SLURM (through submitit)")
    g.add_argument("--slurm", action="store_true", help="submit the run as a SLURM job and return")
    g.add_argument("--nodes", type=int, help=f"nodes (default {SLURM_DEFAULTS.nodes})")
    g.add_argument("--gpus-per-node", type=int, help=f"GPUs per node, one process each (default {SLURM_DEFAULTS.gpus_per_node})")
    g.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    g.add_argument("--time", help=f"time limit of each attempt (default {SLURM_DEFAULTS.time}); the job is requeued when it runs out")
    g.add_argument("--cpus-per-task", type=int, help="CPUs per process (default DATA.NUM_WORKERS + 1)")
    args = cli.parse_with_overrides(p, argv)
    given = [f"--{k.replace('_', '-')}" for k in SLURM_FLAGS if getattr(args, k) is not None]
    if given and not args.slurm:
        p.error(f"{', '.join(given)} only apply with --slurm")
    if args.slurm and args.stop_at_iter is not None:
        p.error("--stop-at-iter does not apply with --slurm (a requeued job runs to the end)")
    return args


def slurm_options(args: argparse.Namespace) -> SlurmOptions:
    given = {k: getattr(args, k) for k in SLURM_FLAGS if getattr(args, k) is not None}
    return SlurmOptions(**given)


def main(argv=None) -> int:
    return cli.run(lambda: _main(argv))


def _main(argv) -> int:
    args = parse_args(argv)
    cli.setup_logging()
    cfg = load_cfg(args.config_file or None, cli.overrides(args))
    if args.slurm:
        with cli.DownloadBar("teacher") as bar:  # a zoo:NAME teacher is fetched before submission
            job = submit(cfg, slurm_options(args), resume=args.resume, restart=args.restart, download_progress=bar,
                         job_setup=cli.setup_logging)
        print(f"submitted SLURM job {job.job_id}; its logs: {job.paths.folder}; the run writes to "
              f"{cfg.OUTPUT_DIR} (follow log.txt there)")
        return 0
    try:
        with cli.DownloadBar("teacher") as bar:  # a zoo:NAME teacher not yet cached
            summary = train(cfg, resume=args.resume, stop_at_iter=args.stop_at_iter, restart=args.restart,
                            download_progress=bar)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return 128 + int(e.signum)
    if is_main_process():
        if summary.get("backbone"):
            print(f"student backbone written to {summary['backbone']}")
        else:
            print(f"stopped after iteration {summary['iterations']}; checkpoint: {summary['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
