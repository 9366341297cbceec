"""Small pieces that make torchvision's R-CNN behave like Detectron2's where torchvision has no knob.

- RoIPooler: RoIAlign with `aligned` chosen by POOLER_TYPE (ROIAlignV2 = half-pixel aligned) and
  Detectron2's FPN level assignment; torchvision's MultiScaleRoIAlign is always unaligned.
- D2RPN: the RPN box loss with MODEL.RPN.SMOOTH_L1_BETA and Detectron2's normaliser
  (anchors sampled per image x images) instead of a fixed beta of 1/9.
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
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import roi_align


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
        out = rois.new_zeros((len(rois), feats[0].shape[1], self.output_size, self.output_size))
        for lvl, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == lvl)[0]
            if len(idx):
                out[idx] = roi_align(feat, rois[idx], self.output_size, scale, self.sampling_ratio, self.aligned)
        return out


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
        if self.smooth_l1_beta == 0.0:
            box = F.l1_loss(pred_bbox_deltas[pos], targets[pos], reduction="sum")
        else:
            box = F.smooth_l1_loss(pred_bbox_deltas[pos], targets[pos], beta=self.smooth_l1_beta, reduction="sum")
        obj = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled], reduction="sum")
        return obj / normaliser, box / normaliser


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
