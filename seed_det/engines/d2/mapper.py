"""Detectron2's DatasetMapper with images read by the suite's one decoder (seed_core.images):
16-bit and float images scaled, EXIF orientation applied, sizes checked with the file and image id
named, exactly as the torchvision engine reads them. An image that cannot be decoded follows the
suite's policy as there: training skips it (Detectron2's MapDataset takes another image when the
mapper returns None) and counts it; evaluation stops naming it."""
from __future__ import annotations

import copy

import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from seed_core.errors import DatasetError
from seed_core.images import SkippedImages, read_rgb
from seed_det.data.records import check_image_size


class DecodingMapper(DatasetMapper):
    """Used for RGB/BGR inputs without semantic segmentation; anything else goes to Detectron2's own.
    For training, `skipped` counts the distinct images whose decoding failed (by file name: one met
    again on a later pass over the data counts once). Each data-loading process (a DataLoader worker
    of each training process) holds its own copy, so DATALOADER.MAX_BAD_FRACTION is checked per
    data-loading process on this engine, not over the whole run as on the torchvision engine."""

    def __init__(self, cfg, is_train: bool = True, skipped: SkippedImages | None = None):
        super().__init__(cfg, is_train=is_train)
        self.skipped = skipped

    def __call__(self, dataset_dict):
        if self.image_format not in ("RGB", "BGR") or "sem_seg_file_name" in dataset_dict:
            return super().__call__(dataset_dict)
        record = copy.deepcopy(dataset_dict)
        try:
            image = read_rgb(record["file_name"], self.image_format)
        except DatasetError as e:  # unreadable, or a mode the decoder refuses
            if self.skipped is None:
                raise
            self.skipped.skip(record["file_name"], e)
            return None  # Detectron2's MapDataset maps another image instead
        if "width" in record and "height" in record:
            check_image_size(record, image.shape[1], image.shape[0])
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        shape = image.shape[:2]
        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if self.proposal_topk is not None:
            utils.transform_proposals(record, shape, transforms, proposal_topk=self.proposal_topk)
        if not self.is_train:
            record.pop("annotations", None)
            return record
        if "annotations" in record:
            self._transform_annotations(record, transforms, shape)
        return record
