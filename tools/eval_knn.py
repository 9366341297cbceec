#!/usr/bin/env python
"""Weighted k-NN accuracy (k=200, T=0.07, cosine) of a frozen backbone on ImageFolder data.

    python tools/eval_knn.py --backbone output/distill/export --train DATA/train --val DATA/val
    python tools/eval_knn.py --arch resnet18 --random-init --train DATA/train --val DATA/val
"""
import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from seed_core.checkpoint_io import CheckpointError  # noqa: E402
from seed_core.evaluation.runner import add_common_arguments, add_knn_arguments, run_knn  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    add_knn_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        metrics = run_knn(args)
    except (ValueError, FileNotFoundError, CheckpointError) as e:  # user input problems: a message, not a traceback
        parser.exit(2, f"error: {e}\n")
    print(json.dumps(metrics, indent=2, sort_keys=True))
    print(f"k-NN top-1 {metrics['top1']:.2f}  top-5 {metrics['top5']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
