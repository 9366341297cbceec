"""Dataset records shared by the readers: one dict per image, boxes in absolute XYXY pixels.

A record is ``{"file_name", "image_id", "height", "width", "annotations": [...]}``; an annotation is
``{"bbox": [x0, y0, x1, y1], "category_id": contiguous class index, "iscrowd": 0|1,
"difficult": bool, "segmentation": COCO polygons or RLE (optional)}``. This mirrors Detectron2's
dataset dicts so both engines see the same data.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from seed_core.errors import DatasetError

logger = logging.getLogger(__name__)


@dataclass
class DatasetSpec:
    """Where a named dataset lives and how to read it."""

    name: str
    kind: str  # "coco" or "voc"
    image_root: str = ""
    json_file: str = ""  # coco
    dirname: str = ""  # voc: folder with Annotations/, JPEGImages/, ImageSets/Main/
    split: str = ""  # voc: ImageSets/Main/<split>.txt
    year: int = 2007  # voc: 2007 selects the 11-point AP metric, as Detectron2 does
    class_names: Optional[List[str]] = None


@dataclass
class Dataset:
    """Records plus the metadata evaluation needs."""

    spec: DatasetSpec
    records: List[Dict]
    class_names: List[str]
    # COCO: contiguous class index -> category id in the json (for writing COCO results).
    contiguous_to_json_id: Dict[int, int] = field(default_factory=dict)

    @property
    def num_annotations(self) -> int:
        return sum(len(r["annotations"]) for r in self.records)


def require_annotations(dataset: Dataset) -> None:
    """Training or evaluating on a dataset without a single box cannot give a meaningful number."""
    if not dataset.records:
        raise DatasetError(f"dataset '{dataset.spec.name}' has no images: check its image list / json")
    if dataset.num_annotations == 0:
        where = dataset.spec.json_file or dataset.spec.dirname
        raise DatasetError(
            f"dataset '{dataset.spec.name}' ({where}) has {len(dataset.records)} images but zero annotations: "
            "detection needs at least one box; check the annotation file or point the config at another dataset")


def check_box(box: Sequence[float], width: float, height: float, where: str) -> None:
    """An XYXY box must be ordered and overlap its image; `where` names the file and object."""
    x0, y0, x1, y1 = box
    if x1 < x0 or y1 < y0:
        raise DatasetError(f"{where}: box {list(box)} has xmax < xmin or ymax < ymin; fix the annotation")
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise DatasetError(f"{where}: box {list(box)} lies entirely outside the {width}x{height} image; "
                           "fix or remove the annotation")


def check_image_size(record: Dict, width: int, height: int) -> None:
    """The decoded image must have the size the annotations were made for (as Detectron2 checks)."""
    if (width, height) != (record["width"], record["height"]):
        raise DatasetError(f"image {record['file_name']} (image id {record['image_id']}) is {width}x{height} "
                           f"(upright, EXIF orientation applied) but its annotation says "
                           f"{record['width']}x{record['height']}; fix the width/height in the annotation file "
                           "or replace the image")


def training_records(dataset: Dataset, filter_empty: bool = True) -> List[Dict]:
    """The records training sees: crowd regions dropped (they are not targets, as in Detectron2),
    then, with `filter_empty`, images left without a box. Nothing left is an error, not a hang."""
    records = [dict(r, annotations=[a for a in r["annotations"] if not a.get("iscrowd")]) for r in dataset.records]
    kept = [r for r in records if r["annotations"]] if filter_empty else records
    if len(kept) < len(records):
        logger.info("%s: removed %d images without annotations", dataset.spec.name, len(records) - len(kept))
    if not kept or not any(r["annotations"] for r in kept):
        raise DatasetError(f"training set '{dataset.spec.name}' ({dataset.spec.json_file or dataset.spec.dirname}) "
                           f"has no box left to train on after dropping crowd annotations"
                           f"{' and images without boxes' if filter_empty else ''} "
                           f"({len(dataset.records)} images, {dataset.num_annotations} annotations); "
                           "check the annotation file")
    return kept


def first_repeat(values: Sequence) -> tuple | None:
    """(value, first position, second position) of the first value listed twice, or None: a repeated
    image is counted twice in a metric and a repeated class name makes a phantom class."""
    seen: Dict = {}
    for i, v in enumerate(values):
        if v in seen:
            return v, seen[v], i
        seen[v] = i
    return None
