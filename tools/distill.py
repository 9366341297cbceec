#!/usr/bin/env python
"""Distil a self-supervised teacher into a student (SEED), or train with MoCo-v2.

    python tools/distill.py --config configs/distill/r18_from_mocov2_r50.yaml DATA.ROOT /data/imagenet/train
    torchrun --nproc_per_node 8 tools/distill.py --config ... [KEY VALUE ...] [--resume | --restart]

An OUTPUT_DIR (--output-dir DIR is OUTPUT_DIR DIR) that already holds a run is never overwritten:
continue it with --resume, or start over with --restart (also spelt --overwrite; its files are first
moved to OUTPUT_DIR/previous-<time>/). A folder another run is writing is refused (OUTPUT_DIR/.lock
names it). The log of the run goes to OUTPUT_DIR/log.txt. MODEL.TEACHER.WEIGHTS zoo:NAME names a
public teacher (tools/zoo.py list), downloaded before the run starts. Installed as `seed-distill`.
"""
import argparse
import os
import sys

from seed_core.config import load_cfg
from seed_core.trainer import Interrupted, train
from tools import cli


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.ArgumentParser(__doc__)
    cli.add_config(p, "YAML config (see configs/distill/)")
    cli.add_output_dir(p, "output folder (the config's OUTPUT_DIR)")
    cli.add_resume(p, "continue from OUTPUT_DIR/checkpoint.pth")
    p.add_argument("--restart", "--overwrite", dest="restart", action="store_true",
                   help="OUTPUT_DIR holds a run: move its files to OUTPUT_DIR/previous-<time>/ and start over")
    p.add_argument("--stop-at-iter", type=int, default=None,
                   help="checkpoint and stop after this iteration (the schedule is unchanged)")
    return cli.parse_with_overrides(p, argv)


def main(argv=None) -> int:
    return cli.run(lambda: _main(argv))


def _main(argv) -> int:
    args = parse_args(argv)
    cli.setup_logging()
    cfg = load_cfg(args.config_file or None, cli.overrides(args))
    try:
        with cli.DownloadBar("teacher") as bar:  # a zoo:NAME teacher not yet cached
            summary = train(cfg, resume=args.resume, stop_at_iter=args.stop_at_iter, restart=args.restart,
                            download_progress=bar)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return 128 + int(e.signum)
    if os.environ.get("RANK", "0") == "0":
        if summary.get("backbone"):
            print(f"student backbone written to {summary['backbone']}")
        else:
            print(f"stopped after iteration {summary['iterations']}; checkpoint: {summary['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
