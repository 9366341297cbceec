"""Detection evaluation without Detectron2: VOC AP (Detectron2's conventions) and COCO AP (pycocotools)."""
from .coco import COCOEvaluator, coco_from_dict, coco_metrics
from .voc import VOCEvaluator, class_ap, voc_ap, voc_detection_metrics


def build_evaluator(dataset, with_masks: bool = False):
    """VOC AP for VOC-layout datasets, COCO AP for COCO json ones (mask AP only on COCO json)."""
    if dataset.spec.kind == "voc":
        return VOCEvaluator(dataset)
    return COCOEvaluator(dataset, with_masks=with_masks)


__all__ = ["COCOEvaluator", "VOCEvaluator", "build_evaluator", "class_ap", "coco_from_dict", "coco_metrics",
           "voc_ap", "voc_detection_metrics"]
