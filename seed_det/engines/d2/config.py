"""Detectron2 config for our YAML files: Detectron2's own `get_cfg()` plus the SEED additions.

Same YAML, same overrides, same validation as the portable `seed_det.config.load_det_config`.
"""
from __future__ import annotations

import os
from typing import Iterable

from detectron2.config import CfgNode, get_cfg

from seed_det.config import add_seed_config, merge_det_config, validate_det_config


def get_d2_cfg() -> CfgNode:
    return add_seed_config(get_cfg())


def load_d2_config(path: str | os.PathLike, opts: Iterable[str] = ()) -> CfgNode:
    cfg = merge_det_config(get_d2_cfg(), path, tuple(opts))
    validate_det_config(cfg)
    return cfg


def to_d2_config(cfg) -> CfgNode:
    """Detectron2's own config holding the values of our parsed one (whose keys mirror Detectron2's
    names and defaults), frozen: the YAML is parsed once, by seed_det.config."""
    d2 = get_d2_cfg()
    d2.merge_from_other_cfg(cfg)
    d2.freeze()
    return d2
