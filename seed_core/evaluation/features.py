"""Frozen-backbone features over an ImageFolder, computed once and cached on disk.

The cache key covers everything the features depend on: the backbone weights (checksum), the
dataset listing (relative paths, labels, sizes, modification times) and the transform, so a rerun
with the same inputs loads the .pt file and any change recomputes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
from tqdm import tqdm

from ..checkpoint_io import atomic_save, load_untrusted
from ..errors import CheckpointError
from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..images import open_rgb, refuse_unreadable
from ..run_dir import ensure_output_dir
from .backbone_io import LoadedBackbone

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the cached content changes meaning (2: one decoder, EXIF applied)


@dataclass
class FeatureSet:
    features: torch.Tensor  # (N, D) float32, not normalised
    labels: torch.Tensor  # (N,) int64 class indices into `classes`
    classes: list[str]
    from_cache: bool = False


def default_resize(image_size: int) -> int:
    """Shorter side before the center crop, in the usual 0.875 crop ratio (224 -> 256)."""
    return int(round(image_size / 0.875))


def transform_spec(image_size: int, resize_size: int | None = None) -> dict:
    """Plain description of the evaluation transform; it is part of the cache key."""
    return {"resize": resize_size or default_resize(image_size), "center_crop": image_size,
            "interpolation": "bilinear", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def build_eval_transform(image_size: int, resize_size: int | None = None) -> transforms.Compose:
    spec = transform_spec(image_size, resize_size)
    return transforms.Compose([
        transforms.Resize(spec["resize"], interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(spec["center_crop"]),
        transforms.ToTensor(),
        transforms.Normalize(spec["mean"], spec["std"]),
    ])


def open_image_folder(root: str | Path, transform=None) -> datasets.ImageFolder:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image directory {root} does not exist: expected ImageFolder layout "
                                f"{root}/<class>/<image>.")
    return datasets.ImageFolder(str(root), transform=transform, loader=open_rgb)


def refuse_unreadable_images(root: str | Path, num_workers: int = 0) -> None:
    """Evaluation's image policy for an ImageFolder (seed_core.images): every image decodes, or one
    error naming the file, before any feature is computed: a skipped image would change the metric."""
    dataset = open_image_folder(root)
    refuse_unreadable([path for path, _ in dataset.samples], f"image folder {root}", num_workers)


def dataset_listing(dataset: datasets.ImageFolder) -> list:
    """(relative path, label, size, mtime_ns) for every sample: changes when any image does."""
    root = Path(dataset.root)
    listing = []
    for path, label in dataset.samples:
        st = os.stat(path)
        listing.append([Path(path).relative_to(root).as_posix(), label, st.st_size, st.st_mtime_ns])
    return listing


def extract_features(model: nn.Module, dataset, batch_size: int = 256, num_workers: int = 0,
                     device: str | torch.device = "cpu", progress: bool = True,
                     desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen model over `dataset` in order; returns (features float32 on CPU, labels int64)."""
    device = torch.device(device)
    model.eval().to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    feats, labels = [], []
    with torch.inference_mode():
        for images, targets in tqdm(loader, desc=desc, unit="batch", disable=not progress):
            feats.append(model(images.to(device, non_blocking=True)).flatten(1).float().cpu())
            labels.append(targets.long())
    if not feats:
        raise ValueError(f"dataset {getattr(dataset, 'root', dataset)} has no images")
    return torch.cat(feats).clone(), torch.cat(labels).clone()


def _cache_key(checksum: str, dataset: datasets.ImageFolder, spec: dict) -> str:
    listing = json.dumps(dataset_listing(dataset), separators=(",", ":")).encode()
    key = {"format": CACHE_FORMAT, "backbone_sha256": checksum, "classes": dataset.classes,
           "listing_sha256": hashlib.sha256(listing).hexdigest(), "num_samples": len(dataset.samples),
           "transform": spec}
    return json.dumps(key, sort_keys=True)


def _read_cache(path: Path, key: str) -> FeatureSet | None:
    if not path.is_file():
        return None
    try:
        blob = load_untrusted(str(path))
    except CheckpointError as e:  # a damaged cache is recomputed, not fatal
        logger.warning("ignoring unreadable feature cache %s (%s); recomputing", path, e)
        return None
    if not isinstance(blob, dict) or blob.get("key") != key:
        logger.warning("feature cache %s was written for other inputs; recomputing", path)
        return None
    return FeatureSet(blob["features"], blob["labels"], list(blob["classes"]), from_cache=True)


def _write_cache(path: Path, key: str, fs: FeatureSet) -> None:
    # Atomic: a concurrent or interrupted run never leaves a half-written cache behind.
    atomic_save({"key": key, "features": fs.features, "labels": fs.labels, "classes": fs.classes}, str(path))


def load_or_compute_features(backbone: LoadedBackbone, root: str | Path, image_size: int = 224,
                             resize_size: int | None = None, batch_size: int = 256, num_workers: int = 0,
                             device: str | torch.device = "cpu", cache_dir: str | Path | None = None,
                             progress: bool = True) -> FeatureSet:
    """Features of every image under `root`, read from `cache_dir` when the same inputs were seen before.

    `cache_dir=None` disables caching.
    """
    if cache_dir:
        ensure_output_dir(str(cache_dir), "the feature cache folder (--cache-dir)")
    spec = transform_spec(image_size, resize_size)
    dataset = open_image_folder(root, build_eval_transform(image_size, resize_size))
    key = _cache_key(backbone.checksum, dataset, spec)
    path = Path(cache_dir) / f"features-{hashlib.sha256(key.encode()).hexdigest()[:32]}.pt" if cache_dir else None
    if path is not None:
        cached = _read_cache(path, key)
        if cached is not None:
            logger.info("loaded %d cached features for %s from %s", len(cached.labels), root, path)
            return cached
    feats, labels = extract_features(backbone.model, dataset, batch_size, num_workers, device, progress,
                                     desc=f"features {Path(root).name}")
    fs = FeatureSet(feats, labels, list(dataset.classes))
    if path is not None:
        _write_cache(path, key, fs)
        logger.info("cached %d features for %s at %s", len(labels), root, path)
    return fs
