"""Read a PASCAL VOC layout (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt) into records."""
from __future__ import annotations

import logging
import os
from typing import List
from xml.etree import ElementTree as ET

from .records import Dataset, DatasetError, DatasetSpec, check_box, first_repeat

logger = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def _image_ids(spec: DatasetSpec) -> List[str]:
    path = os.path.join(spec.dirname, "ImageSets", "Main", spec.split + ".txt")
    if not os.path.isfile(path):
        raise DatasetError(f"VOC split file {path} does not exist: '{spec.name}' needs "
                           f"{spec.dirname}/ImageSets/Main/{spec.split}.txt")
    with open(path) as f:
        ids = [line.strip() for line in f if line.strip()]
    repeat = first_repeat(ids)
    if repeat:
        raise DatasetError(f"VOC split file {path} lists image {repeat[0]!r} twice (entries {repeat[1] + 1} and "
                           f"{repeat[2] + 1}); remove the repeat: a repeated image would be counted twice in "
                           "training and in AP")
    return ids


def _class_names(spec: DatasetSpec) -> List[str]:
    """Explicit names win; then a classes.txt beside the layout (one name a line); then the 20
    PASCAL VOC classes, Detectron2's default for a VOC-layout dataset."""
    if spec.class_names:
        return check_class_names(list(spec.class_names), f"the class names of dataset '{spec.name}'")
    return layout_class_names(spec.dirname)


def check_class_names(names: List[str], where: str) -> List[str]:
    """Names as given, refused if one is blank or listed twice (a phantom class in every metric)."""
    blank = [i + 1 for i, n in enumerate(names) if not str(n).strip()]
    if blank:
        raise DatasetError(f"{where}: entry {blank[0]} is blank; list one class name per line, no empty lines "
                           "between names")
    repeat = first_repeat(names)
    if repeat:
        raise DatasetError(f"{where}: class {repeat[0]!r} is listed twice (entries {repeat[1] + 1} and "
                           f"{repeat[2] + 1}); each class once")
    return names


def layout_class_names(dirname: str) -> List[str]:
    """classes.txt beside a VOC layout (one name a line), else the 20 PASCAL VOC classes."""
    listed = os.path.join(dirname, "classes.txt")
    if os.path.isfile(listed):
        with open(listed) as f:
            names = [line.strip() for line in f]
        while names and not names[-1]:  # a trailing newline is not a class
            names.pop()
        return check_class_names(names, listed)
    return list(VOC_CLASSES)


def _parse(spec: DatasetSpec, image_id: str) -> ET.Element:
    path = os.path.join(spec.dirname, "Annotations", image_id + ".xml")
    try:
        return ET.parse(path).getroot()
    except FileNotFoundError as e:
        raise DatasetError(f"VOC annotation {path} listed in split '{spec.split}' does not exist") from e
    except ET.ParseError as e:
        raise DatasetError(f"VOC annotation {path} is not valid XML ({e}): the file is broken") from e


def read_voc_boxes(spec: DatasetSpec, image_id: str, root: ET.Element | None = None):
    """Raw VOC objects of one image: (class name, [xmin, ymin, xmax, ymax] 1-based, difficult).
    An object without a name or a complete <bndbox>, or with xmax < xmin, is an error naming both."""
    path = os.path.join(spec.dirname, "Annotations", image_id + ".xml")
    out = []
    for i, obj in enumerate((root if root is not None else _parse(spec, image_id)).findall("object")):
        name = (obj.findtext("name") or "").strip()
        where = f"VOC annotation {path}, object {i} ('{name}')"
        bb = obj.find("bndbox")
        try:
            box = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (AttributeError, TypeError, ValueError):
            raise DatasetError(f"{where}: no complete <bndbox> with numeric xmin, ymin, xmax, ymax") from None
        if not name:
            raise DatasetError(f"{where}: the object has no <name>")
        if box[2] < box[0] or box[3] < box[1]:
            raise DatasetError(f"{where}: box {box} has xmax < xmin or ymax < ymin; fix the annotation")
        out.append((name, box, int(obj.findtext("difficult") or 0) == 1))
    return out


def _image_size(spec: DatasetSpec, image_id: str, root: ET.Element) -> tuple[int, int]:
    try:
        size = root.find("size")
        height, width = int(size.findtext("height")), int(size.findtext("width"))
    except (AttributeError, TypeError, ValueError):
        height = width = 0
    if height <= 0 or width <= 0:
        raise DatasetError(f"VOC annotation {spec.dirname}/Annotations/{image_id}.xml has no <size> with positive "
                           "<width> and <height>; add it (both engines check the decoded image against it)")
    return height, width


def load_voc(spec: DatasetSpec) -> Dataset:
    if not os.path.isdir(spec.dirname):
        raise DatasetError(f"VOC folder {spec.dirname} for dataset '{spec.name}' does not exist")
    ids = _image_ids(spec)
    names = _class_names(spec)
    index = {n: i for i, n in enumerate(names)}
    records = []
    for image_id in ids:
        root = _parse(spec, image_id)
        height, width = _image_size(spec, image_id, root)
        annos = []
        for i, (name, box, difficult) in enumerate(read_voc_boxes(spec, image_id, root)):
            if name not in index:
                raise DatasetError(f"{spec.dirname}/Annotations/{image_id}.xml has class '{name}', which is "
                                   f"not among the dataset's classes {names}; list the classes in "
                                   f"{spec.dirname}/classes.txt, one per line")
            # 1-based inclusive VOC pixels -> 0-based continuous box, as Detectron2's VOC loader does.
            bbox = [box[0] - 1.0, box[1] - 1.0, box[2], box[3]]
            check_box(bbox, width, height, f"VOC annotation {spec.dirname}/Annotations/{image_id}.xml, object {i} "
                                           f"('{name}')")
            annos.append({"bbox": bbox, "category_id": index[name],
                          "iscrowd": 0, "difficult": difficult})
        records.append({
            "file_name": os.path.join(spec.dirname, "JPEGImages", image_id + ".jpg"), "image_id": image_id,
            "height": height, "width": width, "annotations": annos,
        })
    return Dataset(spec, records, names)
