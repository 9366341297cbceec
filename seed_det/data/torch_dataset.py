"""Records -> (image tensor, torchvision detection target), plus the training sampler."""
from __future__ import annotations

import os
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_util

from seed_core.images import SkippedImages, read_rgb

from .catalog import MAX_BAD_KEY, readable_training_records
from .records import Dataset, DatasetError, check_image_size, training_records


def segmentation_to_mask(segm, height: int, width: int) -> np.ndarray:
    """COCO polygons, uncompressed RLE or compressed RLE -> HxW uint8 mask."""
    if isinstance(segm, list):
        rle = mask_util.merge(mask_util.frPyObjects(segm, height, width))
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        rle = mask_util.frPyObjects(segm, height, width)
    elif isinstance(segm, dict):
        rle = segm
    else:
        raise DatasetError(f"cannot read segmentation of type {type(segm).__name__}: expected polygons or RLE")
    return mask_util.decode(rle).astype(np.uint8)


class DetectionDataset(torch.utils.data.Dataset):
    """Images in the config's INPUT.FORMAT channel order, 0..255 floats (the model normalises them
    with MODEL.PIXEL_MEAN/STD, exactly like Detectron2), and targets with labels 1..K (0 = background).

    Images that cannot be read follow the suite's policy (seed_core.images): for training they are
    skipped and counted, up to `max_bad_fraction` (from the headers when built, or from the preflight's
    scan of them, `unreadable`); for evaluation (preflight has decoded every one) an error. A training
    image whose decoding fails later is replaced by the next one, and the sample carries what it
    skipped ({record index: error} under "skipped" in the target, beside "index"): data-loading
    workers and processes each see only their own samples, so the trainer counts them all in the one
    `skipped_images()` counter of the run."""

    def __init__(self, dataset: Dataset, train: bool, image_format: str = "RGB", with_masks: bool = False,
                 flip_prob: float = 0.5, filter_empty: bool = True, max_bad_fraction: float = 0.0,
                 unreadable: Optional[Mapping[str, str]] = None):
        if image_format not in ("RGB", "BGR"):
            raise DatasetError(f"INPUT.FORMAT must be RGB or BGR for the torchvision engine, not '{image_format}'")
        self.dataset, self.train, self.bgr, self.with_masks = dataset, train, image_format == "BGR", with_masks
        self.flip_prob = flip_prob if train else 0.0
        records = dataset.records
        if train:
            records = readable_training_records(training_records(dataset, filter_empty), max_bad_fraction,
                                                dataset.spec.name, unreadable)
        self.max_bad_fraction = max_bad_fraction
        if with_masks and any("segmentation" not in a for r in records for a in r["annotations"]):
            raise DatasetError(f"MODEL.MASK_ON is True but dataset '{dataset.spec.name}' has annotations without "
                               "'segmentation': use a COCO json with masks or set MODEL.MASK_ON False")
        missing = [r["file_name"] for r in records if not os.path.isfile(r["file_name"])]
        if missing:
            raise DatasetError(f"dataset '{dataset.spec.name}': {len(missing)} of {len(records)} images do not exist, "
                               f"e.g. {missing[0]}; check the image folder in the config")
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def skipped_images(self) -> SkippedImages:
        """A counter of the training images whose decoding fails, with this set's size and limit."""
        return SkippedImages(len(self.records), self.max_bad_fraction, f"training set '{self.dataset.spec.name}'",
                             MAX_BAD_KEY)

    def _readable(self, idx: int) -> tuple[int, np.ndarray, Dict[int, str]]:
        """(index, image, {skipped index: error}) of the first record from `idx` on whose image decodes
        (training); evaluation gets the decoder's error. An image of another size than its record is
        an error either way."""
        skipped: Dict[int, str] = {}
        for attempt in range(len(self.records)):
            i = (idx + attempt) % len(self.records)
            try:
                arr = read_rgb(self.records[i]["file_name"], "BGR" if self.bgr else "RGB")
            except DatasetError as e:  # unreadable, or a mode the decoder refuses
                if not self.train:
                    raise
                skipped[i] = str(e)
                continue
            check_image_size(self.records[i], arr.shape[1], arr.shape[0])
            return i, arr, skipped
        raise DatasetError(f"no image of training set '{self.dataset.spec.name}' can be read")

    def __getitem__(self, idx: int):
        idx, arr, skipped = self._readable(idx)
        record = self.records[idx]
        h, w = arr.shape[:2]
        annos = record["annotations"]
        boxes = torch.tensor([a["bbox"] for a in annos], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        target = {"boxes": boxes, "labels": torch.tensor([a["category_id"] + 1 for a in annos], dtype=torch.int64),
                  "index": torch.tensor(idx), "skipped": skipped}
        if self.with_masks:
            masks = [segmentation_to_mask(a["segmentation"], h, w) for a in annos]
            target["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.uint8)
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()
        if self.flip_prob and torch.rand(()) < self.flip_prob:
            image = image.flip(-1)
            target["boxes"] = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
            if self.with_masks:
                target["masks"] = target["masks"].flip(-1)
        return image, target


def collate(batch):
    return tuple(zip(*batch))


# What a target carries for the loop, not for the model: the record index and the images skipped.
BOOKKEEPING_KEYS = ("index", "skipped")


def model_inputs(images, targets, device) -> tuple[List[torch.Tensor], List[Dict[str, torch.Tensor]]]:
    """A batch as the model takes it: on `device`, the targets without the bookkeeping keys."""
    return ([im.to(device) for im in images],
            [{k: v.to(device) for k, v in t.items() if k not in BOOKKEEPING_KEYS} for t in targets])


class InfiniteBatchSampler(torch.utils.data.Sampler):
    """Endless shuffled global batches from a seeded generator, like Detectron2's TrainingSampler;
    process `rank` of `world_size` takes its equal slice of each. The sequence of global batches
    does not depend on the world size, and skipping `start_batch` of them makes a resumed run
    (with any world size) continue it.

    `groups` (one id per image, e.g. from `orientation_groups`) makes every batch hold images of one
    group only, as Detectron2's DATALOADER.ASPECT_RATIO_GROUPING does: the shuffled images fill one
    bucket per group and a bucket is emitted when it holds a batch. With a single group the batches
    are exactly those without grouping."""

    def __init__(self, size: int, batch_size: int, seed: int, start_batch: int = 0, rank: int = 0,
                 world_size: int = 1, groups: Sequence[int] | None = None):
        if size < 1 or batch_size < 1:  # an empty pool or batch would loop forever
            raise DatasetError(f"cannot draw batches of {batch_size} from {size} images: both must be >= 1")
        if batch_size % world_size:
            raise DatasetError(f"a global batch of {batch_size} images cannot be split evenly over {world_size} "
                               "processes")
        if groups is not None and len(groups) != size:
            raise DatasetError(f"{len(groups)} group ids for {size} images: give one per image")
        self.size, self.batch_size, self.seed, self.start_batch = size, batch_size, seed, start_batch
        self.groups = list(groups) if groups is not None else None
        self.local = batch_size // world_size
        self.offset = rank * self.local

    def __iter__(self) -> Iterator[List[int]]:
        g = torch.Generator().manual_seed(self.seed)
        buckets: Dict[int, List[int]] = {}
        produced = 0
        while True:
            for i in torch.randperm(self.size, generator=g).tolist():
                bucket = buckets.setdefault(self.groups[i] if self.groups is not None else 0, [])
                bucket.append(i)
                if len(bucket) == self.batch_size:
                    if produced >= self.start_batch:
                        yield bucket[self.offset: self.offset + self.local]
                    produced += 1
                    bucket.clear()


def orientation_groups(records: Sequence[Dict]) -> List[int]:
    """Detectron2's aspect-ratio groups: 0 for a landscape image (width > height), 1 otherwise."""
    return [0 if r["width"] > r["height"] else 1 for r in records]
