"""Faster / Mask R-CNN from torchvision.models.detection, built from a Detectron2-style config.

FPN: ResNet res2..res5 + torchvision's FPN (P2..P6), fc box head, 4-conv mask head.
C4: ResNet up to res4 (stride 16) feeds the RPN and a 14x14 RoIAlign; res5 (layer4) runs on the
pooled features as the box head, and its output also feeds the mask deconv, as in Detectron2's
Res5ROIHeads. Detectron2's NUM_CLASSES excludes background; torchvision's includes it.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Dict, List, Sequence

import numpy as np
from fvcore.common.config import CfgNode
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from seed_det.timm_backbone import TIMM_FPN_BACKBONE, is_timm_backbone

from .checks import FPN_BACKBONE, check_supported
from .layers import D2AnchorGenerator, D2RoIHeads, D2RPN, RoIPooler, SyncBatchNorm2d, init_like_detectron2

logger = logging.getLogger(__name__)

_STAGES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
FPN_STRIDES = (4, 8, 16, 32, 64)  # P2..P5, and P6 (max-pooled P5) for the RPN only
C4_STRIDE = 16  # res4


def norm_layer(name: str):
    """Detectron2 norm name -> a constructor taking the channel count (None for no norm)."""
    if name == "":
        return None
    if name == "FrozenBN":
        return FrozenBatchNorm2d
    if name == "GN":
        return lambda channels: nn.GroupNorm(32, channels)
    if name in ("SyncBN", "naiveSyncBN"):
        return SyncBatchNorm2d  # statistics of the global batch; plain BN in a single process
    return nn.BatchNorm2d


def freeze_bn(module: nn.Module) -> nn.Module:
    """BatchNorm2d -> FrozenBatchNorm2d with the same statistics (Detectron2 freezes norms of frozen stages)."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, name).copy_(getattr(module, name).detach())
        return frozen
    for name, child in module.named_children():
        setattr(module, name, freeze_bn(child))
    return module


def apply_freeze_at(net: resnet.ResNet, freeze_at: int) -> None:
    """FREEZE_AT k freezes the stem (k >= 1) and res2..res{k} (layer1..layer{k-1})."""
    groups = [("conv1", "bn1")] + [(f"layer{i}",) for i in range(1, 5)]
    for group in groups[:max(freeze_at, 0)]:
        for name in group:
            module = freeze_bn(getattr(net, name))
            setattr(net, name, module)
            for p in module.parameters():
                p.requires_grad_(False)


def build_resnet(cfg: CfgNode, fpn: bool) -> resnet.ResNet:
    r = cfg.MODEL.RESNETS
    net = getattr(resnet, f"resnet{r.DEPTH}")(weights=None, norm_layer=norm_layer(r.NORM))
    # With C4, res5 is the ROI head, not a backbone stage: FREEZE_AT never reaches it (as in Detectron2).
    apply_freeze_at(net, cfg.MODEL.BACKBONE.FREEZE_AT if fpn else min(cfg.MODEL.BACKBONE.FREEZE_AT, 4))
    return net


def _out_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels


class C4Body(nn.Module):
    """ResNet stem + res2..res4: one stride-16 feature map."""

    def __init__(self, net: resnet.ResNet):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.out_channels = net.layer4[0].conv1.in_channels

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


class Res5(nn.Module):
    """res5 (layer4) on pooled RoI features, with MoCo's optional extra norm after it."""

    def __init__(self, layer4: nn.Sequential, extra_norm: nn.Module = None):
        super().__init__()
        self.layer4 = layer4
        self.norm = extra_norm if extra_norm is not None else nn.Identity()
        self.out_channels = _out_channels(layer4)

    def forward(self, x):
        return self.norm(self.layer4(x))


class Res5BoxHead(nn.Module):
    """res5 then global average pooling: the box feature vector."""

    def __init__(self, res5: Res5):
        super().__init__()
        self.res5 = res5

    def forward(self, x):
        return self.res5(x).mean(dim=(2, 3))


class Res5MaskHead(nn.Module):
    """The same res5 (shared weights) for the mask branch; the predictor deconvolves its output."""

    def __init__(self, res5: Res5):
        super().__init__()
        self.res5 = res5

    def forward(self, x):
        return self.res5(x)


