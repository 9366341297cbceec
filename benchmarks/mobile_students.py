#!/usr/bin/env python
"""Distilled mobile students in detection, by the teacher ladder's protocol: MobileNetV3-Small
(mobilenetv3_small_050, the digits harness's student) at random init, as a MoCo-v2 student and as a
SEED student of the ladder's ResNet-34 teacher, each method at its lr-sweep winner; fine-tuned as
Faster R-CNN with an FPN over its last stages at all and 10 % of the labels, the same seeds for
every backbone (paired). It shares the ladder's work folder, so the teacher is trained once.
results/mobile_students.json grows as fine-tunings finish; its md and png are rendered from it.

    python benchmarks/mobile_students.py                              # the whole benchmark (hours of CPU)
    python benchmarks/mobile_students.py --engines detectron2 --seeds 0
    python benchmarks/mobile_students.py --render                     # md and png from the committed json
    python benchmarks/mobile_students.py --tiny                       # seconds: pipeline check in a temporary folder
"""
import os
import sys

from tools.benchmarking.ladder_cli import run_cli
from tools.benchmarking.teacher_ladder import mobile_settings

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None) -> int:
    return run_cli(argv, mobile_settings(), __doc__, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
