"""res5 ROI head that matches the backbone's block type (BasicBlock for R18/R34).

Detectron2's stock `Res5ROIHeads` always builds three Bottleneck blocks, so an R18/R34-C4 model
would keep none of the student's res5 and train a random head instead. This head builds res5 the
way the backbone's depth says (R18: 2 BasicBlocks, R34: 3, 512 channels; R50+: the stock
Bottleneck stage) and can append one extra norm layer after res5, as MoCo's detection protocol does.
"""
from __future__ import annotations

from torch import nn

from detectron2.layers import get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, ResNet
from detectron2.modeling.roi_heads import Res5ROIHeads

RES5_BASIC_BLOCKS = {18: 2, 34: 3}


@ROI_HEADS_REGISTRY.register()
class BasicBlockRes5ROIHeads(Res5ROIHeads):
    """Registered under its class name, `seed_det.config.BASIC_BLOCK_ROI_HEAD`."""

    @classmethod
    def _build_res5_block(cls, cfg):
        r = cfg.MODEL.RESNETS
        if r.DEPTH in RES5_BASIC_BLOCKS:
            out_channels = r.RES2_OUT_CHANNELS * 8  # res5 is 8x res2, as in the backbone
            n = RES5_BASIC_BLOCKS[r.DEPTH]
            blocks = ResNet.make_stage(BasicBlock, n, stride_per_block=[2] + [1] * (n - 1),
                                       in_channels=out_channels // 2, out_channels=out_channels,
                                       norm=r.NORM)
            res5 = nn.Sequential(*blocks)
        else:
            res5, out_channels = super()._build_res5_block(cfg)
        if cfg.MODEL.ROI_HEADS.RES5_EXTRA_NORM:
            # Named "norm" so the checkpoint's res5.{i}.* names never match it.
            res5.add_module("norm", get_norm(r.NORM, out_channels))
        return res5, out_channels
