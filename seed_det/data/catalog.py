"""Dataset names -> DatasetSpec: Detectron2's builtin VOC/COCO names under $DETECTRON2_DATASETS,
plus datasets registered at run time (from a config or by code)."""
from __future__ import annotations

import logging
import os
from typing import Dict

from .coco_json import load_coco_json
from .records import Dataset, DatasetError, DatasetSpec
from .voc import VOC_CLASSES, load_voc

logger = logging.getLogger(__name__)

_REGISTERED: Dict[str, DatasetSpec] = {}

# name -> (kind, folder under DETECTRON2_DATASETS, split or json, year / image folder)
_BUILTIN_VOC = {f"voc_{y}_{s}": (f"VOC{y}", s, int(y))
                for y in ("2007", "2012") for s in ("train", "val", "trainval")}
_BUILTIN_VOC["voc_2007_test"] = ("VOC2007", "test", 2007)
_BUILTIN_COCO = {f"coco_{y}_{s}": (f"coco/{s}{y}", f"coco/annotations/instances_{s}{y}.json")
                 for y in ("2014", "2017") for s in ("train", "val")}


def register_dataset(spec: DatasetSpec) -> None:
    """Make a dataset available by name (overrides a builtin of the same name)."""
    if spec.kind not in ("coco", "voc"):
        raise DatasetError(f"dataset '{spec.name}': kind must be 'coco' or 'voc', not '{spec.kind}'")
    _REGISTERED[spec.name] = spec


def datasets_root() -> str:
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def _builtin(name: str) -> DatasetSpec:
    root = datasets_root()
    if name in _BUILTIN_VOC:
        folder, split, year = _BUILTIN_VOC[name]
        spec = DatasetSpec(name, "voc", dirname=os.path.join(root, folder), split=split, year=year,
                           class_names=list(VOC_CLASSES))
        needed = spec.dirname
    else:
        images, json_file = _BUILTIN_COCO[name]
        spec = DatasetSpec(name, "coco", image_root=os.path.join(root, images),
                           json_file=os.path.join(root, json_file))
        needed = spec.json_file
    if not os.path.exists(needed):
        raise DatasetError(
            f"builtin dataset '{name}' expects {needed}, which does not exist. Set DETECTRON2_DATASETS to the "
            f"folder holding VOC20xx/ and coco/ (now DETECTRON2_DATASETS="
            f"{os.environ.get('DETECTRON2_DATASETS', '<unset, default ./datasets>')})")
    return spec


def resolve(name: str) -> DatasetSpec:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTIN_VOC or name in _BUILTIN_COCO:
        return _builtin(name)
    known = sorted(_REGISTERED) + sorted(_BUILTIN_VOC) + sorted(_BUILTIN_COCO)
    raise DatasetError(f"unknown dataset '{name}': register it in the config (COCO json or VOC layout) "
                       f"or use a builtin name; known: {', '.join(known)}")


def load_dataset(name: str) -> Dataset:
    spec = resolve(name)
    dataset = load_coco_json(spec) if spec.kind == "coco" else load_voc(spec)
    logger.info("dataset %s: %d images, %d annotations, %d classes",
                name, len(dataset.records), dataset.num_annotations, len(dataset.class_names))
    return dataset
