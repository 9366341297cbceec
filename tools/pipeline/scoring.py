"""Scoring for benchmark experiments: k-NN of a backbone on an ImageFolder train/val pair (mean ± std
over seeds: tools.pipeline.report.mean_std). Training runs are cached by tools.pipeline.run_cache."""
from __future__ import annotations

import logging
from pathlib import Path

from seed_core.evaluation import LoadedBackbone, knn_evaluate, load_or_compute_features

logger = logging.getLogger(__name__)

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
