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
import os
import sys

from tools.benchmarking.ladder_cli import run_cli
from tools.benchmarking.teacher_ladder import Settings

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None) -> int:
    return run_cli(argv, Settings(), __doc__, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
