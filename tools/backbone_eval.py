"""What tools/eval_knn.py and tools/eval_linear.py do, behind their argument parsing."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
from datetime import datetime, timezone

import torch

from seed_core.errors import SeedError
from seed_core.evaluation.backbone_io import LoadedBackbone, load_backbone
from seed_core.evaluation.features import (FeatureSet, default_resize, load_or_compute_features,
                                           refuse_unreadable_images)
from seed_core.evaluation.knn import knn_evaluate
from seed_core.evaluation.linear import OPTIMIZERS, train_linear_probe
from seed_core.evaluation.results import record_accuracy
from seed_core.results import check_results_file, results_path, write_json
from seed_core.run_dir import claim_output_file
from seed_core.worker_errors import plain_worker_errors
from tools import cli


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("backbone")
    g.add_argument("--backbone", help="exported backbone directory (student_backbone.pth + meta.json) or a .pth file")
    g.add_argument("--arch", help="architecture, when meta.json is absent or with --random-init (e.g. resnet18)")
    g.add_argument("--random-init", action="store_true", help="evaluate an untrained --arch network (baseline)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random init and of the linear probe")
    g = parser.add_argument_group("data")
    g.add_argument("--train", required=True, help="ImageFolder directory of the training split")
    g.add_argument("--val", required=True, help="ImageFolder directory of the evaluation split")
    g.add_argument("--image-size", type=int, default=224, help="center-crop size")
    g.add_argument("--resize-size", type=int, default=None,
                   help="shorter side before cropping (default image-size / 0.875)")
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="data loading processes")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--cache-dir", default="output/feature_cache", help="where features are cached")
    g.add_argument("--no-cache", action="store_true", help="always recompute features")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g = parser.add_argument_group("output")
    g.add_argument("--output", help="metrics JSON file to write (an existing one is refused; see --overwrite)")
    g.add_argument("--overwrite", action="store_true",
                   help="--output exists: move it to previous-<time>/ beside it and write a new one")
    g.add_argument("--results-csv", default=None,
                   help="CSV to append a row to (default output/results_<knn|linear>.csv; '' to skip)")


def _features(args, backbone: LoadedBackbone) -> tuple[FeatureSet, FeatureSet]:
    common = dict(image_size=args.image_size, resize_size=args.resize_size, batch_size=args.batch_size,
                  num_workers=args.workers, device=args.device,
                  cache_dir=None if args.no_cache else args.cache_dir, progress=not args.no_progress)
    for root in (args.train, args.val):  # both splits, before any feature is computed
        refuse_unreadable_images(root, args.workers)
    with plain_worker_errors():  # a SeedError of a --workers process: its own message, no traceback text
        train = load_or_compute_features(backbone, args.train, **common)
        val = load_or_compute_features(backbone, args.val, **common)
    if train.classes != val.classes:
        raise ValueError(f"train and val class folders differ ({len(train.classes)} vs {len(val.classes)} classes: "
                         f"{sorted(set(train.classes) ^ set(val.classes))[:8]}); both splits need the same classes.")
    return train, val


def _report(args, tool: str, backbone: LoadedBackbone, train: FeatureSet, val: FeatureSet, metrics: dict) -> dict:
    out = {"tool": tool, "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "backbone": backbone.source, "arch": backbone.arch, "backbone_sha256": backbone.checksum,
           "feature_dim": backbone.feature_dim, "train": str(args.train), "val": str(args.val),
           "num_train": len(train.labels), "num_val": len(val.labels), "num_classes": len(train.classes),
           "image_size": args.image_size, "resize_size": args.resize_size or default_resize(args.image_size),
           **metrics}
    if args.output:
        write_json(args.output, out)
    if args.results_csv:
        record_accuracy(args.results_csv, tool.removeprefix("eval_"), out, output=args.output or "",
                        device=args.device)
    return out


def _check_outputs(args, kind: str):
    """Before any feature is computed: the results file must be ours (or new), and --output a new
    file (or --overwrite) that no other evaluation is writing. Returns the lock of --output."""
    if args.results_csv is None:
        args.results_csv = results_path("output", kind)
    if args.results_csv:
        check_results_file(args.results_csv, kind)
    if args.output:
        return claim_output_file(args.output, args.overwrite, what="--output")
    return contextlib.nullcontext()


def run_knn(args) -> dict:
    with _check_outputs(args, "knn"):
        return _run_knn(args)


def _run_knn(args) -> dict:
    backbone = load_backbone(args.backbone, args.arch, args.random_init, args.seed)
    train, val = _features(args, backbone)
    acc = knn_evaluate(train.features, train.labels, val.features, val.labels, len(train.classes),
                       k=args.k, temperature=args.temperature)
    return _report(args, "eval_knn", backbone, train, val, {**acc, "k": args.k, "temperature": args.temperature})


def add_knn_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int, default=200, help="neighbours per query")
    parser.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(similarity / T)")


def add_linear_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="lbfgs",
                        help="lbfgs: full batch, small datasets; sgd: minibatches, large ones")
    parser.add_argument("--epochs", type=int, default=10, help="L-BFGS steps (20 iterations each) or SGD epochs")
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--probe-batch-size", type=int, default=256, help="SGD minibatch size")


def run_linear(args) -> dict:
    with _check_outputs(args, "linear"):
        return _run_linear(args)


def _run_linear(args) -> dict:
    backbone = load_backbone(args.backbone, args.arch, args.random_init, args.seed)
    train, val = _features(args, backbone)
    res = train_linear_probe(train.features, train.labels, val.features, val.labels, len(train.classes),
                             optimizer=args.optimizer, epochs=args.epochs, lr=args.lr,
                             weight_decay=args.weight_decay, batch_size=args.probe_batch_size, seed=args.seed)
    return _report(args, "eval_linear", backbone, train, val,
                   {**res.as_dict(), "lr": args.lr, "weight_decay": args.weight_decay, "seed": args.seed})


_TOOLS = {"knn": ("k-NN", add_knn_arguments, run_knn), "linear": ("linear probe", add_linear_arguments, run_linear)}


def cli_main(kind: str, doc: str, argv=None) -> int:
    """Command line of tools/eval_knn.py and tools/eval_linear.py."""
    label, add_arguments, run = _TOOLS[kind]

    def body() -> int:
        parser = cli.ArgumentParser(doc)
        add_common_arguments(parser)
        add_arguments(parser)
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        metrics = run(args)
        print(json.dumps(metrics, indent=2, sort_keys=True))
        print(f"{label} top-1 {metrics['top1']:.2f}  top-5 {metrics['top5']:.2f}")
        return 0
    # user input problems (a missing folder, mismatched classes): a message, not a traceback
    return cli.run(body, errors=(ValueError, FileNotFoundError, SeedError))
