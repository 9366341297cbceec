#!/usr/bin/env python
"""SEED's central claim at small scale on real images available offline (scikit-learn's digits).

Trains a ResNet-34 teacher with MoCo-v2, then for each student architecture and seed compares
(a) random init, (b) MoCo-v2 alone, (c) SEED from the teacher and (d) L2 distillation, all with the
same budget and augmentation, by weighted k-NN top-1 on a held-out split. Writes
<output-dir>/paper_claim.{md,png,json}; ablations write paper_claim_<name>.{md,png,json}.

    python benchmarks/paper_claim.py                                   # main table, teacher included
    python benchmarks/paper_claim.py --skip-main --ablations teacher_temp queue_size
    python benchmarks/paper_claim.py --skip-main --ablations teacher_epochs --ablation-arch resnet18
    python benchmarks/paper_claim.py --tiny             # seconds: pipeline check in a temporary folder

Every training run is cached under --work-dir by its settings: a rerun reuses finished runs and
resumes interrupted ones, so adding an ablation or a seed only trains what is new.
"""
import argparse
import logging
import os
import sys
import time
from dataclasses import replace

import torch

from seed_core.config import ConfigError
from tools.benchmarking.paper_claim import (ABLATIONS, TINY, Settings, ablation_chart, ablation_table,
                                            choose_folders, main_chart, main_table, run_ablation, run_main, write_report)
from tools.cli import add_results_dir

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
DEFAULT_WORK = os.path.join(ROOT, "output", "paper_claim")

TINY_ABLATION_VALUES = {"teacher_temp": (1e-3, 1e-2), "queue_size": (16, 32), "teacher_epochs": (1, 2),
                        "small_patches": (0, 2), "teacher_precision": ("fp32", "fp16")}


def parse_args(argv=None):
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_results_dir(p, help=f"tables, plots and JSON go here (default: {RESULTS}; with --tiny a temporary folder)")
    p.add_argument("--work-dir", default=None,
                   help=f"dataset, cached training runs and feature caches (default: {DEFAULT_WORK}; "
                        "with --tiny a temporary folder)")
    p.add_argument("--archs", nargs="+", default=list(d.student_archs), help="student architectures")
    p.add_argument("--teacher-arch", default=d.teacher_arch)
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds))
    p.add_argument("--teacher-epochs", type=int, default=d.teacher_epochs)
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs of every trained student")
    recipe = "from configs/paper_claim/digits.yaml"
    p.add_argument("--batch-size", type=int, help=f"SOLVER.BATCH_SIZE ({recipe})")
    p.add_argument("--lr", type=float, help=f"SOLVER.BASE_LR, per 256 images ({recipe})")
    p.add_argument("--queue-size", type=int, help=f"QUEUE.SIZE ({recipe})")
    p.add_argument("--augmentation", choices=["glyphs", "mocov2"],
                   help=f"DATA.AUGMENTATION of every run ({recipe}; glyphs: no mirror images, gentle crops)")
    p.add_argument("--teacher-temp", type=float, help=f"LOSS.TEACHER_TEMP ({recipe})")
    p.add_argument("--num-workers", type=int, help=f"DATA.NUM_WORKERS ({recipe})")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 is fastest for these small models when the CPU is shared")
    p.add_argument("--ablations", nargs="*", default=[], choices=sorted(ABLATIONS),
                   help="also run these ablations (SEED students of --ablation-arch)")
    p.add_argument("--ablation-arch", default=None, help="student of the ablations (default: the last of --archs)")
    p.add_argument("--skip-main", action="store_true", help="only the ablations")
    p.add_argument("--tiny", action="store_true",
                   help="a few iterations on a small subset (pipeline check), in a temporary folder")
    args = p.parse_args(argv)
    _choose_folders(args)
    return args


def _choose_folders(args) -> None:
    choose_folders(args, RESULTS, DEFAULT_WORK, "paper_claim_tiny-")


# Convenience flags -> the recipe's config keys.
FLAG_KEYS = {"batch_size": "SOLVER.BATCH_SIZE", "lr": "SOLVER.BASE_LR", "queue_size": "QUEUE.SIZE",
             "augmentation": "DATA.AUGMENTATION", "teacher_temp": "LOSS.TEACHER_TEMP",
             "num_workers": "DATA.NUM_WORKERS"}


def settings_from_args(args) -> Settings:
    overrides = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None}
    s = Settings(work_dir=args.work_dir, student_archs=tuple(args.archs), teacher_arch=args.teacher_arch,
                 seeds=tuple(args.seeds), teacher_epochs=args.teacher_epochs, epochs=args.epochs, overrides=overrides)
    return replace(s, **TINY) if args.tiny else s


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    s = settings_from_args(args)
    # At 32 px the layers are too small to split across threads: extra OpenMP threads mostly wait
    # for each other, much slower than one thread on a busy machine
    # (docs/RESULTS.md, "SEED's central claim at small scale").
    torch.set_num_threads(args.threads)
    start = time.time()
    try:
        if not args.skip_main:
            result = run_main(s)
            paths = write_report(result, args.out_dir, "paper_claim", main_table(result), main_chart)
            print(main_table(result))
            print("wrote " + ", ".join(paths.values()))
        arch = args.ablation_arch or s.student_archs[-1]
        for name in args.ablations:
            values = TINY_ABLATION_VALUES[name] if args.tiny else None
            result = run_ablation(s, name, arch, values)
            paths = write_report(result, args.out_dir, f"paper_claim_{name}", ablation_table(result), ablation_chart)
            print(ablation_table(result))
            print("wrote " + ", ".join(paths.values()))
    except (ConfigError, ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"total {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
