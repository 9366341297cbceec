"""timm backbones in the Detectron2 engine: the registered build function, complete loading of a
converted student, refusal of another architecture, two iterations of every timm config, and the
same detections from a Detectron2 timm detector in the torchvision engine.

Needs Detectron2 (not on PyPI): every test here is skipped without it.
"""
import json
import os

import numpy as np
import pytest
import torch

d2 = pytest.importorskip("detectron2", reason="Detectron2 is not installed (it has no PyPI release); "
                                              "the Detectron2 engine tests need it")
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY, build_model  # noqa: E402

from conftest import ROOT, TIMM_CONFIGS, TIMM_FAMILIES, TIMM_SHORT, export_timm_student, shapes_det_opts  # noqa: E402
from seed_core.errors import SeedError  # noqa: E402
from seed_det.config import get_det_cfg, merge_det_config  # noqa: E402
from seed_det.convert import convert_to_d2, read_d2_pkl  # noqa: E402
from seed_det.engines import RunOptions, main  # noqa: E402
from seed_det.engines.d2.config import get_d2_cfg, load_d2_config  # noqa: E402
from seed_det.engines.d2.timm_fpn import verify_timm_backbone_loaded  # noqa: E402
from seed_det.timm_backbone import D2_PREFIX, create_features, timm_backbone_names  # noqa: E402

CONFIG_OF = {"mobilenetv3_large_100": "voc_mnv3l_fpn_seed.yaml", "efficientnet_b0": "coco_effb0_fpn_1x_seed.yaml",
             "mobilenetv3_small_050": "demo/digits_mnv3s_fpn.yaml"}
CPU = ["MODEL.DEVICE", "cpu"]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _cfg(config, *opts):
    extra = ["DATASETS.TEST", "('x',)"] if config.startswith("demo/") else []
    return load_d2_config(os.path.join(ROOT, "configs", config), CPU + extra + list(opts))


def test_registered_as_detectron2_writes_its_own():
    assert "build_timm_fpn_backbone" in BACKBONE_REGISTRY


@pytest.mark.parametrize("arch", TIMM_FAMILIES)
def test_output_shape_is_timms_feature_info_and_names_are_timms(arch):
    cfg = _cfg(CONFIG_OF[arch], "MODEL.WEIGHTS", "")
    model = build_model(cfg)
    bottom_up = model.backbone.bottom_up
    features = create_features(arch, [1, 2, 3, 4], "BN")
    shapes = bottom_up.output_shape()
    assert [shapes[f"stage{i}"].channels for i in (1, 2, 3, 4)] == features.feature_info.channels()
    assert [shapes[f"stage{i}"].stride for i in (1, 2, 3, 4)] == features.feature_info.reduction()
    assert sorted(model.backbone.output_shape()) == ["p2", "p3", "p4", "p5", "p6"]
    names = {k for k in model.state_dict() if k.startswith(D2_PREFIX) and not k.endswith("num_batches_tracked")}
    assert names == {D2_PREFIX + k for k in timm_backbone_names(arch, [1, 2, 3, 4])}


@pytest.mark.parametrize("arch", TIMM_FAMILIES)
def test_converted_student_loads_every_backbone_tensor(timm_students, arch):
    pkl = timm_students[arch][1]
    model = build_model(_cfg(CONFIG_OF[arch], "MODEL.WEIGHTS", pkl))
    DetectionCheckpointer(model).load(pkl)
    matched, total, problems = verify_timm_backbone_loaded(model, read_d2_pkl(pkl)["model"])
    assert problems == [] and matched == total == len(timm_backbone_names(arch))
    # every converted tensor found its home: no heuristics, the same names
    assert set(read_d2_pkl(pkl)["model"]) <= set(model.state_dict())


def test_a_family_whose_feature_extractor_flattens_names_loads_completely(tmp_path):
    """ConvNeXt (timm's FeatureListNet: stages.0 -> stages_0; four levels 0..3)."""
    arch = "convnext_atto"
    pkl = str(tmp_path / "s.pkl")
    convert_to_d2(export_timm_student(tmp_path / "s", arch), pkl)
    cfg = _cfg("demo/digits_mnv3s_fpn.yaml", "MODEL.TIMM.ARCH", arch, "MODEL.TIMM.OUT_INDICES", "[0, 1, 2, 3]",
               "MODEL.FPN.IN_FEATURES", "['stage0', 'stage1', 'stage2', 'stage3']", "MODEL.WEIGHTS", pkl)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(pkl)
    matched, total, problems = verify_timm_backbone_loaded(model, read_d2_pkl(pkl)["model"])
    assert problems == [] and matched == total == len(timm_backbone_names(arch))


