#!/usr/bin/env python
"""Weighted k-NN accuracy (k=200, T=0.07, cosine) of a frozen backbone on ImageFolder data.

    python tools/eval_knn.py --backbone output/distill/r18_from_mocov2_r50 --train DATA/train --val DATA/val
    python tools/eval_knn.py --arch resnet18 --random-init --train DATA/train --val DATA/val

Installed as `seed-eval-knn`.
"""
import sys

from tools.backbone_eval import cli_main


def main(argv=None) -> int:
    return cli_main("knn", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
