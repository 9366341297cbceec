"""Detectron2-only code: the BasicBlock res5 ROI head, config, dataset registration and the engine.

Importing this package imports Detectron2 and registers `BasicBlockRes5ROIHeads` in its
ROI_HEADS_REGISTRY and `build_timm_fpn_backbone` in its BACKBONE_REGISTRY. Nothing outside the
Detectron2 engine imports it.
"""
from seed_det.engines.d2.roi_heads import BasicBlockRes5ROIHeads  # noqa: F401  (registers the head)
from seed_det.engines.d2.timm_fpn import build_timm_fpn_backbone  # noqa: F401  (registers the backbone)
from seed_det.engines.d2.config import get_d2_cfg, load_d2_config  # noqa: F401
