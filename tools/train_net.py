#!/usr/bin/env python
"""Fine-tune and evaluate a detector from a converted backbone (Detectron2, or torchvision without it).

    python tools/train_net.py --config configs/voc_r18_seed.yaml --num-gpus 8
    python tools/train_net.py --config configs/voc_r18_seed.yaml --eval-only MODEL.WEIGHTS output/voc_r18_seed/model_final.pth
    python tools/train_net.py --config configs/coco_r18_1x_seed.yaml --num-machines 2 --machine-rank 0 --dist-url tcp://host:port

Trailing KEY VALUE pairs override the config. Each run writes OUTPUT_DIR/metrics.json (eval-only:
eval_metrics.json) and appends a row to the detection results file (RESULTS_CSV, default
OUTPUT_DIR/../results_detection.csv); tools/results_table.py renders it.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seed_core.errors import SeedError  # noqa: E402
from tools.apps.cli import parse_with_overrides  # noqa: E402
from seed_det.engines import ENGINES, main  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "--config-file", dest="config_file", required=True, help="detection YAML")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="auto: Detectron2 when installed, else torchvision")
    p.add_argument("--num-gpus", type=int, default=1, help="GPUs per machine")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0)
    p.add_argument("--dist-url", default="auto", help="tcp://host:port of machine 0 for multi-node runs")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint")
    p.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS, no training")
    return parse_with_overrides(p, argv)


def cli(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        metrics = main(args)
    except SeedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if metrics:
        print("metrics: " + ", ".join(f"{k}={v:.2f}" for k, v in metrics.items()
                                      if isinstance(v, float)))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
