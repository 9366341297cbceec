"""PASCAL VOC box AP computed the way Detectron2's PascalVOCDetectionEvaluator does it.

Conventions kept on purpose so numbers compare with Detectron2 runs: ground truth is the raw
1-based VOC box, predictions get +1 on xmin/ymin, IoU uses the "+1 pixel" width, difficult
objects neither count nor penalise, the 2007 test set uses the 11-point metric and other years the
area under the precision envelope. AP averages IoU 0.50:0.95 (step 0.05); AP50 and AP75 are
single thresholds; all in percent.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

# image id -> list of (class index, [xmin, ymin, xmax, ymax] 1-based inclusive, difficult)
GroundTruth = Dict[object, List[Tuple[int, Sequence[float], bool]]]
# (image id, class index, score, box in the same 1-based convention)
Detection = Tuple[object, int, float, Sequence[float]]


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool) -> float:
    """AP from a recall/precision curve: 11-point (VOC2007) or area under the envelope."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = prec[rec >= t].max() if np.any(rec >= t) else 0.0
            ap += p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope: best precision to the right
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _iou_plus_one(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    iw = np.maximum(np.minimum(gts[:, 2], box[2]) - np.maximum(gts[:, 0], box[0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gts[:, 3], box[3]) - np.maximum(gts[:, 1], box[1]) + 1.0, 0.0)
    inter = iw * ih
    union = ((box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
             + (gts[:, 2] - gts[:, 0] + 1.0) * (gts[:, 3] - gts[:, 1] + 1.0) - inter)
    return inter / union


def class_ap(gt: GroundTruth, dets: Sequence[Detection], cls: int, iou_thresh: float,
             use_07_metric: bool) -> float:
    """AP of one class at one IoU threshold; NaN when the class has no non-difficult object."""
    recs = {}
    npos = 0
    for image_id, objs in gt.items():
        boxes = np.array([o[1] for o in objs if o[0] == cls], dtype=np.float64).reshape(-1, 4)
        difficult = np.array([o[2] for o in objs if o[0] == cls], dtype=bool)
        recs[image_id] = (boxes, difficult, np.zeros(len(boxes), dtype=bool))
        npos += int((~difficult).sum())
    if npos == 0:
        return float("nan")
    mine = sorted((d for d in dets if d[1] == cls), key=lambda d: -d[2])
    tp = np.zeros(len(mine))
    fp = np.zeros(len(mine))
    for k, (image_id, _, _, box) in enumerate(mine):
        boxes, difficult, taken = recs.get(image_id, (np.zeros((0, 4)), np.zeros(0, bool), np.zeros(0, bool)))
        if len(boxes):
            ious = _iou_plus_one(np.asarray(box, dtype=np.float64), boxes)
            j = int(ious.argmax())
            if ious[j] > iou_thresh:
                if not difficult[j]:
                    if taken[j]:
                        fp[k] = 1  # duplicate detection of an already matched object
                    else:
                        tp[k], taken[j] = 1, True
                continue
        fp[k] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec, use_07_metric)


def voc_detection_metrics(gt: GroundTruth, dets: Sequence[Detection], num_classes: int,
                          use_07_metric: bool, class_names: Sequence[str] = ()) -> Dict[str, float]:
    """{"AP", "AP50", "AP75"} in percent over classes that have ground truth."""
    per_thresh = {}
    skipped = set()
    for t in range(50, 100, 5):
        aps = []
        for c in range(num_classes):
            ap = class_ap(gt, dets, c, t / 100.0, use_07_metric)
            if np.isnan(ap):
                skipped.add(c)
            else:
                aps.append(ap * 100.0)
        per_thresh[t] = float(np.mean(aps)) if aps else float("nan")
    if skipped:
        names = [class_names[c] if c < len(class_names) else str(c) for c in sorted(skipped)]
        logger.warning("VOC AP: classes without ground truth are left out of the mean: %s", names)
    return {"AP": float(np.mean(list(per_thresh.values()))), "AP50": per_thresh[50], "AP75": per_thresh[75]}


class VOCEvaluator:
    """Collects model outputs on a VOC-layout dataset and computes Detectron2-style VOC AP."""

    def __init__(self, dataset):
        from seed_det.data.voc import read_voc_boxes  # raw 1-based boxes, not the training records

        self.dataset = dataset
        self.use_07_metric = dataset.spec.year == 2007
        index = {n: i for i, n in enumerate(dataset.class_names)}
        self.gt: GroundTruth = {}
        for r in dataset.records:
            self.gt[r["image_id"]] = [(index[n], b, d) for n, b, d in read_voc_boxes(dataset.spec, r["image_id"])]
        self.dets: List[Detection] = []

    def process(self, record: Dict, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, masks=None) -> None:
        """boxes: 0-based continuous XYXY in original image pixels; labels: contiguous class indices."""
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            self.dets.append((record["image_id"], int(label), float(score), [box[0] + 1.0, box[1] + 1.0, box[2], box[3]]))

    def partial(self) -> List[Detection]:
        """What process() collected, to be merged with other processes' shards (see merge)."""
        return self.dets

    def merge(self, parts: Sequence[List[Detection]]) -> None:
        """Replace the collected detections by the shards of every process, in dataset order."""
        self.dets = [d for part in parts for d in part]

    def evaluate(self) -> Dict[str, float]:
        return voc_detection_metrics(self.gt, self.dets, len(self.dataset.class_names), self.use_07_metric,
                                     self.dataset.class_names)
