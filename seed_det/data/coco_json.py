"""Read a COCO-format instances json into dataset records (contiguous class ids, XYXY boxes)."""
from __future__ import annotations

import json
import logging
import os

from .records import Dataset, DatasetError, DatasetSpec, check_box, first_repeat

logger = logging.getLogger(__name__)


def read_coco_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise DatasetError(f"COCO json {path} does not exist: check the path or DETECTRON2_DATASETS")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"COCO json {path} is not valid JSON ({e}): the file is broken or truncated; "
                           "regenerate or re-download it") from e
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise DatasetError(f"COCO json {path} lacks the 'images', 'annotations' and 'categories' lists "
                           "of a COCO instances file")
    return data


def _check_images(images, path: str) -> dict:
    """id -> image entry; every image needs an id, a file name and a positive height and width."""
    by_id = {}
    for img in images:
        name = img.get("file_name", "?")
        if "id" not in img or "file_name" not in img:
            raise DatasetError(f"COCO json {path}: image entry {name} lacks 'id' or 'file_name'")
        if not all(isinstance(img.get(k), (int, float)) and img[k] > 0 for k in ("height", "width")):
            raise DatasetError(f"COCO json {path}: image id {img['id']} ({name}) lacks a positive 'height' and "
                               "'width'; add them (both engines check the decoded image against them)")
        if img["id"] in by_id:
            raise DatasetError(f"COCO json {path}: image id {img['id']} is used twice ({by_id[img['id']]['file_name']} "
                               f"and {name}); image ids must be unique (duplicates change AP)")
        by_id[img["id"]] = img
    repeat = first_repeat([img["file_name"] for img in images])
    if repeat:
        raise DatasetError(f"COCO json {path}: image file {repeat[0]} is listed twice (image ids "
                           f"{images[repeat[1]]['id']} and {images[repeat[2]]['id']}); list each image once "
                           "(a repeated image is counted twice in AP)")
    return by_id


def _check_categories(cats, path: str) -> None:
    """Category ids and names each once: a repeat would make a phantom class."""
    for key in ("id", "name"):
        repeat = first_repeat([c.get(key) for c in cats])
        if repeat:
            raise DatasetError(f"COCO json {path}: category {key} {repeat[0]!r} is used twice in 'categories'; "
                               f"each category once")


def _check_annotation_ids(anns, path: str) -> None:
    repeat = first_repeat([a["id"] for a in anns if "id" in a])
    if repeat:
        raise DatasetError(f"COCO json {path}: annotation id {repeat[0]} is used twice; annotation ids must be "
                           "unique (COCO evaluation matches by id)")


def load_coco_json(spec: DatasetSpec) -> Dataset:
    data = read_coco_json(spec.json_file)
    path = spec.json_file
    cats = sorted(data["categories"], key=lambda c: c["id"])
    if not cats:
        raise DatasetError(f"COCO json {path} has no categories")
    _check_categories(cats, path)
    _check_annotation_ids(data["annotations"], path)
    # Contiguous ids follow sorted json ids, as in Detectron2, so class indices agree across engines.
    json_to_contiguous = {c["id"]: i for i, c in enumerate(cats)}
    images = _check_images(data["images"], path)
    per_image = {}
    for ann in data["annotations"]:
        if ann.get("image_id") not in images:
            raise DatasetError(f"COCO json {path}: annotation {ann.get('id')} refers to image id "
                               f"{ann.get('image_id')}, which is not in 'images'")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
            raise DatasetError(f"COCO json {path}: annotation {ann.get('id')} (image id {ann['image_id']}, "
                               f"{images[ann['image_id']]['file_name']}) has no [x, y, width, height] 'bbox'")
        per_image.setdefault(ann["image_id"], []).append(ann)
    records, dropped = [], 0
    for img in data["images"]:
        annos = []
        for ann in per_image.get(img["id"], []):
            x, y, w, h = ann["bbox"]
            if ann["category_id"] not in json_to_contiguous:
                raise DatasetError(f"COCO json {path}: annotation {ann.get('id')} has category_id "
                                   f"{ann['category_id']} which is not in 'categories'")
            if w <= 0 or h <= 0:
                dropped += 1
                continue
            check_box([x, y, x + w, y + h], img["width"], img["height"],
                      f"COCO json {path}: annotation {ann.get('id')} of image id {img['id']} ({img['file_name']})")
            anno = {"bbox": [x, y, x + w, y + h], "category_id": json_to_contiguous[ann["category_id"]],
                    "iscrowd": int(ann.get("iscrowd", 0)), "difficult": False}
            if ann.get("segmentation"):
                anno["segmentation"] = ann["segmentation"]
            annos.append(anno)
        records.append({
            "file_name": os.path.join(spec.image_root, img["file_name"]), "image_id": img["id"],
            "height": img["height"], "width": img["width"], "annotations": annos,
        })
    if dropped:
        logger.warning("%s: dropped %d annotations with empty boxes", spec.name, dropped)
    return Dataset(spec, records, [c["name"] for c in cats], {i: c["id"] for i, c in enumerate(cats)})
