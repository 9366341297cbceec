"""Datasets for the detection suite: generated shapes, COCO json, VOC layout, torch adapters."""
from .catalog import datasets_root, load_dataset, register_dataset, resolve
from .records import Dataset, DatasetError, DatasetSpec, require_annotations
from .shapes import CLASSES as SHAPES_CLASSES, write_shapes_dataset

__all__ = ["Dataset", "DatasetError", "DatasetSpec", "SHAPES_CLASSES", "datasets_root", "load_dataset",
           "register_dataset", "require_annotations", "resolve", "write_shapes_dataset"]
