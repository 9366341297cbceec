#!/usr/bin/env python
"""Fine-tune and evaluate a detector from a converted backbone (Detectron2, or torchvision without it).

    python tools/train_net.py --config configs/voc_r18_seed.yaml --num-gpus 8
    python tools/train_net.py --config configs/voc_r18_seed.yaml --eval-only MODEL.WEIGHTS output/voc_r18_seed/model_final.pth
    python tools/train_net.py --config configs/coco_r18_1x_seed.yaml --num-machines 2 --machine-rank 0 --dist-url tcp://host:port

Trailing KEY VALUE pairs override the config (--output-dir DIR is OUTPUT_DIR DIR). Each run writes
OUTPUT_DIR/metrics.json (eval-only: eval_metrics.json) and appends a row to the detection results
file (RESULTS_CSV, default OUTPUT_DIR/../results_detection.csv); tools/results_table.py renders it.
An OUTPUT_DIR that holds a run is refused unless --resume (continue it) or --overwrite (its files are
moved to OUTPUT_DIR/previous-<time>/); one another run is writing is refused (OUTPUT_DIR/.lock).
Installed as `seed-train-net`.
"""
import argparse
import logging
import sys

from seed_det.engines import ENGINES, RunOptions, main as run_detection
from tools import cli


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.ArgumentParser(__doc__)
    cli.add_config(p, "detection YAML (configs/*.yaml)", required=True)
    cli.add_output_dir(p, "output folder (the config's OUTPUT_DIR)")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="auto: Detectron2 when installed, else torchvision")
    p.add_argument("--num-gpus", type=int, default=1, help="GPUs per machine")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0)
    p.add_argument("--dist-url", default="auto", help="tcp://host:port of machine 0 for multi-node runs")
    cli.add_resume(p, "continue from OUTPUT_DIR/last_checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="OUTPUT_DIR holds a run: move its files to OUTPUT_DIR/previous-<time>/ and start over")
    p.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS, no training")
    return cli.parse_with_overrides(p, argv)


def options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(config_file=args.config_file, engine=args.engine, opts=cli.overrides(args), resume=args.resume,
                      overwrite=args.overwrite,
                      eval_only=args.eval_only, num_gpus=args.num_gpus, num_machines=args.num_machines,
                      machine_rank=args.machine_rank, dist_url=args.dist_url)


def main(argv=None) -> int:
    return cli.run(lambda: _main(argv))


def _main(argv) -> int:
    run = options(parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    metrics = run_detection(run)
    if metrics:
        print("metrics: " + ", ".join(f"{k}={v:.2f}" for k, v in metrics.items() if isinstance(v, float)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
