#!/usr/bin/env python
"""The whole pipeline on handwritten-digit scenes, on CPU: MoCo-v2 teacher -> SEED ResNet-18 student and
MoCo-v2 ResNet-18 baseline -> Detectron2 checkpoints -> Faster R-CNN from each (and from random
init) -> AP table, bar chart and loss curves. Cached: run it again to reuse finished stages.

    python tools/demo.py [--output-dir demo_output] [--preset default|tiny] [--engine auto|detectron2|torchvision]

Installed as `seed-demo`.
"""
import sys
import time

from seed_det.engines import ENGINES
from tools import cli
from tools.pipeline.demo import load_preset, run_demo


def main(argv=None) -> int:
    return cli.run(lambda: _main(argv))


def _main(argv) -> int:
    p = cli.ArgumentParser(__doc__)
    cli.add_output_dir(p, "output folder (stages are cached here)", default="demo_output", aliases=("--out",))
    p.add_argument("--preset", default="default", help="configs/demo/NAME.yaml (default, tiny) or a preset YAML file")
    p.add_argument("--engine", default="auto", choices=ENGINES)
    p.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    args = p.parse_args(argv)
    cli.setup_logging("WARNING")
    try:
        load_preset(args.preset)  # a bad preset is refused before any stage runs
    except ValueError as e:
        return cli.error(str(e))
    t0 = time.time()
    run_demo(args.output_dir, args.preset, args.engine, args.workers)
    print(f"demo finished in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
