#!/usr/bin/env python
"""SEED's premise on the digit scenes: MoCo-v2 teachers ResNet-18 (the MoCo-v2 student itself),
ResNet-34 and ResNet-50; SEED ResNet-18 students from each, L2 distillation and a SEED ResNet-34
from the largest; every backbone k-NN-checked and fine-tuned (Faster R-CNN R18-FPN and R18-C4, all
and 10 % of the labels) with the same seeds, so differences are paired. Every stage is cached in
--work-dir and resumes; results/teacher_ladder.json grows as fine-tunings finish (records measured
again replace theirs, the others stay) and its md and png are rendered from it.

    python benchmarks/teacher_ladder.py                              # the whole ladder (hours of CPU)
    python benchmarks/teacher_ladder.py --engines detectron2         # seed 0 of every cell + the decisive cells
    python benchmarks/teacher_ladder.py --arms mocov2:resnet18 seed:resnet18:resnet50 --seeds 0 1
    python benchmarks/teacher_ladder.py --render                     # md and png from the committed json
    python benchmarks/teacher_ladder.py --tiny                       # seconds: pipeline check in a temporary folder
"""
import argparse
import logging
import os
import sys
import tempfile
import time

from seed_core.errors import SeedError
from tools.benchmarking.teacher_ladder import (RESULTS_NAME, Settings, render_report, run_ladder, tiny_settings,
                                               write_report)
from tools.cli import add_results_dir

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None) -> int:
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default=d.work_dir, help="cached stages (keep it: the ladder resumes from it)")
    add_results_dir(p, help="report (md, png) and results JSON go here", default=RESULTS)
    p.add_argument("--arms", nargs="+", default=list(d.arms), metavar="INIT:STUDENT[:TEACHER]",
                   help="init one of random, mocov2, seed, l2; e.g. seed:resnet18:resnet50")
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds))
    p.add_argument("--decisive-seeds", nargs="+", type=int, default=list(d.decisive_seeds),
                   help="SEED from the largest teacher and MoCo-v2, 10 %% labels, every engine")
    p.add_argument("--detectors", nargs="+", default=list(d.detectors), choices=["fpn", "c4"])
    p.add_argument("--splits", nargs="+", default=list(d.splits), choices=["train", "train_small"])
    p.add_argument("--engines", nargs="+", default=list(d.engines), choices=["torchvision", "detectron2"])
    p.add_argument("--teacher-epochs", type=int, default=d.teacher_epochs)
    p.add_argument("--processes", type=int, default=d.processes, help="stages side by side (0: one per core)")
    p.add_argument("--render", action="store_true", help="only render the md and png from the results json")
    p.add_argument("--tiny", action="store_true",
                   help="tiny preset, one seed, into a temporary folder (never the committed results)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out_dir = args.out_dir
    try:
        if args.render:
            render_report(os.path.join(out_dir, f"{RESULTS_NAME}.json"))
            print(f"rendered {out_dir}/{RESULTS_NAME}.md and .png")
            return 0
        s = Settings(work_dir=args.work_dir, arms=tuple(args.arms), seeds=tuple(args.seeds),
                     decisive_seeds=tuple(args.decisive_seeds), detectors=tuple(args.detectors),
                     splits=tuple(args.splits), engines=tuple(args.engines), teacher_epochs=args.teacher_epochs,
                     processes=args.processes)
        if args.tiny:
            tmp = tempfile.mkdtemp(prefix="teacher_ladder_tiny-")
            s = tiny_settings(os.path.join(tmp, "work"))
            out_dir = os.path.join(tmp, "results")
        start = time.time()
        result = run_ladder(s, on_progress=lambda r: write_report(r, out_dir))
        paths = write_report(result, out_dir)
    except (SeedError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(open(paths["md"]).read())
    print("wrote " + ", ".join(paths.values()))
    print(f"total {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