class ConvFCHead(nn.Module):
    """Detectron2's FastRCNNConvFCHead: NUM_CONV 3x3 convs (+norm) with ReLU, then NUM_FC fc layers."""

    def __init__(self, in_channels: int, resolution: int, conv_dim: int, num_conv: int, fc_dim: int, num_fc: int,
                 norm: str = ""):
        super().__init__()
        make_norm = norm_layer(norm)
        layers: List[nn.Module] = []
        for i in range(num_conv):
            conv = nn.Conv2d(in_channels if i == 0 else conv_dim, conv_dim, 3, padding=1, bias=make_norm is None)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # Caffe2's MSRA fill
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            layers += [conv] + ([make_norm(conv_dim)] if make_norm else []) + [nn.ReLU(inplace=True)]
        layers.append(nn.Flatten())
        width = (conv_dim if num_conv else in_channels) * resolution * resolution
        for i in range(num_fc):
            layers += [nn.Linear(width if i == 0 else fc_dim, fc_dim), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)
        self.out_features = fc_dim if num_fc else width

    def forward(self, x):
        return self.net(x)


def _anchors(cfg: CfgNode, strides: Sequence[int]) -> D2AnchorGenerator:
    num_levels = len(strides)
    sizes, ratios = cfg.MODEL.ANCHOR_GENERATOR.SIZES, cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS
    # Detectron2 broadcasts a single entry to every level.
    sizes = list(sizes) * num_levels if len(sizes) == 1 else list(sizes)
    ratios = list(ratios) * num_levels if len(ratios) == 1 else list(ratios)
    if len(sizes) != num_levels or len(ratios) != num_levels:
        from seed_core.errors import ConfigError

        raise ConfigError(f"MODEL.ANCHOR_GENERATOR.SIZES/ASPECT_RATIOS need 1 or {num_levels} entries "
                          f"(one per feature level), got {len(sizes)} and {len(ratios)}")
    return D2AnchorGenerator([[float(s) for s in x] for x in sizes], [[float(a) for a in x] for x in ratios], strides)


def _pooler(names, strides, head_cfg: CfgNode) -> RoIPooler:
    return RoIPooler(names, strides, head_cfg.POOLER_RESOLUTION, head_cfg.POOLER_SAMPLING_RATIO,
                     aligned=head_cfg.POOLER_TYPE == "ROIAlignV2")


def _d2_rpn(cfg: CfgNode, rpn) -> D2RPN:
    """Rebuild torchvision's RPN as D2RPN with the same parts and settings."""
    r = cfg.MODEL.RPN
    new = D2RPN(rpn.anchor_generator, rpn.head, r.IOU_THRESHOLDS[-1], r.IOU_THRESHOLDS[0], r.BATCH_SIZE_PER_IMAGE,
                r.POSITIVE_FRACTION, dict(rpn._pre_nms_top_n), dict(rpn._post_nms_top_n), r.NMS_THRESH)
    new.smooth_l1_beta = float(r.SMOOTH_L1_BETA)
    # Detectron2 keeps proposals wider and taller than MIN_SIZE; torchvision keeps those at least
    # min_size wide: the next float32 above MIN_SIZE makes the two the same.
    new.min_size = float(np.nextafter(np.float32(cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE), np.float32(np.inf)))
    return new


def _d2_roi_heads(cfg: CfgNode, rh) -> D2RoIHeads:
    """Rebuild torchvision's RoIHeads as D2RoIHeads with the same parts and settings."""
    h = cfg.MODEL.ROI_HEADS
    new = D2RoIHeads(rh.box_roi_pool, rh.box_head, rh.box_predictor, h.IOU_THRESHOLDS[0], h.IOU_THRESHOLDS[0],
                     h.BATCH_SIZE_PER_IMAGE, h.POSITIVE_FRACTION, rh.box_coder.weights, rh.score_thresh,
                     rh.nms_thresh, rh.detections_per_img, rh.mask_roi_pool, rh.mask_head, rh.mask_predictor)
    new.smooth_l1_beta = float(cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA)
    return new


