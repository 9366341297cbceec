"""Images for distillation: ImageFolder or flat folders, augmented views (recipes in
augmentations.py), a resumable sampler, and unreadable files skipped and counted instead of killing a
multi-day run."""
from __future__ import annotations

import logging
import os
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from .errors import DatasetError
from .images import decode_rgb, open_rgb

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation: the same on any worker, rank or resume."""
    return hash((seed, epoch, index)) & 0x7FFF_FFFF_FFFF_FFFF


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


def first_readable(files: list[str], index: int, open_file) -> tuple[int, object, list[int]]:
    """Training's skip for one sample: `open_file(files[i])` for the first i from `index` on (wrapping
    around) whose file decodes; returns (i, what it returned, the indices skipped before it). A file
    the decoder cannot read (seed_core.images names it) is skipped; none readable is a DatasetError."""
    bad = []
    for attempt in range(len(files)):
        i = (index + attempt) % len(files)
        try:
            return i, open_file(files[i]), bad
        except DatasetError as e:  # the decoder names every file it cannot read (seed_core.images)
            logger.debug("skipping unreadable image %s: %s", files[i], e)
            bad.append(i)
    raise DatasetError("no image in the dataset could be read")


class UnlabeledImages(Dataset):
    """Indexed by (epoch, index) so each sample's augmentation is seeded by (seed, epoch, index):
    the same on any worker, after any resume. A file that cannot be decoded is replaced by the
    next readable one and reported in the sample's `bad` list.

    A sample is `views` augmented views of the image (stacked when more than one) and, with
    `small_views` > 0, also that many small patches from `small_transform`: (main, small patches).

    A transform is a callable on the decoded PIL image or, when it has `plan`, `reduction` and
    `render` (seed_core.photo_transform), one whose crop boxes are drawn from the header's size so
    that the file is decoded only as large as its largest-scale view needs."""

    def __init__(self, files: list[str], transform, views: int = 1, seed: int = 0,
                 small_transform=None, small_views: int = 0):
        if small_views and small_transform is None:
            raise ValueError("small_views > 0 needs a small_transform")
        self.files = files
        self.transform = transform
        self.views = views
        self.seed = seed
        self.small_transform, self.small_views = small_transform, small_views

    def __len__(self) -> int:
        return len(self.files)

    def _view_transforms(self) -> list:
        return [self.transform] * self.views + [self.small_transform] * self.small_views

    def _open(self, path: str) -> tuple[Image.Image | np.ndarray, list | None]:
        """The decoded image and, for planned transforms, each view's crop (None: plain ones); a
        planned transform takes the pixels as an HxWx3 array."""
        transforms = self._view_transforms()
        if not all(hasattr(t, "plan") for t in transforms):
            return open_rgb(path), None
        crops = []

        def reduction(width: int, height: int) -> int:
            crops[:] = [t.plan(width, height) for t in transforms]
            return min(t.reduction(c) for t, c in zip(transforms, crops))

        return decode_rgb(path, reduction), crops

    def __getitem__(self, key) -> tuple[torch.Tensor | tuple[torch.Tensor, torch.Tensor], list[int]]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        with torch.random.fork_rng(devices=[]):
            # Seeded before decoding: a planned transform draws its crops from the header. Only the
            # CPU generator: torch.manual_seed also defers a seeding of every accelerator not
            # started yet, formatting a stack trace each time: in a data-loader worker (which never
            # starts CUDA) about 1 ms per sample.
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            _, (img, crops), bad = first_readable(self.files, index, self._open)
            if crops is None:
                out = [t(img) for t in self._view_transforms()]
            else:
                out = [t.render(img, c) for t, c in zip(self._view_transforms(), crops)]
            main = out[0] if self.views == 1 else torch.stack(out[:self.views])
            if not self.small_views:
                return main, bad
            small = torch.stack(out[self.views:])
        return (main, small), bad


def collate(batch):
    """Stack samples (sample, bad indices) into (batch, bad indices); a sample that is a tuple (main
    views and small patches; an image and its label) gives a tuple of batches."""
    from torch.utils.data import default_collate  # in a worker it stacks straight into shared
    first = batch[0][0]                           # memory: no second copy to send the batch
    if isinstance(first, tuple):
        images = tuple(default_collate([b[0][j] for b in batch]) for j in range(len(first)))
    else:
        images = default_collate([b[0] for b in batch])
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
