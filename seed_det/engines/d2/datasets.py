"""Register the datasets a config names (DATASETS.COCO_JSON / DATASETS.VOC) in Detectron2's catalogs.

Builtin VOC/COCO names (voc_2007_trainval, coco_2017_train, ...) are registered by Detectron2
itself under $DETECTRON2_DATASETS; `seed_det.engines.preflight` has already checked their files.
"""
from __future__ import annotations

import logging

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.datasets.pascal_voc import register_pascal_voc

from seed_core.errors import SeedError
from seed_det.data.voc import layout_class_names

logger = logging.getLogger(__name__)


def _already(name: str, **expected) -> bool:
    """True when `name` is registered with these metadata; re-registers (tests, notebooks) otherwise."""
    if name not in DatasetCatalog.list():
        return False
    meta = MetadataCatalog.get(name)
    if all(getattr(meta, k, None) == v for k, v in expected.items()):
        return True
    logger.warning("dataset %s was registered with other paths; registering it again", name)
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)
    return False


def register_in_detectron2(cfg) -> None:
    for name, json_file, image_root in cfg.DATASETS.COCO_JSON:
        if not _already(name, json_file=json_file, image_root=image_root):
            register_coco_instances(name, {}, json_file, image_root)
    for name, dirname, split, year in cfg.DATASETS.VOC:
        if not _already(name, dirname=dirname, split=split, year=int(year)):
            register_pascal_voc(name, dirname, split, int(year), class_names=layout_class_names(dirname))
            MetadataCatalog.get(name).evaluator_type = "pascal_voc"
    known = set(DatasetCatalog.list())
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        if name not in known:
            raise SeedError(f"dataset '{name}' is not registered. Use a Detectron2 builtin name "
                               "(e.g. voc_2007_trainval, coco_2017_train) or register it with "
                               "DATASETS.COCO_JSON [[name, json_file, image_root]] / DATASETS.VOC "
                               "[[name, dirname, split, year]].")