def _common_kwargs(cfg: CfgNode) -> Dict:
    m = cfg.MODEL
    return dict(
        min_size=tuple(cfg.INPUT.MIN_SIZE_TRAIN), max_size=cfg.INPUT.MAX_SIZE_TRAIN,
        # Images arrive as 0..255 in INPUT.FORMAT order, so Detectron2's pixel statistics apply as is.
        image_mean=list(m.PIXEL_MEAN), image_std=list(m.PIXEL_STD),
        rpn_pre_nms_top_n_train=m.RPN.PRE_NMS_TOPK_TRAIN, rpn_pre_nms_top_n_test=m.RPN.PRE_NMS_TOPK_TEST,
        rpn_post_nms_top_n_train=m.RPN.POST_NMS_TOPK_TRAIN, rpn_post_nms_top_n_test=m.RPN.POST_NMS_TOPK_TEST,
        rpn_nms_thresh=m.RPN.NMS_THRESH, rpn_bg_iou_thresh=m.RPN.IOU_THRESHOLDS[0],
        rpn_fg_iou_thresh=m.RPN.IOU_THRESHOLDS[-1], rpn_batch_size_per_image=m.RPN.BATCH_SIZE_PER_IMAGE,
        rpn_positive_fraction=m.RPN.POSITIVE_FRACTION,
        box_score_thresh=m.ROI_HEADS.SCORE_THRESH_TEST, box_nms_thresh=m.ROI_HEADS.NMS_THRESH_TEST,
        box_detections_per_img=cfg.TEST.DETECTIONS_PER_IMAGE,
        box_fg_iou_thresh=m.ROI_HEADS.IOU_THRESHOLDS[0], box_bg_iou_thresh=m.ROI_HEADS.IOU_THRESHOLDS[0],
        box_batch_size_per_image=m.ROI_HEADS.BATCH_SIZE_PER_IMAGE,
        box_positive_fraction=m.ROI_HEADS.POSITIVE_FRACTION,
        bbox_reg_weights=tuple(float(w) for w in m.ROI_BOX_HEAD.BBOX_REG_WEIGHTS),
    )


