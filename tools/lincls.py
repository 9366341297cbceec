#!/usr/bin/env python
"""The paper's linear evaluation of a frozen backbone (MoCo's main_lincls protocol): a linear
classifier trained by SGD on augmented images, top-1 / top-5 on val after every epoch.

    python tools/lincls.py --backbone output/distill/r18_from_mocov2_r50 \\
        --train /data/imagenet/train --val /data/imagenet/val --output-dir output/lincls/r18_from_mocov2_r50
    torchrun --nproc_per_node 8 tools/lincls.py --backbone ... --train ... --val ... --output-dir ... [--resume]

Defaults are MoCo's: 100 epochs, global batch 256, lr 30 (x0.1 at epochs 60 and 80), momentum 0.9,
weight decay 0, RandomResizedCrop 224 + flip / Resize 256 + CenterCrop 224. The output folder gets
checkpoint.pth (continue with --resume), model_best.pth (the best top-1 epoch's classifier),
metrics.json (every epoch, with the unreadable training images it skipped) and log.txt; a
finished run adds a row (optimizer "lincls", the last epoch's top-1 / top-5) to --results-csv. For a quick number from cached features, use
tools/eval_linear.py. An unreadable training image is skipped and counted (--max-bad-fraction); an
unreadable val image is refused, naming it, before any step. Installed as `seed-lincls`.
"""
import sys
from datetime import datetime, timezone

import torch

from seed_core.distributed import is_main_process
from seed_core.evaluation.lincls import LinclsOptions, run_linear_evaluation
from seed_core.evaluation.results import record_accuracy
from seed_core.results import check_results_file, results_path
from seed_core.stop_signals import Interrupted
from tools import cli

DEFAULTS = LinclsOptions(train="", val="", output_dir="")


def parse_args(argv=None):
    p = cli.ArgumentParser(__doc__)
    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", help="exported backbone folder (student_backbone.pth + meta.json) or a .pth file")
    g.add_argument("--arch", help="architecture, when meta.json is absent or with --random-init (e.g. resnet18)")
    g.add_argument("--random-init", action="store_true", help="evaluate an untrained --arch network (baseline)")
    g = p.add_argument_group("data")
    g.add_argument("--train", required=True, help="ImageFolder directory of the training split")
    g.add_argument("--val", required=True, help="ImageFolder directory of the evaluation split")
    g.add_argument("--image-size", type=int, default=DEFAULTS.image_size, help="crop size")
    g.add_argument("--resize-size", type=int, default=DEFAULTS.resize_size, help="val: shorter side before the center crop")
    g.add_argument("--workers", type=int, default=DEFAULTS.workers, help="data-loading processes per process")
    g.add_argument("--max-bad-fraction", type=float, default=DEFAULTS.max_bad_fraction, metavar="F",
                   help="unreadable --train images skipped per epoch before the run stops, as a fraction of the "
                        "split (distillation's DATA.MAX_BAD_FRACTION); a --val image is never skipped")
    g = p.add_argument_group("recipe")
    g.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    g.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="global batch, split over processes")
    g.add_argument("--lr", type=float, default=DEFAULTS.lr, help="not scaled with the batch")
    g.add_argument("--schedule", type=int, nargs="*", default=list(DEFAULTS.schedule), metavar="EPOCH",
                   help="epochs at which the lr is multiplied by 0.1")
    g.add_argument("--momentum", type=float, default=DEFAULTS.momentum)
    g.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay)
    g.add_argument("--seed", type=int, default=DEFAULTS.seed, help="classifier init, image order, augmentation")
    g = p.add_argument_group("run")
    cli.add_output_dir(p, "the run's folder (checkpoint.pth, model_best.pth, metrics.json, log.txt)")
    cli.add_resume(p, "continue from OUTPUT_DIR/checkpoint.pth")
    g.add_argument("--overwrite", action="store_true",
                   help="the folder holds a run: move its files to previous-<time>/ and start over")
    g.add_argument("--checkpoint-period", type=int, default=DEFAULTS.checkpoint_period,
                   help="iterations between checkpoints (one is also written after every epoch)")
    g.add_argument("--stop-at-iter", type=int, default=None, help="checkpoint and stop after this iteration")
    g.add_argument("--results-csv", default=results_path("output", "linear"),
                   help="CSV a finished run appends its row to ('' to skip)")
    args = p.parse_args(argv)
    if not args.output_dir:
        p.error("--output-dir is required")
    return args


def main(argv=None) -> int:
    return cli.run(lambda: _main(argv))


def _main(argv) -> int:
    args = parse_args(argv)
    cli.setup_logging()
    opts = LinclsOptions(
        train=args.train, val=args.val, output_dir=args.output_dir, backbone=args.backbone, arch=args.arch,
        random_init=args.random_init, epochs=args.epochs, lr=args.lr, schedule=tuple(args.schedule),
        momentum=args.momentum, weight_decay=args.weight_decay, batch_size=args.batch_size, workers=args.workers,
        image_size=args.image_size, resize_size=args.resize_size, seed=args.seed,
        checkpoint_period=args.checkpoint_period, max_bad_fraction=args.max_bad_fraction)
    if args.results_csv:
        check_results_file(args.results_csv, "linear")  # before any work: the file must be ours (or new)
    try:
        summary = run_linear_evaluation(opts, resume=args.resume, overwrite=args.overwrite,
                                        stop_at_iter=args.stop_at_iter)
    except Interrupted as e:  # SIGTERM / SIGINT: the checkpoint is written
        print(str(e), file=sys.stderr)
        return 128 + int(e.signum)
    if not is_main_process():
        return 0
    if summary["finished"] and args.results_csv:
        row = {**summary, "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "optimizer": "lincls", "epochs": args.epochs}
        record_accuracy(args.results_csv, "linear", row, output=summary["metrics"],
                        device="cuda" if torch.cuda.is_available() else "cpu")
    if summary["epochs_done"]:
        print(f"lincls after {summary['epochs_done']} epochs: top-1 {summary['top1']:.2f}  top-5 {summary['top5']:.2f}"
              f"  (best top-1 {summary['best_top1']:.2f} at epoch {summary['best_epoch']}); {summary['metrics']}")
    if not summary["finished"]:
        print(f"stopped after iteration {summary['iterations']}; continue with --resume")
    return 0


if __name__ == "__main__":
    sys.exit(main())
