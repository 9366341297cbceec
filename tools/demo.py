#!/usr/bin/env python
"""The whole pipeline on handwritten-digit scenes, on CPU: MoCo-v2 teacher -> SEED ResNet-18 student and
MoCo-v2 ResNet-18 baseline -> Detectron2 checkpoints -> Faster R-CNN from each (and from random
init) -> AP table, bar chart and loss curves. Cached: run it again to reuse finished stages.

    python tools/demo.py [--out demo_output] [--preset default|tiny] [--engine auto|detectron2|torchvision]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.apps.cli import setup_logging  # noqa: E402
from tools.apps.demo_pipeline import load_preset, run_demo  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_output", help="output folder (stages are cached here)")
    p.add_argument("--preset", default="default", help="configs/demo/NAME.yaml (default, tiny) or a preset YAML file")
    p.add_argument("--engine", default="auto", choices=["auto", "detectron2", "torchvision"])
    p.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    args = p.parse_args(argv)
    setup_logging("WARNING")
    try:
        load_preset(args.preset)  # a bad preset is refused before any stage runs
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    run_demo(args.out, args.preset, args.engine, args.workers)
    print(f"demo finished in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
