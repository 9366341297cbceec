"""timm students (MobileNetV3, EfficientNet) in the transfer suite: conversion round trip, complete
loading in the torchvision engine, refusal of another architecture, the shipped configs, and two
training iterations of each on tiny data. The Detectron2 side is tests/seed_det/test_timm_d2.py."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import ROOT, TIMM_CONFIGS, TIMM_FAMILIES, TIMM_SHORT, export_timm_student, shapes_det_opts
from seed_core.errors import CheckpointError, ConfigError
from seed_det.config import load_det_config
from seed_det.convert import convert_to_d2, read_d2_pkl
from seed_det.engines import RunOptions
from seed_det.engines.preflight import preflight
from seed_det.engines.tv.engine import run
from seed_det.engines.tv.model import build_model
from seed_det.engines.tv.weights import WeightsError, load_weights
from seed_det.timm_backbone import D2_PREFIX, check_timm_weights, timm_backbone_names

TORCHVISION_MEAN, TORCHVISION_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
DIGITS = os.path.join(ROOT, "configs", "demo", "digits_mnv3s_fpn.yaml")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", TIMM_FAMILIES)
def test_conversion_round_trip(timm_students, arch):
    pth, pkl = timm_students[arch]
    data = read_d2_pkl(pkl)
    assert data["matching_heuristics"] is False and data["timm_arch"] == arch
    student = torch.load(pth, weights_only=True)
    expected = timm_backbone_names(arch)
    assert sorted(data["model"]) == sorted(D2_PREFIX + k for k in expected)  # the model's own names
    for name, value in data["model"].items():
        source = student[name[len(D2_PREFIX):]]
        assert value.dtype == source.numpy().dtype
        np.testing.assert_array_equal(value, source.numpy())  # bit for bit
    dropped = set(student) - set(expected)  # the pooled head no detector runs, and BN counters
    assert all(k.startswith(("conv_head.", "bn2.")) or k.endswith("num_batches_tracked") for k in dropped)


def test_conversion_summary_reports_matched_total(tmp_path):
    pth = export_timm_student(tmp_path / "s", "mobilenetv3_small_050")
    summary = convert_to_d2(pth, tmp_path / "s.pkl")
    assert summary["arch"] == "mobilenetv3_small_050"
    assert summary["matched"] == summary["total"] == len(timm_backbone_names("mobilenetv3_small_050"))
    assert "MODEL.TIMM.ARCH mobilenetv3_small_050" in summary["config_overrides"]


def test_weights_of_another_architecture_than_meta_json_are_refused(tmp_path):
    pth = export_timm_student(tmp_path / "s", "mobilenetv3_small_050")
    (tmp_path / "s" / "meta.json").write_text(json.dumps({"arch": "efficientnet_b0"}))
    with pytest.raises(CheckpointError, match="efficientnet_b0"):
        convert_to_d2(pth, tmp_path / "s.pkl")
    assert not (tmp_path / "s.pkl").exists()


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------

def test_config_matrix_is_complete():
    for data, sched in (("voc", ""), ("coco", "_1x")):
        for arch in TIMM_SHORT:
            for variant in ("seed", "mocov2", "random"):
                assert f"{data}_{arch}_fpn{sched}_{variant}.yaml" in TIMM_CONFIGS
    assert os.path.isfile(DIGITS)


@pytest.mark.parametrize("name", TIMM_CONFIGS)
def test_every_timm_config_loads_and_follows_protocol(name):
    cfg = load_det_config(os.path.join(ROOT, "configs", name))
    m, short = cfg.MODEL, name.split("_")[1]
    assert m.BACKBONE.NAME == "build_timm_fpn_backbone" and m.TIMM.ARCH == TIMM_SHORT[short]
    assert list(m.TIMM.OUT_INDICES) == [1, 2, 3, 4]
    assert list(m.FPN.IN_FEATURES) == ["stage1", "stage2", "stage3", "stage4"]
    assert m.TIMM.NORM == "SyncBN" and m.FPN.NORM == "SyncBN" and m.BACKBONE.FREEZE_AT == 0
    assert cfg.INPUT.FORMAT == "RGB" and list(m.PIXEL_MEAN) == TORCHVISION_MEAN and list(m.PIXEL_STD) == TORCHVISION_STD
    assert m.MASK_ON == name.startswith("coco") and m.ROI_HEADS.NUM_CLASSES == (80 if name.startswith("coco") else 20)
    variant = name[:-5].rsplit("_", 1)[1]
    assert m.WEIGHTS == {"seed": f"pretrained/seed_{short}.pkl", "mocov2": f"pretrained/mocov2_{short}.pkl",
                         "random": ""}[variant]
    assert cfg.OUTPUT_DIR == f"output/{name[:-5]}"


def test_keys_no_engine_reads_are_refused():
    voc = os.path.join(ROOT, "configs", "voc_mnv3l_fpn_random.yaml")
    with pytest.raises(ConfigError, match="MODEL.RESNETS.DEPTH"):
        load_det_config(voc, ["MODEL.RESNETS.DEPTH", "34"])
    with pytest.raises(ConfigError, match="MODEL.TIMM.ARCH"):
        load_det_config(os.path.join(ROOT, "configs", "voc_r18_fpn_random.yaml"), ["MODEL.TIMM.ARCH", "efficientnet_b0"])
    with pytest.raises(ConfigError, match="FREEZE_AT"):
        load_det_config(voc, ["MODEL.BACKBONE.FREEZE_AT", "2"])
    with pytest.raises(ConfigError, match="stage1"):
        load_det_config(voc, ["MODEL.TIMM.OUT_INDICES", "[2, 3, 4]"])
    with pytest.raises(ConfigError, match="MODEL.TIMM.NORM"):
        load_det_config(voc, ["MODEL.TIMM.NORM", "GN"])


# ----------------------------------------------------------------------------------------------
# torchvision engine: complete loading, refusal, two iterations of every config
# ----------------------------------------------------------------------------------------------

def _digits_cfg(arch, *opts):
    return load_det_config(DIGITS, ["MODEL.TIMM.ARCH", arch, "DATASETS.TEST", "('x',)"] + list(opts))


@pytest.mark.parametrize("arch", TIMM_FAMILIES)
def test_torchvision_engine_loads_every_backbone_tensor(timm_students, arch):
    _, pkl = timm_students[arch]
    model = build_model(_digits_cfg(arch))
    report = load_weights(model, pkl)
    state = model.state_dict()
    body = sorted(k for k in state if k.startswith("backbone.body.") and not k.endswith("num_batches_tracked"))
    assert sorted(report["loaded"]) == body and report["ignored"] == []
    ckpt = read_d2_pkl(pkl)["model"]
    for name in body:  # every tensor of the backbone is the student's
        np.testing.assert_array_equal(state[name].numpy(), ckpt[D2_PREFIX + name[len("backbone.body."):]])


@pytest.mark.parametrize("arch", TIMM_FAMILIES)
def test_frozen_bn_keeps_the_students_statistics(timm_students, arch):
    _, pkl = timm_students[arch]
    model = build_model(_digits_cfg(arch, "MODEL.TIMM.NORM", "FrozenBN"))
    load_weights(model, pkl)
    ckpt = read_d2_pkl(pkl)["model"]
    for name, value in model.state_dict().items():
        if name.startswith("backbone.body.") and name.endswith("running_var"):
            np.testing.assert_array_equal(value.numpy(), ckpt[D2_PREFIX + name[len("backbone.body."):]])


def test_a_student_of_another_architecture_is_refused_naming_both(timm_students, tmp_path):
    _, pkl = timm_students["mobilenetv3_large_100"]
    message = "mobilenetv3_large_100.*efficientnet_b0"
    with pytest.raises(CheckpointError, match=message):  # preflight: both engines, before any model
        check_timm_weights(pkl, "efficientnet_b0", [1, 2, 3, 4])
    cfg = load_det_config(os.path.join(ROOT, "configs", "voc_effb0_fpn_seed.yaml"),
                          ["MODEL.WEIGHTS", pkl, "DATASETS.TRAIN", "()", "RESULTS_CSV", str(tmp_path / "r.csv")])
    with pytest.raises(CheckpointError, match=message):
        preflight(cfg)
    with pytest.raises(WeightsError, match=message):  # and the engine itself
        load_weights(build_model(_digits_cfg("efficientnet_b0")), pkl)
    # without the recorded architecture, the tensors themselves disagree, named
    data = read_d2_pkl(pkl)
    del data["timm_arch"]
    from seed_det.convert_timm import write_timm_pkl
    bare = tmp_path / "bare.pkl"
    write_timm_pkl(data["model"], "", bare)
    with pytest.raises(CheckpointError, match="efficientnet_b0 backbone"):
        check_timm_weights(str(bare), "efficientnet_b0", [1, 2, 3, 4])
    resnet = tmp_path / "r18.pkl"
    from seed_det.convert import write_d2_pkl
    write_d2_pkl({"stem.conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}, resnet)
    with pytest.raises(CheckpointError, match="no converted timm student but the config builds efficientnet_b0"):
        check_timm_weights(str(resnet), "efficientnet_b0", [1, 2, 3, 4])


def test_resnet_and_timm_weights_are_refused_by_the_other_kind_of_config(timm_students, tmp_path):
    import torchvision
    from seed_det.convert import torchvision_to_d2_state, write_d2_pkl
    r18 = tmp_path / "r18.pkl"
    write_d2_pkl(torchvision_to_d2_state(torchvision.models.resnet18().state_dict()), r18)
    with pytest.raises(CheckpointError, match="holds a ResNet-18 but the config builds efficientnet_b0"):
        check_timm_weights(str(r18), "efficientnet_b0", [1, 2, 3, 4])
    cfg = load_det_config(os.path.join(ROOT, "configs", "voc_r18_fpn_seed.yaml"),
                          ["MODEL.WEIGHTS", timm_students["efficientnet_b0"][1], "RESULTS_CSV", str(tmp_path / "r.csv")])
    with pytest.raises(CheckpointError, match="holds a converted efficientnet_b0 student but the config builds ResNet-18"):
        preflight(cfg)


TINY = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
        "SOLVER.STEPS", "(1,)", "SOLVER.WARMUP_ITERS", "1", "SOLVER.BASE_LR", "0.01", "SOLVER.CHECKPOINT_PERIOD", "1000",
        "DATALOADER.NUM_WORKERS", "0", "SEED", "0", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
        "MODEL.RPN.PRE_NMS_TOPK_TEST", "100", "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "TEST.PRECISE_BN.NUM_ITER", "1"]


def tiny_opts(name, shapes_det, out, weights):
    """A shipped config on the tiny shapes data: 64 px, 2 iterations, 3 classes, CPU."""
    return TINY + shapes_det_opts(name, shapes_det, out, weights)


def _short(name):
    return TIMM_SHORT.get(name.split("_")[1])


@pytest.mark.parametrize("name", TIMM_CONFIGS + ["demo/digits_mnv3s_fpn.yaml"])
def test_two_iterations_of_every_config_in_the_torchvision_engine(tmp_path, shapes_det, timm_students, name):
    arch = _short(os.path.basename(name)) or "mobilenetv3_small_050"
    weights = "" if name.endswith("_random.yaml") else timm_students[arch][1]
    path = os.path.join(ROOT, "configs", name)
    cfg = load_det_config(path, tiny_opts(os.path.basename(name), shapes_det, tmp_path / "out", weights))
    preflight(cfg)
    metrics = run(cfg, RunOptions(path))
    keys = {"AP", "AP50", "AP75"} | ({"mask_AP"} if cfg.MODEL.MASK_ON else set())
    assert keys <= set(metrics) and all(np.isfinite(metrics[k]) for k in keys)
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
    record = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert record["engine"] == "torchvision"


def test_eval_only_reloads_the_fine_tuned_timm_detector(tmp_path, shapes_det, timm_students):
    path = os.path.join(ROOT, "configs", "voc_mnv3l_fpn_seed.yaml")
    cfg = load_det_config(path, tiny_opts("voc", shapes_det, tmp_path / "out", timm_students["mobilenetv3_large_100"][1]))
    first = run(cfg, RunOptions(path))
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(tmp_path / "out" / "model_final.pth")
    again = run(cfg, RunOptions(path, eval_only=True))
    assert again["AP"] == pytest.approx(first["AP"])


def test_a_family_whose_feature_extractor_flattens_names_converts_and_loads(tmp_path):
    """ConvNeXt: timm's FeatureListNet renames stages.0 -> stages_0, and has four levels (0..3)."""
    arch = "convnext_atto"
    pth = export_timm_student(tmp_path / "s", arch)
    pkl = str(tmp_path / "s.pkl")
    summary = convert_to_d2(pth, pkl)
    assert summary["matched"] == summary["total"] == len(timm_backbone_names(arch))
    assert any(k.startswith(D2_PREFIX + "stages_0.") for k in read_d2_pkl(pkl)["model"])
    student = torch.load(pth, weights_only=True)
    np.testing.assert_array_equal(read_d2_pkl(pkl)["model"][D2_PREFIX + "stages_1.blocks.0.conv_dw.weight"],
                                  student["stages.1.blocks.0.conv_dw.weight"].numpy())
    model = build_model(_digits_cfg(arch, "MODEL.TIMM.OUT_INDICES", "[0, 1, 2, 3]", "MODEL.FPN.IN_FEATURES",
                                    "['stage0', 'stage1', 'stage2', 'stage3']"))
    report = load_weights(model, pkl)
    assert len(report["loaded"]) == summary["total"] and report["ignored"] == []
