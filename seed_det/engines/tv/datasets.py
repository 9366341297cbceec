"""The datasets a config names, loaded through the catalog and checked for training/evaluation."""
from __future__ import annotations

import logging
from typing import List, Sequence

from fvcore.common.config import CfgNode

from seed_core.errors import ConfigError
from seed_det.data import Dataset, DatasetSpec, load_dataset, require_annotations

logger = logging.getLogger(__name__)


def load_checked(cfg: CfgNode, names: Sequence[str], key: str) -> List[Dataset]:
    """Load each dataset, requiring boxes and a class count equal to MODEL.ROI_HEADS.NUM_CLASSES."""
    if not names:
        raise ConfigError(f"{key} is empty: name the dataset(s) to use")
    out = []
    for name in names:
        ds = load_dataset(name)
        require_annotations(ds)
        if len(ds.class_names) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise ConfigError(f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES} but dataset "
                              f"'{name}' has {len(ds.class_names)} classes {ds.class_names[:10]}: set it to "
                              f"{len(ds.class_names)}")
        out.append(ds)
    return out


def merge(datasets: List[Dataset]) -> Dataset:
    """Several training sets (e.g. VOC07 + VOC12 trainval) as one; their classes must agree."""
    first = datasets[0]
    for ds in datasets[1:]:
        if ds.class_names != first.class_names:
            raise ConfigError(f"DATASETS.TRAIN mixes datasets with different classes: '{first.spec.name}' "
                              f"{first.class_names} vs '{ds.spec.name}' {ds.class_names}")
    if len(datasets) == 1:
        return first
    records = [r for ds in datasets for r in ds.records]
    spec = DatasetSpec("+".join(ds.spec.name for ds in datasets), first.spec.kind)
    return Dataset(spec, records, first.class_names, first.contiguous_to_json_id)
