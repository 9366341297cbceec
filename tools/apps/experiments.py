"""Building blocks for benchmark experiments: training runs cached by their settings, k-NN scoring
of a backbone on an ImageFolder train/val pair, and mean +- std over seeds.

A run lives in `<cache_dir>/<name>-<key>`, where the key hashes every setting that changes its
result (paths are replaced by what they stand for), so rerunning a benchmark reuses finished runs,
resumes interrupted ones from their checkpoint, and trains again only what changed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from seed_core.checkpoint_io import atomic_write_text
from seed_core.config import CfgNode, load_cfg
from seed_core.evaluation import LoadedBackbone, knn_evaluate, load_or_compute_features
from seed_core.trainer import CHECKPOINT_FILE, train

logger = logging.getLogger(__name__)

RUN_SUMMARY = "run_summary.json"
# Settings that change how a run is executed or logged, not what it learns.
NOT_IN_KEY = frozenset({"OUTPUT_DIR", "DATA.NUM_WORKERS", "TRAIN.PROGRESS", "TRAIN.LOG_PERIOD",
                        "TRAIN.CHECKPOINT_PERIOD", "TRAIN.DIST_TIMEOUT", "TRAIN.KEEP_EPOCH_CHECKPOINTS"})
# Paths whose value is not their meaning: callers pass an identity for them instead.
PATH_KEYS = ("DATA.ROOT", "MODEL.TEACHER.WEIGHTS")


@dataclass
class RunRecord:
    name: str
    key: str
    out_dir: str
    backbone: str      # exported student_backbone.pth
    checkpoint: str    # OUTPUT_DIR/checkpoint.pth (a moco run's is usable as a teacher)
    train_seconds: float
    reused: bool = False


def flatten_cfg(node, prefix: str = "") -> dict:
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(flatten_cfg(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def run_key(cfg: CfgNode, identities: dict[str, str]) -> str:
    """Hash of the settings that determine a run's result.

    `identities` maps path keys (DATA.ROOT, MODEL.TEACHER.WEIGHTS) to what they contain, so a moved
    cache still matches and a different dataset or teacher at the same path does not.
    """
    flat = {k: v for k, v in flatten_cfg(cfg).items() if k not in NOT_IN_KEY}
    for key in PATH_KEYS:
        if flat.get(key) and key not in identities:
            raise ValueError(f"run_key: {key} = {flat[key]!r} is a path; pass an identity for it "
                             f"(what the path holds) so the cache key does not depend on where it lives")
    flat.update(identities)
    text = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_record(path: Path) -> RunRecord | None:
    if not path.is_file():
        return None
    try:
        rec = RunRecord(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        logger.warning("ignoring damaged run summary %s (%s); the run is checked again", path, e)
        return None
    if not os.path.isfile(rec.backbone):
        logger.warning("%s names %s, which is gone; training again", path, rec.backbone)
        return None
    rec.reused = True
    return rec


def cached_train(name: str, opts: list[str], cache_dir: str | Path, identities: dict[str, str]) -> RunRecord:
    """Train the run described by the `KEY VALUE` overrides `opts`, or reuse a finished one.

    OUTPUT_DIR is chosen here (`<cache_dir>/<name>-<key>`). A run killed half-way resumes from its
    checkpoint, which the trainer accepts only if the config is unchanged.
    """
    cfg = load_cfg(None, opts)
    key = run_key(cfg, identities)
    out_dir = Path(cache_dir) / f"{name}-{key}"
    record_path = out_dir / RUN_SUMMARY
    record = _read_record(record_path)
    if record is not None:
        logger.info("reusing run %s (%s)", name, out_dir)
        return record
    cfg.OUTPUT_DIR = str(out_dir)
    resume = (out_dir / CHECKPOINT_FILE).is_file()
    logger.info("%s run %s in %s", "resuming" if resume else "starting", name, out_dir)
    start = time.time()
    summary = train(cfg, resume=resume)
    if not summary.get("backbone"):
        raise RuntimeError(f"run {name} in {out_dir} stopped after {summary.get('iterations')} iterations "
                           f"without exporting a backbone; rerun to resume it")
    record = RunRecord(name=name, key=key, out_dir=str(out_dir), backbone=summary["backbone"],
                       checkpoint=summary["checkpoint"], train_seconds=round(time.time() - start, 1))
    atomic_write_text(json.dumps(asdict(record), indent=2) + "\n", str(record_path))
    return record


def knn_accuracy(backbone: LoadedBackbone, train_root: str | Path, val_root: str | Path, image_size: int,
                 feature_cache: str | Path | None = None, k: int = 200, temperature: float = 0.07) -> dict:
    """Weighted k-NN top-1/top-5 (%) of `backbone`: train images are the labelled bank, val the queries.

    Evaluation resizes to `image_size` and center-crops `image_size` (no crop margin: the images
    are already that size).
    """
    feats = [load_or_compute_features(backbone, root, image_size=image_size, resize_size=image_size,
                                      cache_dir=feature_cache, progress=False)
             for root in (train_root, val_root)]
    train_fs, val_fs = feats
    if train_fs.classes != val_fs.classes:
        raise ValueError(f"{train_root} and {val_root} have different class folders "
                         f"({train_fs.classes} vs {val_fs.classes}): k-NN needs the same classes")
    return knn_evaluate(train_fs.features, train_fs.labels, val_fs.features, val_fs.labels,
                        num_classes=len(train_fs.classes), k=k, temperature=temperature)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the std of a single value is 0."""
    if not values:
        raise ValueError("mean_std of no values")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