def tiny_opts(name, shapes_det, out, weights):
    return CPU + shapes_det_opts(name, shapes_det, out, weights) + [
        "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.STEPS", "()", "SOLVER.BASE_LR", "0.001",
        "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "100", "INPUT.MIN_SIZE_TRAIN", "(64,)",
        "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
        "DATALOADER.NUM_WORKERS", "0", "TEST.PRECISE_BN.ENABLED", "False", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
        "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "SEED", "0"]


def _args(config, opts, eval_only=False):
    return RunOptions(os.path.join(ROOT, "configs", config), engine="detectron2", opts=opts, eval_only=eval_only)


@pytest.mark.parametrize("name", TIMM_CONFIGS + ["demo/digits_mnv3s_fpn.yaml"])
def test_two_iterations_of_every_config_in_detectron2(tmp_path, shapes_det, timm_students, name):
    arch = TIMM_SHORT.get(os.path.basename(name).split("_")[1], "mobilenetv3_small_050")
    weights = "" if name.endswith("_random.yaml") else timm_students[arch][1]
    out = tmp_path / "out"
    metrics = main(_args(name, tiny_opts(os.path.basename(name), shapes_det, out, weights)))
    keys = ("AP", "AP50", "AP75") + (("mask_AP",) if name.startswith("coco") else ())
    assert all(0.0 <= metrics[k] <= 100.0 for k in keys)
    record = json.loads((out / "metrics.json").read_text())
    assert record["engine"] == "detectron2" and record["weights"] == weights


def test_a_student_of_another_architecture_is_refused_naming_both(tmp_path, shapes_det, timm_students):
    out = tmp_path / "out"
    opts = tiny_opts("voc", shapes_det, out, timm_students["mobilenetv3_large_100"][1])
    with pytest.raises(SeedError, match="mobilenetv3_large_100 student but the config builds efficientnet_b0"):
        main(_args("voc_effb0_fpn_seed.yaml", opts))
    assert not out.exists()  # refused before anything started


def _confident(d2_cfg):
    """A Detectron2 detector with well separated scores (fresh heads score every box alike)."""
    torch.manual_seed(0)
    model = build_model(d2_cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("objectness_logits.weight", "cls_score.weight", "anchor_deltas.weight",
                              "bbox_pred.weight")):
                p.mul_(20)
        for m in model.modules():
            if hasattr(m, "running_var") and m.running_var is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


def test_a_detectron2_timm_detector_gives_the_same_detections_in_the_torchvision_engine(tmp_path):
    from seed_det.engines.tv.model import build_model as build_tv_model, set_input_sizes
    from seed_det.engines.tv.weights import load_weights

    path = os.path.join(ROOT, "configs", "demo", "digits_mnv3s_fpn.yaml")
    opts = tuple(CPU) + ("DATASETS.TEST", "('x',)", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96",
                         "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    tv_cfg, d2_cfg = merge_det_config(get_det_cfg(), path, opts), merge_det_config(get_d2_cfg(), path, opts)
    d2_model = _confident(d2_cfg)
    DetectionCheckpointer(d2_model, save_dir=str(tmp_path)).save("model_final")
    tv_model = build_tv_model(tv_cfg).eval()
    report = load_weights(tv_model, str(tmp_path / "model_final.pth"), detector=True)
    assert not report["ignored"]
    set_input_sizes(tv_model, tv_cfg, train=False)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 96, 96, generator=g) * 60
    for x, y, s in ((8, 10, 30), (50, 20, 24), (30, 60, 20)):
        image[:, y:y + s, x:x + s] += 150
    image = image.round().clamp(0, 255)
    with torch.no_grad():
        expected = d2_model([{"image": image.to(torch.uint8), "height": 96, "width": 96}])[0]["instances"]
        got = tv_model([image])[0]
    assert len(expected) > 5, "the comparison needs detections"
    assert len(got["boxes"]) == len(expected)
    assert torch.allclose(got["boxes"], expected.pred_boxes.tensor, atol=1e-3)
    assert torch.allclose(got["scores"], expected.scores, atol=1e-5)
    assert torch.equal(got["labels"] - 1, expected.pred_classes)
    assert np.isfinite(got["scores"].numpy()).all()
