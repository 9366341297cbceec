"""ONNX export of torchvision-engine detectors (C4 Faster R-CNN, FPN Mask R-CNN): onnxruntime finds
the same detections as torch (count, classes, order; boxes, scores and masks within tolerance) on
images of other sizes than the traced one; a file without detection heads is refused."""
import os

import numpy as np
import pytest
import torch

from conftest import ROOT, onnx_runtime_session
from seed_core.errors import SeedError
from seed_det.config import load_det_config
from seed_det.engines.tv.checkpoint import save_checkpoint
from seed_det.engines.tv.model import build_model, set_input_sizes
from seed_det.onnx_export import compare_detections, export_detector_onnx
from test_tv_engine import make_cfg

# Detections whose number depends on the image (a score threshold on spread scores) and, with FPN,
# proposals too (NMS on 300 anchors; C4's res5 head on that many would be slow), so that a count
# frozen by the trace would show.
OPTS = ["MODEL.RPN.PRE_NMS_TOPK_TEST", "300", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.5"]
PROPOSALS = {"c4": "24", "fpn": "300"}


def opts(arch, mask):
    return OPTS + ["MODEL.RPN.POST_NMS_TOPK_TEST", PROPOSALS[arch], "MODEL.MASK_ON", str(mask)]


def trained_detector(tmp_path, shapes_det, arch, mask):
    """A checkpoint of the engine (random weights, BN statistics not the defaults) and its config."""
    cfg, config_file = make_cfg(tmp_path, shapes_det, arch, "coco" if mask else "voc", opts(arch, mask))
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.8, 1.2)
        torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.5)  # scores far from uniform
    path = save_checkpoint(str(tmp_path / "run"), "model_final.pth", model.eval(), iteration=2)
    set_input_sizes(model, cfg, train=False)
    return model, config_file, path


@pytest.mark.parametrize("arch,mask", [("c4", False), ("fpn", True)])
def test_detector_matches_torch_on_images_of_other_sizes(tmp_path, shapes_det, arch, mask):
    model, config_file, weights = trained_detector(tmp_path, shapes_det, arch, mask)
    out = tmp_path / "detector.onnx"
    summary = export_detector_onnx(weights, config_file, str(out), opts(arch, mask))
    names = ["boxes", "labels", "scores"] + (["masks"] if mask else [])
    assert summary["outputs"] == names and out.is_file()
    sess = onnx_runtime_session(out)
    generator = torch.Generator().manual_seed(7)
    counts = set()
    for height, width in ((100, 72), (48, 90)):  # traced on 64 x 85, checked on 93 x 64 and 36 x 36
        image = torch.rand(3, height, width, generator=generator) * 255
        with torch.no_grad():
            expected = model([image])[0]
        got = dict(zip(names, sess.run(names, {"image": image.numpy()})))
        assert got["boxes"].shape == tuple(expected["boxes"].shape) and len(got["boxes"]) > 0
        np.testing.assert_array_equal(got["labels"], expected["labels"].numpy())
        np.testing.assert_allclose(got["boxes"], expected["boxes"].numpy(), rtol=0, atol=0.01)
        np.testing.assert_allclose(got["scores"], expected["scores"].numpy(), rtol=0, atol=1e-4)
        assert got["boxes"][:, 2].max() <= width and got["boxes"][:, 3].max() <= height  # input pixels
        if mask:
            assert got["masks"].shape[2:] == (height, width)
            np.testing.assert_allclose(got["masks"], expected["masks"].numpy(), rtol=0, atol=1e-3)
        counts.add(len(got["boxes"]))
    assert len(counts) > 1  # the number of detections varied, and the graph followed it


def test_timm_fpn_detector_matches_torch(tmp_path):
    """A timm student's detector (the demo's MobileNetV3-Small FPN), through the export's own check."""
    config = os.path.join(ROOT, "configs", "demo", "digits_mnv3s_fpn.yaml")
    opts = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]  # random heads: keep every candidate
    torch.manual_seed(0)
    model = build_model(load_det_config(config, opts, needs_test_set=False))
    weights = save_checkpoint(str(tmp_path / "run"), "model_final.pth", model.eval())
    summary = export_detector_onnx(weights, config, str(tmp_path / "d.onnx"), opts)
    assert (tmp_path / "d.onnx").is_file() and min(summary["checked_detections"]) > 0


def test_backbone_weights_are_not_a_detector(tmp_path, shapes_det):
    cfg, config_file = make_cfg(tmp_path, shapes_det, "c4")
    backbone = tmp_path / "r18.pth"
    torch.save(build_model(cfg).backbone.state_dict(), backbone)  # conv1, layer1..3: a ResNet without heads
    with pytest.raises(SeedError, match="backbone only"):
        export_detector_onnx(str(backbone), config_file, str(tmp_path / "d.onnx"))
    assert not (tmp_path / "d.onnx").exists()


def test_the_export_check_tells_different_detections_apart():
    torch.manual_seed(0)
    expected = {"boxes": torch.rand(3, 4) * 50, "labels": torch.tensor([1, 2, 1]), "scores": torch.rand(3)}
    same = [expected[n].numpy().copy() for n in ("boxes", "labels", "scores")]
    names = ["boxes", "labels", "scores"]
    assert compare_detections(expected, same, names) == ""
    assert "2 detections" in compare_detections(expected, [a[:2] for a in same], names)
    assert "classes" in compare_detections(expected, [same[0], np.array([1, 1, 2]), same[2]], names)
    moved = same[0].copy()
    moved[1, 2] += 0.05  # px, above the 0.01 tolerance
    assert "boxes differ" in compare_detections(expected, [moved, same[1], same[2]], names)
    assert "scores differ" in compare_detections(expected, [same[0], same[1], same[2] + 1e-3], names)
