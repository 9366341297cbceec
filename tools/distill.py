#!/usr/bin/env python
"""Distil a self-supervised teacher into a student (SEED), or train with MoCo-v2.

    python tools/distill.py --config configs/distill/r18_from_mocov2_r50.yaml DATA.ROOT /data/imagenet/train
    torchrun --nproc_per_node 8 tools/distill.py --config ... [KEY VALUE ...] [--resume | --restart]

An OUTPUT_DIR that already holds a run is never overwritten: continue it with --resume, or start
over with --restart (its files are first moved to OUTPUT_DIR/previous-<time>/). The log of the run
goes to OUTPUT_DIR/log.txt.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.apps.cli import fail, parse_with_overrides, setup_logging  # noqa: E402
from seed_core.config import load_cfg  # noqa: E402
from seed_core.errors import SeedError  # noqa: E402
from seed_core.trainer import Interrupted, train  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (see configs/distill/)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pth")
    p.add_argument("--restart", action="store_true",
                   help="OUTPUT_DIR holds a run: move its files to OUTPUT_DIR/previous-<time>/ and start over")
    p.add_argument("--stop-at-iter", type=int, default=None,
                   help="checkpoint and stop after this iteration (the schedule is unchanged)")
    return parse_with_overrides(p, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        cfg = load_cfg(args.config, args.opts)
        summary = train(cfg, resume=args.resume, stop_at_iter=args.stop_at_iter, restart=args.restart)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return 128 + int(e.signum)
    except SeedError as e:
        fail(str(e))
    if os.environ.get("RANK", "0") == "0":
        if summary.get("backbone"):
            print(f"student backbone written to {summary['backbone']}")
        else:
            print(f"stopped after iteration {summary['iterations']}; checkpoint: {summary['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
