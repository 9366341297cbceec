#!/usr/bin/env python
"""Each student method at its own best settings on the digits harness (benchmarks/paper_claim.py).

Every sweep point is a config variant in configs/paper_claim/sweep/ (lr x MoCo key momentum for
MoCo-v2 alone, lr for SEED and for L2 distillation). Each point is trained with --sweep-seeds; per
method the point with the highest k-NN top-1 on the held-out split wins (the rule the teacher's lr
was picked by) and is then trained with every seed of --seeds. Writes
<output-dir>/lr_sweep_<arch>.{md,json}.

    python benchmarks/lr_sweep.py --arch resnet18                       # all points in the folder
    python benchmarks/lr_sweep.py --arch resnet18 --points configs/paper_claim/sweep/mocov2_lr0.0*.yaml
    python benchmarks/lr_sweep.py --tiny                 # seconds: pipeline check in a temporary folder

Runs are cached with the main table's (same --work-dir): a point equal to the main table's
settings reuses its runs.
"""
import argparse
import glob
import json
import logging
import os
import sys
import time
from dataclasses import replace

import torch

from seed_core.config import ConfigError
from tools.benchmarking.lr_sweep import run_sweep, sweep_table
from tools.benchmarking.paper_claim import TINY, Settings, choose_folders
from tools.cli import add_results_dir

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
DEFAULT_WORK = os.path.join(ROOT, "output", "paper_claim")
SWEEP_DIR = os.path.join(ROOT, "configs", "paper_claim", "sweep")
TINY_POINTS = ("mocov2_lr0.03", "mocov2_m0.999_lr0.03", "seed_lr0.015", "seed_lr0.03", "l2_lr0.03")


def parse_args(argv=None):
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18", help="student architecture")
    p.add_argument("--points", nargs="+", default=None,
                   help=f"sweep point YAML files (default: every file in {SWEEP_DIR})")
    p.add_argument("--sweep-seeds", nargs="+", type=int, default=[0])
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds), help="seeds of each method's best point")
    add_results_dir(p, help=f"table and JSON go here (default: {RESULTS}; with --tiny a temporary folder)")
    p.add_argument("--work-dir", default=None,
                   help=f"dataset and cached runs (default: {DEFAULT_WORK}, shared with paper_claim.py; "
                        "with --tiny a temporary folder)")
    p.add_argument("--teacher-run", default="",
                   help="reuse this finished teacher run folder (<work-dir>/runs/teacher-...) instead of training one")
    p.add_argument("--num-workers", type=int, help="DATA.NUM_WORKERS (from configs/paper_claim/digits.yaml)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--tiny", action="store_true",
                   help="a few iterations on a small subset and five points (pipeline check), in a temporary folder")
    args = p.parse_args(argv)
    choose_folders(args, RESULTS, DEFAULT_WORK, "lr_sweep_tiny-")
    if args.points is None:
        names = TINY_POINTS if args.tiny else None
        args.points = ([os.path.join(SWEEP_DIR, f"{n}.yaml") for n in names] if names
                       else sorted(glob.glob(os.path.join(SWEEP_DIR, "*.yaml"))))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    workers = {} if args.num_workers is None else {"DATA.NUM_WORKERS": args.num_workers}
    s = Settings(work_dir=args.work_dir, student_archs=(args.arch,), seeds=tuple(args.seeds), overrides=workers,
                 teacher_run=args.teacher_run)
    if args.tiny:
        s = replace(s, **TINY)
    torch.set_num_threads(args.threads)  # small 32 px layers: one thread per run is fastest on a shared CPU
    start = time.time()
    try:
        result = run_sweep(s, args.arch, args.points, tuple(args.sweep_seeds), s.seeds)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f"lr_sweep_{args.arch}")
    table = sweep_table(result)
    with open(stem + ".md", "w") as f:
        f.write(table)
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=2)
    print(table)
    print(f"wrote {stem}.md, {stem}.json; total {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