def _build_fpn(cfg: CfgNode, net: resnet.ResNet):
    m = cfg.MODEL
    c5 = _out_channels(net.layer4)
    in_channels = [c5 // 8, c5 // 4, c5 // 2, c5]
    backbone = BackboneWithFPN(net, {f"layer{i}": str(i - 1) for i in range(1, 5)}, in_channels,
                               m.FPN.OUT_CHANNELS, extra_blocks=LastLevelMaxPool(), norm_layer=norm_layer(m.FPN.NORM))
    return backbone, fpn_heads(cfg)


def fpn_heads(cfg: CfgNode) -> Dict:
    """Anchors, poolers and heads over FPN levels P2..P5 (+ P6 for the RPN), whatever the backbone."""
    m = cfg.MODEL
    names = ["0", "1", "2", "3"]
    bh = m.ROI_BOX_HEAD
    box_head = ConvFCHead(m.FPN.OUT_CHANNELS, bh.POOLER_RESOLUTION, bh.CONV_DIM, bh.NUM_CONV, bh.FC_DIM, bh.NUM_FC,
                          bh.NORM)
    parts = dict(
        rpn_anchor_generator=_anchors(cfg, FPN_STRIDES),
        box_roi_pool=_pooler(names, FPN_STRIDES[:4], bh),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(box_head.out_features, m.ROI_HEADS.NUM_CLASSES + 1),
    )
    if m.MASK_ON:
        mh = m.ROI_MASK_HEAD
        parts.update(
            mask_roi_pool=_pooler(names, FPN_STRIDES[:4], mh),
            mask_head=MaskRCNNHeads(m.FPN.OUT_CHANNELS, [mh.CONV_DIM] * mh.NUM_CONV, 1, norm_layer=norm_layer(mh.NORM)),
            mask_predictor=MaskRCNNPredictor(mh.CONV_DIM if mh.NUM_CONV else m.FPN.OUT_CHANNELS, mh.CONV_DIM,
                                             m.ROI_HEADS.NUM_CLASSES + 1),
        )
    return parts


def _build_c4(cfg: CfgNode, net: resnet.ResNet):
    m = cfg.MODEL
    body = C4Body(net)
    extra = norm_layer(m.RESNETS.NORM)(_out_channels(net.layer4)) if m.ROI_HEADS.RES5_EXTRA_NORM else None
    res5 = Res5(net.layer4, extra)
    parts = dict(
        rpn_anchor_generator=_anchors(cfg, (C4_STRIDE,)),
        box_roi_pool=_pooler(["0"], (C4_STRIDE,), m.ROI_BOX_HEAD),
        box_head=Res5BoxHead(res5),
        box_predictor=FastRCNNPredictor(res5.out_channels, m.ROI_HEADS.NUM_CLASSES + 1),
    )
    if m.MASK_ON:
        mh = m.ROI_MASK_HEAD
        parts.update(
            mask_roi_pool=_pooler(["0"], (C4_STRIDE,), mh),
            mask_head=Res5MaskHead(res5),
            mask_predictor=MaskRCNNPredictor(res5.out_channels, mh.CONV_DIM, m.ROI_HEADS.NUM_CLASSES + 1),
        )
    return body, parts


def build_model(cfg: CfgNode) -> nn.Module:
    """Faster R-CNN, or Mask R-CNN when MODEL.MASK_ON; randomly initialised (see weights.load_weights)."""
    check_supported(cfg)
    fpn = cfg.MODEL.BACKBONE.NAME in (FPN_BACKBONE, TIMM_FPN_BACKBONE)
    if is_timm_backbone(cfg):
        from .timm_fpn import TimmFPNBackbone
        backbone, parts = TimmFPNBackbone(cfg), fpn_heads(cfg)
    else:
        net = build_resnet(cfg, fpn)
        backbone, parts = (_build_fpn if fpn else _build_c4)(cfg, net)
    cls = MaskRCNN if cfg.MODEL.MASK_ON else FasterRCNN
    # torchvision insists on its own pooler type at construction; ours replace them afterwards.
    poolers = {k: parts.pop(k) for k in ("box_roi_pool", "mask_roi_pool") if k in parts}
    model = cls(backbone, num_classes=None, **_common_kwargs(cfg), **parts)
    for name, pooler in poolers.items():
        setattr(model.roi_heads, name, pooler)
    model.rpn = _d2_rpn(cfg, model.rpn)
    model.roi_heads = _d2_roi_heads(cfg, model.roi_heads)
    init_like_detectron2(model)
    logger.info("built %s %s-%s with %d classes (%d trainable parameters)", cls.__name__,
                cfg.MODEL.TIMM.ARCH if is_timm_backbone(cfg) else f"R{cfg.MODEL.RESNETS.DEPTH}",
                "FPN" if fpn else "C4", cfg.MODEL.ROI_HEADS.NUM_CLASSES,
                sum(p.numel() for p in model.parameters() if p.requires_grad))
    return model


def backbone_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """torchvision ResNet prefix (conv1, bn1, layer1..4) -> the module of a model built by
    `build_model` that holds it: FPN keeps the whole ResNet in the backbone body, C4 moves layer4
    (res5) into the box head."""
    if isinstance(model.backbone, BackboneWithFPN):
        return OrderedDict((s, getattr(model.backbone.body, s)) for s in _STAGES)
    if not hasattr(model.backbone, "layer1") and hasattr(model.backbone, "body"):  # timm: its own top modules
        return OrderedDict(model.backbone.body.named_children())
    found = OrderedDict((s, getattr(model.backbone, s)) for s in _STAGES[:-1])
    found["layer4"] = model.roi_heads.box_head.res5.layer4
    return found


def backbone_prefixes(model: nn.Module) -> Dict[str, str]:
    """torchvision ResNet prefix -> where `backbone_modules` finds it in the model's state dict
    ('layer2' -> 'backbone.body.layer2' with FPN, 'layer4' -> 'roi_heads.box_head.res5.layer4' with C4)."""
    where = {id(m): name for name, m in model.named_modules()}
    return {stage: where[id(module)] for stage, module in backbone_modules(model).items()}


def set_input_sizes(model: nn.Module, cfg: CfgNode, train: bool) -> None:
    """torchvision has one max size; switch train/test sizes with the mode, as Detectron2 does."""
    t = model.transform
    if train:
        t.min_size, t.max_size = tuple(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MAX_SIZE_TRAIN
    else:
        t.min_size, t.max_size = (cfg.INPUT.MIN_SIZE_TEST,), cfg.INPUT.MAX_SIZE_TEST
