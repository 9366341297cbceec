"""ONNX export of a detector of the torchvision engine (Faster / Mask R-CNN built from our
configs), checked against onnxruntime before the file is written. The generic steps are
seed_core.onnx_export's.

The graph takes one image, `image` (3, H, W), float 0..255 in the config's INPUT.FORMAT channel
order, and does what the engine does at test time: resize to INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST,
normalise, detect, map boxes (and masks) back to the input's size. Height and width are dynamic;
one image per call (torchvision's R-CNN handles the images of a batch one by one in Python, which a
trace freezes). Outputs: `boxes` (N, 4) x1 y1 x2 y2 in input pixels, `labels` (N,) 1..NUM_CLASSES
(label k is the dataset's class k - 1), `scores` (N,), and with MODEL.MASK_ON `masks` (N, 1, H, W)
probabilities.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Sequence

import numpy as np
import torch

from seed_core.errors import ExportError
from seed_core.onnx_export import (ONNX_OPSET, check_onnx_path, onnx_session, require_onnx, run_session,
                                   trace_to_onnx, with_metadata, write_onnx)
from seed_det.config import load_det_config
from seed_det.engines.tv.model import build_model, set_input_sizes
from seed_det.engines.tv.weights import load_weights

logger = logging.getLogger(__name__)

DETECTOR_INPUT = "image"
BOX_TOLERANCE = 0.01  # pixels
SCORE_TOLERANCE = 1e-4
MASK_TOLERANCE = 1e-3


def detector_outputs(mask_on: bool) -> List[str]:
    return ["boxes", "labels", "scores"] + (["masks"] if mask_on else [])


def traced_and_checked_images(cfg) -> List[tuple]:
    """(traced image shape, then shapes to check on): the test size in landscape, then portrait and
    a smaller square, so that every output size differs from the traced one."""
    side = int(cfg.INPUT.MIN_SIZE_TEST)
    return [(3, side, side * 4 // 3), (3, side * 4 // 3 + 8, side), (3, side // 2 + 4, side // 2 + 4)]


def compare_detections(expected: Dict[str, torch.Tensor], got: Sequence[np.ndarray], names: Sequence[str]) -> str:
    """'' when onnxruntime found the same detections as torch (same count, classes and order; boxes,
    scores and masks within tolerance), else what differs."""
    found = dict(zip(names, got))
    if found["boxes"].shape[0] != expected["boxes"].shape[0]:
        return f"{found['boxes'].shape[0]} detections instead of torch's {expected['boxes'].shape[0]}"
    if not np.array_equal(found["labels"], expected["labels"].numpy()):
        return "the classes differ"
    for name, tolerance in (("boxes", BOX_TOLERANCE), ("scores", SCORE_TOLERANCE), ("masks", MASK_TOLERANCE)):
        if name in found:
            if found[name].shape != tuple(expected[name].shape):
                return f"{name} of shape {found[name].shape} instead of {tuple(expected[name].shape)}"
            worst = float(np.abs(found[name] - expected[name].numpy()).max(initial=0.0))
            if worst > tolerance:
                return f"{name} differ by up to {worst:.2e} (> {tolerance:g})"
    return ""


def build_detector(config_file: str, weights: str, opts: Sequence[str] = ()) -> tuple:
    """(model in test mode, config): the engine's model for the config, filled from `weights`."""
    cfg = load_det_config(config_file, opts, needs_test_set=False)  # no data is read
    model = build_model(cfg)
    load_weights(model, weights, detector=True)  # the whole model must come from the file
    model.eval()
    set_input_sizes(model, cfg, train=False)
    return model, cfg


def export_detector_onnx(weights: str, config_file: str, out_path: str, opts: Sequence[str] = (),
                         overwrite: bool = False) -> Dict[str, object]:
    """Export the detector `config_file` builds, with `weights` (a checkpoint of the torchvision
    engine, or a Detectron2 detector that fills the whole model), to `out_path`. Returns a summary."""
    out_path = os.fspath(out_path)
    check_onnx_path(out_path, overwrite)
    if not os.path.isfile(weights):  # before the config is read and the model built
        raise ExportError(f"WEIGHTS {weights} does not exist: it must be the detector checkpoint to export "
                          "(model_final.pth of a torchvision-engine detection run, or a Detectron2 detector), "
                          "trained with the --config given")
    require_onnx()
    model, cfg = build_detector(config_file, weights, opts)
    names = detector_outputs(cfg.MODEL.MASK_ON)
    traced, *checked = traced_and_checked_images(cfg)
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(*traced, generator=generator) * 255
    dynamic = {DETECTOR_INPUT: {1: "height", 2: "width"}, **{n: {0: "detections"} for n in names}}
    if cfg.MODEL.MASK_ON:
        dynamic["masks"] = {0: "detections", 2: "height", 3: "width"}
    model_bytes = trace_to_onnx(model, ([example],), [DETECTOR_INPUT], names, dynamic)
    model_bytes = with_metadata(model_bytes, {
        "seed.kind": "detector", "seed.config": cfg.dump(), "seed.input_format": cfg.INPUT.FORMAT,
        "seed.num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES, "seed.labels": "1..NUM_CLASSES; label k is class k - 1"})
    session = onnx_session(model_bytes)
    counts = []
    for shape in checked:
        image = torch.rand(*shape, generator=generator) * 255
        with torch.no_grad():
            expected = model([image])[0]
        problem = compare_detections(expected, run_session(session, names, {DETECTOR_INPUT: image.numpy()}), names)
        if problem:
            raise ExportError(f"onnxruntime's detections on a {shape[1]}x{shape[2]} image differ from torch's: "
                              f"{problem}; the file was not written")
        counts.append(int(expected["boxes"].shape[0]))
    if not any(counts):
        logger.warning("the detector found nothing in the check images (random pixels), so only empty outputs "
                       "were compared; run %s on one of your images against torch to compare detections", out_path)
    write_onnx(model_bytes, out_path, overwrite)
    logger.info("exported the detector of %s with %s to %s; onnxruntime matches torch on images %s (%s detections)",
                config_file, weights, out_path, [s[1:] for s in checked], counts)
    return {"kind": "detector", "input": weights, "config": config_file, "output": out_path, "opset": ONNX_OPSET,
            "outputs": names, "checked_images": [list(s[1:]) for s in checked], "checked_detections": counts,
            "dynamic": ["height", "width"], "batch": 1}


