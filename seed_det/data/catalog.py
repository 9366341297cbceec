"""The one catalog of dataset names: Detectron2's builtin VOC/COCO names under $DETECTRON2_DATASETS,
and the datasets a config registers (DATASETS.COCO_JSON / DATASETS.VOC) or code registers.

Every engine and the preflight ask this module where a dataset lives and which files it needs.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Mapping, Optional

from .coco_json import load_coco_json
from seed_core.images import limit_skipped, read_headers, refuse_unreadable, upright_size

from .records import Dataset, DatasetError, DatasetSpec, check_image_size, require_annotations, training_records
from .voc import VOC_CLASSES, load_voc

logger = logging.getLogger(__name__)

DATASETS_ENV = "DETECTRON2_DATASETS"
_REGISTERED: Dict[str, DatasetSpec] = {}

# Builtin names as Detectron2 defines them: name -> (folder under the datasets root, split, year)
_BUILTIN_VOC = {f"voc_{y}_{s}": (f"VOC{y}", s, int(y))
                for y in ("2007", "2012") for s in ("train", "val", "trainval")}
_BUILTIN_VOC["voc_2007_test"] = ("VOC2007", "test", 2007)
# name -> (image folder, instances json) under the datasets root
_BUILTIN_COCO = {f"coco_{y}_{s}": (f"coco/{s}{y}", f"coco/annotations/instances_{s}{y}.json")
                 for y in ("2014", "2017") for s in ("train", "val")}


def datasets_root() -> str:
    return os.path.expanduser(os.environ.get(DATASETS_ENV, "datasets"))


def is_builtin(name: str) -> bool:
    return name in _BUILTIN_VOC or name in _BUILTIN_COCO


def register_dataset(spec: DatasetSpec) -> None:
    """Make a dataset available by name (overrides a builtin of the same name)."""
    if spec.kind not in ("coco", "voc"):
        raise DatasetError(f"dataset '{spec.name}': kind must be 'coco' or 'voc', not '{spec.kind}'")
    _REGISTERED[spec.name] = spec


def config_specs(cfg) -> List[DatasetSpec]:
    """The datasets a detection config registers in DATASETS.COCO_JSON and DATASETS.VOC."""
    specs = [DatasetSpec(name, "coco", image_root=image_root, json_file=json_file)
             for name, json_file, image_root in cfg.DATASETS.COCO_JSON]
    specs += [DatasetSpec(name, "voc", dirname=dirname, split=split, year=int(year))
              for name, dirname, split, year in cfg.DATASETS.VOC]
    return specs


def register_from_config(cfg) -> None:
    for spec in config_specs(cfg):
        register_dataset(spec)


def builtin_spec(name: str) -> DatasetSpec:
    """Where a Detectron2 builtin dataset lives under $DETECTRON2_DATASETS."""
    root = datasets_root()
    if name in _BUILTIN_VOC:
        folder, split, year = _BUILTIN_VOC[name]
        return DatasetSpec(name, "voc", dirname=os.path.join(root, folder), split=split, year=year,
                           class_names=list(VOC_CLASSES))
    images, json_file = _BUILTIN_COCO[name]
    return DatasetSpec(name, "coco", image_root=os.path.join(root, images), json_file=os.path.join(root, json_file))


def required_paths(spec: DatasetSpec) -> List[str]:
    """Files and folders that must exist for `spec` to be read."""
    if spec.kind == "coco":
        return [spec.json_file, spec.image_root]
    return [os.path.join(spec.dirname, "ImageSets", "Main", f"{spec.split}.txt"),
            os.path.join(spec.dirname, "Annotations"), os.path.join(spec.dirname, "JPEGImages")]


def resolve(name: str) -> DatasetSpec:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if is_builtin(name):
        return builtin_spec(name)
    known = sorted(_REGISTERED) + sorted(_BUILTIN_VOC) + sorted(_BUILTIN_COCO)
    raise DatasetError(f"unknown dataset '{name}': register it in the config (DATASETS.COCO_JSON or "
                       f"DATASETS.VOC) or use a builtin name; known: {', '.join(known)}")


def check_present(name: str, spec: DatasetSpec) -> None:
    """Refuse a dataset whose files are missing, saying where they were looked for."""
    missing = [p for p in required_paths(spec) if not os.path.exists(p)]
    if not missing:
        return
    if is_builtin(name) and name not in _REGISTERED:
        raise DatasetError(
            f"dataset '{name}' not found: missing {missing[0]}. Builtin VOC/COCO datasets are read from "
            f"${DATASETS_ENV} (now '{datasets_root()}'); set {DATASETS_ENV} to the folder holding VOC2007/, "
            f"VOC2012/ and coco/ (see docs/DETECTION.md#datasets), or register your own data with DATASETS.COCO_JSON / "
            f"DATASETS.VOC.")
    raise DatasetError(f"dataset '{name}' (registered in DATASETS.COCO_JSON/VOC) is missing {missing}; "
                       f"fix the paths in the config.")


def load_dataset(name: str) -> Dataset:
    spec = resolve(name)
    check_present(name, spec)
    dataset = load_coco_json(spec) if spec.kind == "coco" else load_voc(spec)
    logger.info("dataset %s: %d images, %d annotations, %d classes",
                name, len(dataset.records), dataset.num_annotations, len(dataset.class_names))
    return dataset


MAX_BAD_KEY = "DATALOADER.MAX_BAD_FRACTION"


def check_test_images(dataset: Dataset, num_workers: int = 0) -> None:
    """Evaluation's image policy: every image decodes whole and has the size its record says, or one
    error naming the file, before any work (seed_core.images.refuse_unreadable)."""
    refuse_unreadable([r["file_name"] for r in dataset.records], f"test set '{dataset.spec.name}'", num_workers)
    for record in dataset.records:
        check_image_size(record, *upright_size(record["file_name"]))


def unreadable_training_images(records: List[Dict], max_bad_fraction: float, name: str) -> Dict[str, str]:
    """The header scan of training's image policy, once a run (the preflight's, through
    `check_training_set`): {file name: why it cannot be read} of the records whose image does not
    open, an error above `max_bad_fraction`; the others must have the size their record says. No
    warning here: `readable_training_records`, where the engine leaves them out, reports them."""
    sizes, bad = read_headers([r["file_name"] for r in records])
    limit_skipped(list(bad.values()), len(records), max_bad_fraction, f"training set '{name}'", MAX_BAD_KEY,
                  report=False)
    for i, (width, height) in sizes.items():
        check_image_size(records[i], width, height)
    return {records[i]["file_name"]: error for i, error in bad.items()}


def readable_training_records(records: List[Dict], max_bad_fraction: float, name: str,
                              unreadable: Optional[Mapping[str, str]] = None) -> List[Dict]:
    """Training's image policy: records whose image does not open are left out and counted in one
    warning, an error above `max_bad_fraction` (seed_core.images.limit_skipped). `unreadable` is what
    `unreadable_training_images` found for them (the preflight's: no header is read again); None
    scans them now. Both engines train on what this returns."""
    if unreadable is None:
        unreadable = unreadable_training_images(records, max_bad_fraction, name)
    bad = [unreadable[r["file_name"]] for r in records if r["file_name"] in unreadable]
    limit_skipped(bad, len(records), max_bad_fraction, f"training set '{name}'", MAX_BAD_KEY)
    return [r for r in records if r["file_name"] not in unreadable]


def check_training_set(dataset: Dataset, filter_empty: bool = True, max_bad_fraction: float = 0.0) -> Dict[str, str]:
    """A training set's images (`unreadable_training_images`, whose result it returns) and something
    left to train on after crowd/empty filtering and the unreadable images."""
    records = training_records(dataset, filter_empty)
    unreadable = unreadable_training_images(records, max_bad_fraction, dataset.spec.name)
    kept = [r for r in records if r["file_name"] not in unreadable]
    training_records(Dataset(dataset.spec, kept, dataset.class_names), filter_empty)
    return unreadable


def validate_dataset(spec: DatasetSpec, for_training: bool = False, filter_empty: bool = True,
                     for_testing: bool = False, max_bad_fraction: float = 0.0, num_workers: int = 0,
                     unreadable: Optional[Dict[str, str]] = None) -> Dataset:
    """Read a dataset the way the engines will and check everything they rely on before any work:
    annotation structure (in the readers), image files and sizes (a test set: every image decodes; a
    training set: at most `max_bad_fraction` unreadable), and for training a non-empty set of boxes
    after crowd/empty filtering. Both engines run this, so they accept the same data. A training set's
    unreadable images (`check_training_set`) are added to `unreadable` when given."""
    dataset = load_coco_json(spec) if spec.kind == "coco" else load_voc(spec)
    require_annotations(dataset)
    if for_testing:
        check_test_images(dataset, num_workers)
    if for_training:
        found = check_training_set(dataset, filter_empty, max_bad_fraction)
        if unreadable is not None:
            unreadable.update(found)
    logger.info("dataset %s checked: %d images, %d annotations", spec.name, len(dataset.records),
                dataset.num_annotations)
    return dataset
