"""Small pieces that make torchvision's R-CNN behave like Detectron2's where torchvision has no knob.

- RoIPooler: RoIAlign with `aligned` chosen by POOLER_TYPE (ROIAlignV2 = half-pixel aligned) and
  Detectron2's FPN level assignment; torchvision's MultiScaleRoIAlign is always unaligned.
- D2AnchorGenerator: Detectron2's anchors: exact (unrounded) corners and each level's nominal
  stride (P6 is stride 64), where torchvision rounds corners to whole pixels and derives strides
  from the padded image size (a 160-pixel image gives P6 a stride of 53).
- D2RPN: the RPN box loss with MODEL.RPN.SMOOTH_L1_BETA and Detectron2's normaliser
  (anchors sampled per image x images) instead of a fixed beta of 1/9.
- D2RoIHeads: the box-head loss with MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA (Detectron2's default 0 is
  L1) instead of a fixed beta of 1/9, and Detectron2's inference filter, which keeps boxes that
  clipping made thinner than 0.01 px (torchvision drops them).
- init_like_detectron2: the predictor initialisations Detectron2 uses.
- SyncBatchNorm2d: SyncBN / naiveSyncBN on any backend (torch's SyncBatchNorm needs a GPU, so
  it cannot run under gloo on CPU).
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import boxes as box_ops, roi_align


class RoIPooler(nn.Module):
    """RoIAlign over one (C4) or several (FPN) feature maps of known strides."""

    def __init__(self, names: Sequence[str], strides: Sequence[int], output_size: int, sampling_ratio: int,
                 aligned: bool, canonical_size: int = 224, canonical_level: int = 4):
        super().__init__()
        self.names, self.scales = list(names), [1.0 / s for s in strides]
        self.output_size, self.sampling_ratio, self.aligned = output_size, sampling_ratio, aligned
        self.canonical_size, self.canonical_level = canonical_size, canonical_level
        self.min_level = int(round(math.log2(strides[0])))

    def _levels(self, boxes: Tensor) -> Tensor:
        # Detectron2's assign_boxes_to_levels: a 224-pixel box goes to level 4 (stride 16).
        size = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        level = torch.floor(self.canonical_level + torch.log2(size / self.canonical_size + 1e-8))
        return (level.clamp(self.min_level, self.min_level + len(self.names) - 1) - self.min_level).long()

    def forward(self, features: Dict[str, Tensor], boxes: List[Tensor], image_shapes=None) -> Tensor:
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        feats = [features[n] for n in self.names]
        if len(feats) == 1:
            return roi_align(feats[0], rois, self.output_size, self.scales[0], self.sampling_ratio, self.aligned)
        levels = self._levels(rois[:, 1:])
        # Sizes from .shape and no skipped level while traced (ONNX export): the graph must hold
        # for any number of boxes per level, not the numbers of the example input.
        tracing = torch.jit.is_tracing()
        out = rois.new_zeros((rois.shape[0], feats[0].shape[1], self.output_size, self.output_size))
        for lvl, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == lvl)[0]
            if tracing or len(idx):
                out[idx] = roi_align(feat, rois[idx], self.output_size, scale, self.sampling_ratio, self.aligned)
        return out


class D2AnchorGenerator(AnchorGenerator):
    """Anchors centred on (0, 0) of each cell (OFFSET 0.0), size outer and aspect ratio inner, as
    Detectron2's DefaultAnchorGenerator lays them out, on fixed per-level strides."""

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                 strides: Sequence[int]):
        if len(strides) != len(sizes):
            raise ValueError(f"one stride per level: {len(sizes)} levels, {len(strides)} strides")
        super().__init__(tuple(tuple(s) for s in sizes), tuple(tuple(a) for a in aspect_ratios))
        self.strides = [int(s) for s in strides]

    def generate_anchors(self, scales, aspect_ratios, dtype: torch.dtype = torch.float32,
                         device: torch.device = torch.device("cpu")) -> Tensor:
        # An anchor of size s and ratio r = h / w has area s^2: w = s / sqrt(r), h = s * sqrt(r).
        cells = [(-w / 2, -h / 2, w / 2, h / 2) for s in scales for r in aspect_ratios
                 for w, h in [(s / math.sqrt(r), s * math.sqrt(r))]]
        return torch.tensor(cells, dtype=dtype, device=device)

    def forward(self, image_list: ImageList, feature_maps: List[Tensor]) -> List[Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"anchors for {len(self.strides)} feature levels, got {len(feature_maps)} maps")
        device = feature_maps[0].device
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        strides = [[torch.tensor(s, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(feature_maps[0].dtype, device)
        per_image = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [per_image for _ in image_list.image_sizes]


def box_regression_loss(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Summed smooth L1 with Detectron2's convention: beta 0 is plain L1."""
    if beta == 0.0:
        return F.l1_loss(pred, target, reduction="sum")
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")


class D2RPN(RegionProposalNetwork):
    """torchvision's RPN with Detectron2's box-loss beta and normaliser."""

    smooth_l1_beta: float = 0.0

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos))[0]
        neg = torch.where(torch.cat(neg))[0]
        sampled = torch.cat([pos, neg])
        labels, targets = torch.cat(labels), torch.cat(regression_targets)
        # Detectron2 divides both losses by the nominal number of sampled anchors.
        normaliser = self.fg_bg_sampler.batch_size_per_image * len(regression_targets)
        box = box_regression_loss(pred_bbox_deltas[pos], targets[pos], self.smooth_l1_beta)
        obj = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled], reduction="sum")
        return obj / normaliser, box / normaliser


