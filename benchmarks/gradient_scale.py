#!/usr/bin/env python
"""The fraction of each stage's weights one SGD step changes at initialisation, for ResNet-18, -34
and -50 students under a MoCo-style contrastive loss on digit crops (tools/benchmarking/gradient_scale.py).
The teacher ladder's diagnosis of its ResNet-50 teacher: the first stages of a deeper ResNet take
far larger relative steps than the last at the same learning rate.

    python benchmarks/gradient_scale.py              # -> benchmarks/results/gradient_scale.{json,md}
    python benchmarks/gradient_scale.py --quick      # seconds: a check that it runs (temporary folder)
"""
import argparse
import os
import sys
import tempfile

import torch

from seed_core.checkpoint_io import atomic_write_text
from seed_core.results import write_json
from tools.benchmarking.gradient_scale import digit_crops, measure, table
from tools.cli import add_results_dir

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
STEM = "gradient_scale"
LADDER_LR = 0.03 * 64 / 256  # the teacher ladder's teachers: lr 0.03 per 256 images at batch 64


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_results_dir(p, help="json and md go here", default=RESULTS)
    p.add_argument("--archs", nargs="+", default=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--images", type=int, default=64, help="digit crops in the batch")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--lr", type=float, default=LADDER_LR, help="SGD learning rate the table is shown at")
    p.add_argument("--quick", action="store_true", help="ResNet-18, 8 crops, one seed, into a temporary folder")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out_dir = tempfile.mkdtemp(prefix="gradient_scale_") if args.quick else args.out_dir
    archs, n, seeds = (["resnet18"], 8, [0]) if args.quick else (args.archs, args.images, args.seeds)
    images = digit_crops(n)
    rows = measure(archs, images, seeds) + measure(archs, images, seeds, head_batch_norm=True)
    md = (f"Fraction of each stage's weights one SGD step at lr {args.lr:g} changes at initialisation "
          f"(|grad| / |weights| x lr; contrastive loss on {n} digit crops, mean over {len(seeds)} seeds):\n\n"
          + table(rows, args.lr) + "\n")
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, f"{STEM}.json"), {"lr": args.lr, "images": n, "rows": rows})
    atomic_write_text(md, os.path.join(out_dir, f"{STEM}.md"))
    print(md)
    print(f"wrote {out_dir}/{STEM}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
