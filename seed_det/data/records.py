"""Dataset records shared by the readers: one dict per image, boxes in absolute XYXY pixels.

A record is ``{"file_name", "image_id", "height", "width", "annotations": [...]}``; an annotation is
``{"bbox": [x0, y0, x1, y1], "category_id": contiguous class index, "iscrowd": 0|1,
"difficult": bool, "segmentation": COCO polygons or RLE (optional)}``. This mirrors Detectron2's
dataset dicts so both engines see the same data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from seed_core.errors import DatasetError


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
