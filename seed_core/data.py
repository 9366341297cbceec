"""Images for distillation: ImageFolder or flat folders, MoCo-v2 (or digit-safe "glyphs")
augmentation, a resumable sampler, and unreadable files skipped and counted instead of killing a
multi-day run."""
from __future__ import annotations

import logging
import os
from typing import Iterator

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T

from .constants import IMAGENET_MEAN, IMAGENET_STD
from .errors import DatasetError
from .images import open_rgb

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def list_images(root: str) -> list[str]:
    """All image files below `root` (ImageFolder class folders or a flat folder), sorted so every
    rank sees the same order. Labels are not needed for distillation."""
    if not root:
        raise DatasetError("DATA.ROOT is empty: point it at an ImageFolder root (e.g. imagenet/train) "
                           "or a folder of images")
    if not os.path.isdir(root):
        raise DatasetError(f"dataset folder not found: {root} (set DATA.ROOT)")
    files, seen_dirs, seen_files = [], {os.path.realpath(root)}, set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        # Links are followed once: a folder reached again (a symlink loop, or two links to one
        # folder) is not walked again, and an image linked twice is listed once.
        kept = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(folder, d))
            if real not in seen_dirs:
                seen_dirs.add(real)
                kept.append(d)
        dirs[:] = kept
        for n in sorted(names):
            path = os.path.join(folder, n)
            real = os.path.realpath(path)
            if n.lower().endswith(IMAGE_EXTENSIONS) and real not in seen_files:
                seen_files.add(real)
                files.append(path)
    if not files:
        raise DatasetError(f"no images found under {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files


def mocov2_transform(size: int) -> T.Compose:
    """MoCo-v2 augmentation (also SEED's): crop, colour jitter, grey, blur, flip."""
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # ~10% of the image, odd
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def glyphs_transform(size: int) -> T.Compose:
    """For characters and digits, where a mirror image or a small fragment is a different symbol:
    gentle crops, small rotations/shears, contrast and blur; no flip, no colour."""
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(0.8, 1.25)),
        T.RandomApply([T.RandomAffine(degrees=15, translate=(0.1, 0.1), shear=10)], p=0.8),
        T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8),
        T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 1.0))], p=0.5),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


AUGMENTATIONS = {"mocov2": mocov2_transform, "glyphs": glyphs_transform}


def plain_transform(size: int) -> T.Compose:
    return T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def training_transform(name: str, size: int) -> T.Compose:
    """DATA.AUGMENTATION by name; "none" resizes and center-crops only."""
    if name == "none":
        return plain_transform(size)
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}: choose from none, {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[name](size)


class UnlabeledImages(Dataset):
    """Indexed by (epoch, index) so each sample's augmentation is seeded by (seed, epoch, index):
    the same on any worker, after any resume. A file that cannot be decoded is replaced by the
    next readable one and reported in the sample's `bad` list."""

    def __init__(self, files: list[str], transform, views: int = 1, seed: int = 0):
        self.files = files
        self.transform = transform
        self.views = views
        self.seed = seed

    def __len__(self) -> int:
        return len(self.files)

    def _open(self, path: str) -> Image.Image:
        return open_rgb(path)

    def __getitem__(self, key) -> tuple[torch.Tensor, list[int]]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        bad = []
        for attempt in range(len(self.files)):
            i = (index + attempt) % len(self.files)
            try:
                img = self._open(self.files[i])
                break
            except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
                logger.debug("skipping unreadable image %s: %s", self.files[i], e)
                bad.append(i)
        else:
            raise DatasetError("no image in the dataset could be read")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, epoch, index)) & 0x7FFF_FFFF_FFFF_FFFF)
            views = [self.transform(img) for _ in range(self.views)]
        return (views[0] if self.views == 1 else torch.stack(views)), bad


def collate(batch):
    images = torch.stack([b[0] for b in batch])
    bad = [i for b in batch for i in b[1]]
    return images, bad


class ResumableSampler(Sampler):
    """Per-epoch seeded permutation split into global batches; this rank takes its slice of
    each. Yields (epoch, index). `start_step` resumes in the middle of an epoch."""

    def __init__(self, size: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        if size < global_batch:
            raise DatasetError(f"the dataset has {size} images, fewer than one global batch "
                               f"({global_batch}): lower SOLVER.BATCH_SIZE or add images")
        self.size, self.global_batch = size, global_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.local_batch = global_batch // world_size
        self.epoch, self.start_step = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.size // self.global_batch

    def set_position(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.local_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.size, generator=g).tolist()
        for step in range(self.start_step, self.steps_per_epoch):
            lo = step * self.global_batch + self.rank * self.local_batch
            for i in perm[lo: lo + self.local_batch]:
                yield self.epoch, i
