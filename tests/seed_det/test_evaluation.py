"""VOC AP (Detectron2 conventions) and COCO AP (pycocotools) on cases with known answers."""
import json
import os

import numpy as np
import pytest

from seed_det.data import DatasetSpec
from seed_det.data.synthetic.shapes import write_shapes_dataset
from seed_det.data.coco_json import load_coco_json
from seed_det.data.voc import load_voc
from seed_det.data.torch_dataset import segmentation_to_mask
from seed_det.evaluation import COCOEvaluator, VOCEvaluator, coco_from_dict, coco_metrics, voc_ap, voc_detection_metrics


def test_voc_ap_11_point_and_area():
    rec, prec = np.array([0.5, 1.0]), np.array([1.0, 0.5])
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(8.5 / 11)
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.75)


GT_BOX = [1, 1, 10, 10]  # VOC 1-based inclusive: 10x10 pixels


def test_voc_metrics_ranked_detections():
    gt = {"a": [(0, GT_BOX, False)], "b": [(0, GT_BOX, False)]}
    dets = [("a", 0, 0.9, GT_BOX), ("b", 0, 0.8, [30, 30, 40, 40]), ("b", 0, 0.7, GT_BOX)]
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: area 0.5*1 + 0.5*2/3; 11-point (6*1 + 5*2/3)/11.
    area = voc_detection_metrics(gt, dets, 1, use_07_metric=False)
    assert area == pytest.approx({"AP": 250 / 3, "AP50": 250 / 3, "AP75": 250 / 3})
    m07 = voc_detection_metrics(gt, dets, 1, use_07_metric=True)
    assert m07["AP50"] == pytest.approx(100 * (6 + 5 * 2 / 3) / 11)


def test_voc_iou_uses_plus_one_pixels_and_strict_threshold():
    # Det rows 1..6 of a 10-row box: IoU = 60/100 with VOC's +1 widths -> a hit at 0.50 and 0.55 only.
    metrics = voc_detection_metrics({"a": [(0, GT_BOX, False)]}, [("a", 0, 1.0, [1, 1, 10, 6])], 1, False)
    assert metrics == pytest.approx({"AP": 20.0, "AP50": 100.0, "AP75": 0.0})
    # A 4x4-pixel object and a 4x3 detection: IoU 12/16 = 0.75 with +1 widths (0.67 without) -> 5 hits.
    small = voc_detection_metrics({"a": [(0, [1, 1, 4, 4], False)]}, [("a", 0, 1.0, [1, 1, 4, 3])], 1, False)
    assert small["AP"] == pytest.approx(50.0) and small["AP75"] == 0.0
    # Exactly 0.5 IoU is not a hit (Detectron2 uses ovmax > threshold).
    assert voc_detection_metrics({"a": [(0, GT_BOX, False)]}, [("a", 0, 1.0, [1, 1, 10, 5])], 1, False)["AP50"] == 0


def test_voc_duplicates_difficult_and_empty_classes():
    gt = {"a": [(0, GT_BOX, False), (0, [20, 20, 30, 30], True)]}
    # The duplicate is a false positive; the difficult match counts neither way.
    dets = [("a", 0, 0.9, GT_BOX), ("a", 0, 0.8, [20, 20, 30, 30]), ("a", 0, 0.7, GT_BOX)]
    m = voc_detection_metrics(gt, dets, 2, use_07_metric=False, class_names=["x", "never_seen"])
    assert m["AP50"] == pytest.approx(100.0)  # recall 1 at precision 1 before the duplicate
    assert voc_detection_metrics(gt, [], 1, False)["AP50"] == 0.0


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shapes_eval"))
    write_shapes_dataset(out, num_train=1, num_val=4, size=64, seed=1)
    return out


def test_voc_evaluator_perfect_on_ground_truth(shapes):
    ds = load_voc(DatasetSpec("v", "voc", dirname=shapes, split="val", year=2007))
    ev = VOCEvaluator(ds)
    assert ev.use_07_metric
    for r in ds.records:  # records are 0-based; the evaluator must shift back to VOC's 1-based boxes
        boxes = np.array([a["bbox"] for a in r["annotations"]])
        ev.process(r, boxes, np.ones(len(boxes)), np.array([a["category_id"] for a in r["annotations"]]))
    assert ev.evaluate() == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0})


def test_coco_metrics_known_iou():
    gt = coco_from_dict({"images": [{"id": 1, "width": 50, "height": 50}],
                         "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 10]}],
                         "categories": [{"id": 7, "name": "x"}]})
    # IoU 0.62: a match at 0.50, 0.55 and 0.60 of the ten thresholds.
    res = [{"image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 6.2], "score": 0.9}]
    m = coco_metrics(gt, res, "bbox")
    assert m["AP"] == pytest.approx(30.0) and m["AP50"] == pytest.approx(100.0) and m["AP75"] == 0.0
    assert coco_metrics(gt, [], "bbox")["AP"] == 0.0


def test_coco_evaluator_boxes_and_masks_on_ground_truth(shapes):
    json_file = os.path.join(shapes, "annotations", "instances_val.json")
    ds = load_coco_json(DatasetSpec("c", "coco", image_root=os.path.join(shapes, "JPEGImages"), json_file=json_file))
    ev = COCOEvaluator(ds, with_masks=True)
    for i, r in enumerate(ds.records):
        annos = r["annotations"]
        boxes = np.array([a["bbox"] for a in annos])
        masks = np.stack([segmentation_to_mask(a["segmentation"], r["height"], r["width"]) for a in annos]).astype(float)
        labels = np.array([a["category_id"] for a in annos])
        if i == 0:  # swap the classes of the first image: its objects become misses and false positives
            labels = (labels + 1) % 3
        ev.process(r, boxes, np.linspace(0.9, 0.5, len(boxes)), labels, masks)
    m = ev.evaluate()
    assert set(m) >= {"AP", "AP50", "AP75", "mask_AP", "mask_AP50", "mask_AP75"}
    assert 0 < m["AP"] < 100 and m["AP"] == pytest.approx(m["mask_AP"])
    ev2 = COCOEvaluator(ds, with_masks=True)
    for r in ds.records:
        annos = r["annotations"]
        masks = np.stack([segmentation_to_mask(a["segmentation"], r["height"], r["width"]) for a in annos])
        ev2.process(r, np.array([a["bbox"] for a in annos]), np.ones(len(annos)),
                    np.array([a["category_id"] for a in annos]), masks.astype(float))
    m2 = ev2.evaluate()
    assert m2["AP"] == pytest.approx(100.0) and m2["mask_AP"] == pytest.approx(100.0)
    with open(json_file) as f:
        assert ds.contiguous_to_json_id == {i: c["id"] for i, c in enumerate(json.load(f)["categories"])}
