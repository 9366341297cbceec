"""Datasets for the detection suite: COCO json, VOC layout, one catalog of names, torch adapters."""
from .catalog import datasets_root, load_dataset, register_dataset, resolve
from .records import Dataset, DatasetError, DatasetSpec, require_annotations

__all__ = ["Dataset", "DatasetError", "DatasetSpec", "datasets_root", "load_dataset",
           "register_dataset", "require_annotations", "resolve"]
