#!/usr/bin/env python
"""Detection transfer on the handwritten-digit scenes: random init vs MoCo-v2 vs SEED ResNet-18
(and the teacher as an upper reference), Faster R-CNN R18-FPN and R18-C4 and Mask R-CNN R18-FPN,
all labels and 10 % of them, several fine-tuning seeds, each engine available. Every run is cached
in --work-dir; results go to benchmarks/results/transfer_claim.{json,md,png}.

    python benchmarks/transfer_claim.py [--preset transfer] [--seeds 0 1 2 3 4] [--detectors fpn c4 fpn_mask]
    python benchmarks/transfer_claim.py --tiny     # pipeline check, written to a temporary folder
"""
import argparse
import logging
import os
import sys
import tempfile
import time

from seed_core.errors import SeedError
from seed_det.engines import detectron2_available
from tools.benchmarking.transfer_claim import DETECTORS, INIT_LABELS, Settings, claim_table, run_claim, write_report
from tools.cli import add_results_dir

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None) -> int:
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=d.preset, help="configs/demo/NAME.yaml: pretraining and schedule")
    p.add_argument("--work-dir", default=d.work_dir, help="cached runs")
    add_results_dir(p, help="report (md, png, json) goes here", default=RESULTS)
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds))
    p.add_argument("--splits", nargs="+", default=list(d.splits), choices=["train", "train_small"])
    p.add_argument("--detectors", nargs="+", default=list(d.detectors), choices=sorted(DETECTORS))
    p.add_argument("--inits", nargs="+", default=list(d.inits), choices=sorted(INIT_LABELS))
    p.add_argument("--engines", nargs="+", default=None, choices=["torchvision", "detectron2"],
                   help="default: torchvision, and detectron2 when it is installed")
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--tiny", action="store_true",
                   help="tiny preset, one seed, FPN only, into a temporary folder (never the committed results)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engines = tuple(args.engines or (["torchvision"] + (["detectron2"] if detectron2_available() else [])))
    s = Settings(preset=args.preset, work_dir=args.work_dir, seeds=tuple(args.seeds), splits=tuple(args.splits),
                 detectors=tuple(args.detectors), inits=tuple(args.inits), engines=engines, workers=args.workers)
    out_dir = args.out_dir
    if args.tiny:
        tmp = tempfile.mkdtemp(prefix="transfer_claim_tiny-")
        s = Settings(preset="tiny", work_dir=os.path.join(tmp, "work"), seeds=(0,), splits=("train",),
                     detectors=("fpn",), inits=("random", "seed"), engines=("torchvision",), workers=0)
        out_dir = os.path.join(tmp, "results")
    start = time.time()
    try:
        result = run_claim(s)
    except (SeedError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = write_report(result, out_dir)
    print(claim_table(result))
    print("wrote " + ", ".join(paths.values()))
    print(f"total {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