class D2RoIHeads(RoIHeads):
    """torchvision's RoIHeads whose training losses are Detectron2's: class cross-entropy and the
    box loss of each foreground proposal's own class, both averaged over the sampled proposals,
    the box loss with `smooth_l1_beta`; the mask loss is torchvision's. Detections are filtered as
    Detectron2 filters them."""

    smooth_l1_beta: float = 0.0

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        class_logits, box_regression = self.box_predictor(
            self.box_head(self.box_roi_pool(features, proposals, image_shapes)))
        losses = self._box_losses(class_logits, box_regression, torch.cat(labels), torch.cat(regression_targets))
        if self.has_mask():
            foreground = [torch.where(lab > 0)[0] for lab in labels]
            fg_boxes = [p[i] for p, i in zip(proposals, foreground)]
            mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, fg_boxes, image_shapes)))
            losses["loss_mask"] = maskrcnn_loss(mask_logits, fg_boxes, [t["masks"] for t in targets],
                                                [t["labels"] for t in targets],
                                                [m[i] for m, i in zip(matched_idxs, foreground)])
        return [], losses

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        """Detectron2's fast_rcnn_inference: proposals with finite boxes and scores, one candidate
        per foreground class above SCORE_THRESH_TEST, clipped to the image, class-wise NMS, the
        best DETECTIONS_PER_IMAGE. Labels are 1..K (0 is background)."""
        counts = [p.shape[0] for p in proposals]  # .shape, not len(): traced as a size, not a constant
        per_image = zip(self.box_coder.decode(box_regression, proposals).split(counts),
                        F.softmax(class_logits, -1).split(counts), image_shapes)
        found = ([], [], [])
        for boxes, scores, shape in per_image:
            finite = torch.isfinite(boxes).flatten(1).all(dim=1) & torch.isfinite(scores).all(dim=1)
            boxes, scores = boxes[finite], scores[finite]
            num_classes = scores.shape[1] - 1
            boxes = box_ops.clip_boxes_to_image(boxes[:, 1:].reshape(-1, 4), shape)  # background dropped
            # expand_as, not repeat(len(scores)): an ONNX trace keeps the count of boxes variable
            labels = torch.arange(1, num_classes + 1, device=scores.device).expand_as(scores[:, 1:]).reshape(-1)
            scores = scores[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            for kept, values in zip(found, (boxes, scores, labels)):
                kept.append(values[keep])
        return found

    def _box_losses(self, class_logits: Tensor, box_regression: Tensor, labels: Tensor, targets: Tensor) -> Dict:
        fg = torch.where(labels > 0)[0]
        deltas = box_regression.reshape(len(box_regression), -1, 4)[fg, labels[fg]]
        box = box_regression_loss(deltas, targets[fg], self.smooth_l1_beta) / max(labels.numel(), 1)
        return {"loss_classifier": F.cross_entropy(class_logits, labels), "loss_box_reg": box}


def init_like_detectron2(model: nn.Module) -> None:
    """Class scores ~ N(0, 0.01), box deltas ~ N(0, 0.001), mask logits ~ N(0, 0.001), fc layers
    with Caffe2's Xavier fill: what a Detectron2 model starts from."""
    rh = model.roi_heads
    for layer, std in ((rh.box_predictor.cls_score, 0.01), (rh.box_predictor.bbox_pred, 0.001)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)
    for m in rh.box_head.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.zeros_(m.bias)
    predictor = getattr(rh, "mask_predictor", None)
    if predictor is not None:
        nn.init.normal_(predictor.mask_fcn_logits.weight, std=0.001)
        nn.init.zeros_(predictor.mask_fcn_logits.bias)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the whole global batch (every process's
    images, weighted by pixel count: torch's SyncBatchNorm semantics). Alone, or in eval mode, it
    is plain BatchNorm2d, with the same state-dict keys, so checkpoints move between world sizes.

    Per-channel sum, sum of squares and count are all-reduced in one differentiable collective
    (gradients flow back to every process's inputs), in fp32 also under autocast."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        xf = x.float()
        count = xf.new_full((1,), float(xf.numel() // channels))
        stats = torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)), count])
        stats = differentiable_all_reduce(stats)  # every process calls it, even with an empty batch
        total = stats[-1].clamp(min=1.0)
        mean = stats[:channels] / total
        var = (stats[channels:2 * channels] / total - mean * mean).clamp(min=0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (total / (total - 1).clamp(min=1.0))
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale, shift = scale * self.weight, shift * self.weight + self.bias
        return (xf * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).to(x.dtype)
