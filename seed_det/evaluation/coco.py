"""COCO box and mask AP with pycocotools (the pure-Python path: no compiled Detectron2 needed)."""
from __future__ import annotations

import contextlib
import copy
import io
import logging
from typing import Dict, List, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

logger = logging.getLogger(__name__)

_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_from_dict(data: Dict) -> COCO:
    """A COCO api object from a loaded instances dict, filling the fields COCOeval relies on."""
    data = copy.deepcopy(data)
    for ann in data["annotations"]:
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
        coco.createIndex()
    return coco


def coco_metrics(coco_gt: COCO, results: List[Dict], iou_type: str, img_ids: Sequence = ()) -> Dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl in percent (NaN where pycocotools reports -1, as Detectron2 does).

    No detection at all gives 0 AP rather than an error: recall is zero on a non-empty ground truth."""
    if not results:
        logger.warning("COCO %s evaluation: the model produced no detections; AP is 0", iou_type)
        return {k: 0.0 for k in _STAT_NAMES}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if img_ids:
            ev.params.imgIds = list(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    logger.info("COCO %s evaluation:\n%s", iou_type, buf.getvalue())
    return {k: float(v * 100) if v >= 0 else float("nan") for k, v in zip(_STAT_NAMES, ev.stats[:6])}


def encode_mask(mask: np.ndarray) -> Dict:
    """HxW binary mask -> compressed RLE with a str 'counts' (json-serialisable)."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


class COCOEvaluator:
    """Collects model outputs on a COCO-json dataset; evaluate() gives box (and mask) AP.

    Metric names follow the results format: AP, AP50, AP75, APs, APm, APl and, with masks,
    mask_AP, mask_AP50, ..."""

    def __init__(self, dataset, with_masks: bool = False):
        from seed_det.data.coco_json import read_coco_json

        self.dataset, self.with_masks = dataset, with_masks
        self.coco_gt = coco_from_dict(read_coco_json(dataset.spec.json_file))
        self.results: List[Dict] = []
        self.img_ids: List = []

    def process(self, record: Dict, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                masks: np.ndarray = None) -> None:
        """boxes XYXY in original pixels, labels contiguous class indices, masks NxHxW probabilities."""
        self.img_ids.append(record["image_id"])
        for k, (box, score, label) in enumerate(zip(boxes.tolist(), scores.tolist(), labels.tolist())):
            res = {"image_id": record["image_id"], "category_id": self.dataset.contiguous_to_json_id[int(label)],
                   "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": float(score)}
            if self.with_masks and masks is not None:
                res["segmentation"] = encode_mask(masks[k] >= 0.5)
            self.results.append(res)

    def partial(self) -> Tuple[List[Dict], List]:
        """What process() collected, to be merged with other processes' shards (see merge)."""
        return self.results, self.img_ids

    def merge(self, parts: Sequence[Tuple[List[Dict], List]]) -> None:
        """Replace the collected results by the shards of every process, in dataset order."""
        self.results = [r for results, _ in parts for r in results]
        self.img_ids = [i for _, img_ids in parts for i in img_ids]

    def evaluate(self) -> Dict[str, float]:
        metrics = coco_metrics(self.coco_gt, [{k: v for k, v in r.items() if k != "segmentation"} for r in self.results],
                               "bbox", self.img_ids)
        if self.with_masks:
            segm = coco_metrics(self.coco_gt, self.results, "segm", self.img_ids)
            metrics.update({"mask_" + k: v for k, v in segm.items()})
        return metrics
