#!/usr/bin/env python
"""Linear-probe accuracy of a frozen backbone on ImageFolder data (features cached, then a linear fit).

    python tools/eval_linear.py --backbone output/distill/r18_from_mocov2_r50 --train DATA/train --val DATA/val
    python tools/eval_linear.py --arch resnet18 --random-init --train DATA/train --val DATA/val

Installed as `seed-eval-linear`.
"""
import sys

from tools.backbone_eval import cli_main


def main(argv=None) -> int:
    return cli_main("linear", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
