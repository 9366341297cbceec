"""scikit-learn's bundled handwritten digits as an ImageFolder dataset: real images, no download.

The 1,797 8x8 grey images (values 0..16) are upsampled to `size` x `size` RGB PNGs and split per
class into root/train/<digit>/ and root/val/<digit>/. The split depends only on `seed` and
`val_fraction`, and file names carry the index into sklearn's array, so every run writes the same
files. The dataset is written to a temporary directory and moved into place whole, so `root` is
either absent, or complete with a manifest recording how it was made.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

MANIFEST = "digits_manifest.json"
SPLITS = ("train", "val")


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int,
                     max_per_class: int | None = None) -> dict[str, np.ndarray]:
    """Indices of each split: every class shuffled with `seed`, its first round(n * val_fraction) to val."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if max_per_class is not None:
            idx = idx[:max_per_class]
        n_val = int(round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return {"train": np.sort(np.concatenate(train)), "val": np.sort(np.concatenate(val))}


def digit_to_image(pixels: np.ndarray, size: int) -> Image.Image:
    """8x8 array in 0..16 -> size x size RGB image (bicubic upsampling keeps strokes smooth)."""
    grey = Image.fromarray(np.clip(pixels * (255.0 / 16.0), 0, 255).round().astype(np.uint8), mode="L")
    return grey.resize((size, size), Image.BICUBIC).convert("RGB")


def _read_manifest(root: Path) -> dict | None:
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is corrupt ({e}); delete {root} and write the dataset again.") from e


def _counts(root: Path) -> dict:
    """PNG files present per split and class."""
    return {split: {d.name: sum(1 for _ in d.glob("*.png")) for d in sorted((root / split).iterdir()) if d.is_dir()}
            for split in SPLITS if (root / split).is_dir()}


def write_digits_imagefolder(root: str | Path, size: int = 32, seed: int = 0, val_fraction: float = 0.3,
                             max_per_class: int | None = None) -> dict:
    """Write the digits dataset under `root` (idempotent); returns image counts.

    Returns {"train": n, "val": n, "per_class": {split: {digit: n}}, "written": bool}; "written" is
    False when `root` already held the same dataset. `max_per_class` keeps only that many images per
    class before splitting (tiny datasets for tests).
    """
    if size < 8:
        raise ValueError(f"size must be >= 8 (the digits are 8x8), got {size}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    root = Path(root)
    params = {"size": size, "seed": seed, "val_fraction": val_fraction, "max_per_class": max_per_class}

    manifest = _read_manifest(root)
    if manifest is not None:
        if manifest.get("params") != params:
            raise ValueError(f"{root} already holds digits written with {manifest.get('params')}, not {params}; "
                             f"use another root or delete it.")
        if _counts(root) == manifest.get("per_class"):
            logger.info("digits dataset already complete at %s", root)
            return {**_summary(manifest["per_class"]), "written": False}
        raise ValueError(f"{root} has a manifest but its files differ from it (edited or partly deleted); "
                         f"delete {root} and write the dataset again.")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists and is not a digits dataset written by this tool; "
                              f"choose an empty or new directory.")

    from sklearn.datasets import load_digits  # bundled with scikit-learn: no network access

    digits = load_digits()
    split = stratified_split(digits.target, val_fraction, seed, max_per_class)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp-"))
    try:
        for name, indices in split.items():
            for c in range(10):
                (tmp / name / str(c)).mkdir(parents=True)
            for i in indices:
                digit_to_image(digits.images[i], size).save(tmp / name / str(digits.target[i]) / f"{i:04d}.png")
        per_class = _counts(tmp)
        (tmp / MANIFEST).write_text(json.dumps({"params": params, "per_class": per_class}, indent=2) + "\n")
        if root.exists():
            root.rmdir()  # empty (checked above); os.replace needs the name free or an empty dir
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    logger.info("wrote digits dataset to %s", root)
    return {**_summary(per_class), "written": True}


def _summary(per_class: dict) -> dict:
    return {"train": sum(per_class["train"].values()), "val": sum(per_class["val"].values()),
            "per_class": per_class}
