"""The torchvision engine: trains and evaluates on tiny shapes data (C4/FPN, with/without masks),
loads converted checkpoints with every backbone key, and refuses bad input by name."""
import json
import math
import os
import re

import pytest
import torch
import torchvision

from seed_core.errors import TooManyBadImagesError
from seed_det.config import ConfigError, load_det_config
from seed_det.convert import (CheckpointError, check_weights_depth, convert_to_d2, d2_to_torchvision_name,
                              read_d2_pkl, read_weights_file, torchvision_to_d2_state, write_d2_pkl)
from seed_det.data import DatasetError
from seed_det.engines import RunOptions
from seed_det.engines.tv.engine import run
from seed_det.engines.tv.checkpoint import save_checkpoint
from seed_det.engines.tv.checks import check_supported
from seed_det.engines.tv.model import backbone_modules, build_model
from seed_det.engines.tv.solver import lr_factor
from seed_det.engines.tv.weights import WeightsError, load_weights


BASE = """
MODEL:
  DEVICE: cpu
  RESNETS: {DEPTH: 18, RES2_OUT_CHANNELS: 64, NORM: BN, STRIDE_IN_1X1: False}
  BACKBONE: {FREEZE_AT: 0}
  PIXEL_MEAN: [123.675, 116.28, 103.53]
  PIXEL_STD: [58.395, 57.12, 57.375]
  RPN: {BATCH_SIZE_PER_IMAGE: 32, PRE_NMS_TOPK_TRAIN: 300, POST_NMS_TOPK_TRAIN: 50, PRE_NMS_TOPK_TEST: 200, POST_NMS_TOPK_TEST: 20}
  ROI_HEADS: {NUM_CLASSES: 3, BATCH_SIZE_PER_IMAGE: 16}
INPUT: {FORMAT: RGB, MIN_SIZE_TRAIN: [64], MAX_SIZE_TRAIN: 96, MIN_SIZE_TEST: 64, MAX_SIZE_TEST: 96}
SOLVER: {IMS_PER_BATCH: 2, BASE_LR: 0.01, MAX_ITER: 2, STEPS: [1], WARMUP_ITERS: 1, CHECKPOINT_PERIOD: 1000}
DATALOADER: {NUM_WORKERS: 0}
SEED: 0
"""
C4 = "MODEL: {ROI_HEADS: {NAME: BasicBlockRes5ROIHeads}}\n"
FPN = """
MODEL:
  BACKBONE: {NAME: build_resnet_fpn_backbone}
  RESNETS: {OUT_FEATURES: [res2, res3, res4, res5]}
  FPN: {IN_FEATURES: [res2, res3, res4, res5]}
  ANCHOR_GENERATOR: {SIZES: [[32], [64], [128], [256], [512]]}
  RPN: {IN_FEATURES: [p2, p3, p4, p5, p6]}
  ROI_HEADS: {NAME: StandardROIHeads, IN_FEATURES: [p2, p3, p4, p5]}
  ROI_BOX_HEAD: {NAME: FastRCNNConvFCHead, NUM_FC: 2, FC_DIM: 64, POOLER_RESOLUTION: 7}
  ROI_MASK_HEAD: {NUM_CONV: 2, CONV_DIM: 32}
"""


def _datasets(root, kind):
    if kind == "coco":
        ann, img = os.path.join(root, "annotations"), os.path.join(root, "JPEGImages")
        return ["DATASETS.COCO_JSON", repr([["tr", f"{ann}/instances_train.json", img], ["te", f"{ann}/instances_val.json", img]]),
                "DATASETS.TRAIN", "('tr',)", "DATASETS.TEST", "('te',)"]
    return ["DATASETS.VOC", repr([["tr", root, "train", 2007], ["te", root, "val", 2007]]),
            "DATASETS.TRAIN", "('tr',)", "DATASETS.TEST", "('te',)"]


def make_cfg(tmp_path, shapes_det, arch="c4", kind="voc", opts=()):
    base = tmp_path / "base.yaml"
    base.write_text(BASE)
    path = tmp_path / f"{arch}.yaml"
    path.write_text("_BASE_: base.yaml\n" + (FPN if arch == "fpn" else C4))
    opts = ["OUTPUT_DIR", str(tmp_path / "out")] + _datasets(shapes_det, kind) + list(opts)
    return load_det_config(str(path), opts), str(path)


def _args(config_file, **kw):
    return RunOptions(config_file=config_file, resume=kw.get("resume", False), eval_only=kw.get("eval_only", False))


@pytest.mark.parametrize("arch,mask", [("c4", False), ("c4", True), ("fpn", False), ("fpn", True)])
def test_trains_and_evaluates(tmp_path, shapes_det, arch, mask):
    kind = "coco" if mask else "voc"  # masks need the COCO json; boxes alone exercise the VOC layout
    opts = ["MODEL.MASK_ON", str(mask)]
    if arch == "c4" and mask:
        opts += ["TEST.PRECISE_BN.ENABLED", "True", "TEST.PRECISE_BN.NUM_ITER", "2"]
    cfg, path = make_cfg(tmp_path, shapes_det, arch, kind, opts)
    metrics = run(cfg, _args(path))
    expected = {"AP", "AP50", "AP75"} | ({"mask_AP", "mask_AP50", "mask_AP75"} if mask else set())
    assert expected <= set(metrics)
    assert all(0.0 <= metrics[k] <= 100.0 for k in expected)
    out = tmp_path / "out"
    record = json.loads((out / "metrics.json").read_text())
    assert record["engine"] == "torchvision" and record["metrics"]["AP"] == pytest.approx(metrics["AP"])
    assert (tmp_path / "results_detection.csv").read_text().count("\n") == 2  # header + this run
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2] and all(r["loss"] > 0 for r in log)
    assert ("loss_mask" in log[0]) == mask
    assert (out / "model_final.pth").is_file() and (out / "log.txt").stat().st_size > 0


def test_resume_and_eval_only_reproduce(tmp_path, shapes_det):
    cfg, path = make_cfg(tmp_path, shapes_det, "fpn")
    first = run(cfg, _args(path))
    again = run(cfg, _args(path, eval_only=True, resume=True))  # last_checkpoint -> model_final.pth
    assert again == pytest.approx(first)
    cfg.defrost()
    cfg.SOLVER.MAX_ITER = 3
    run(cfg, _args(path, resume=True))
    log = (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in log] == [1, 2, 3]  # continued, not restarted


def _resnet_state(depth):
    torch.manual_seed(depth)
    net = getattr(torchvision.models, f"resnet{depth}")()
    with torch.no_grad():  # non-default BN statistics, so a skipped buffer would show
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return net.state_dict()


@pytest.mark.parametrize("arch", ["c4", "fpn"])
def test_converted_checkpoint_loads_every_backbone_key(tmp_path, shapes_det, arch):
    state = _resnet_state(18)
    write_d2_pkl(torchvision_to_d2_state(state), tmp_path / "r18.pkl")
    torch.save(state, tmp_path / "student_backbone.pth")
    cfg, _ = make_cfg(tmp_path, shapes_det, arch)
    expected = {k for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    for weights in ("r18.pkl", "student_backbone.pth"):
        model = build_model(cfg)
        report = load_weights(model, str(tmp_path / weights))
        assert set(report["loaded"]) == expected
        loaded = {f"{p}.{k}": v for p, m in backbone_modules(model).items() for k, v in m.state_dict().items()}
        for k in expected:
            assert torch.equal(loaded[k], state[k]), k
    assert d2_to_torchvision_name("roi_heads.res5.1.shortcut.norm.bias") == "layer4.1.downsample.1.bias"


def test_wrong_depth_checkpoint_is_named(tmp_path, shapes_det):
    write_d2_pkl(torchvision_to_d2_state(_resnet_state(34)), tmp_path / "r34.pkl")
    cfg, _ = make_cfg(tmp_path, shapes_det, "c4")
    with pytest.raises(WeightsError, match="ResNet-34"):
        load_weights(build_model(cfg), str(tmp_path / "r34.pkl"))


def test_freeze_at_freezes_stem_and_res2(tmp_path, shapes_det):
    cfg, _ = make_cfg(tmp_path, shapes_det, "fpn", opts=["MODEL.BACKBONE.FREEZE_AT", "2"])
    body = build_model(cfg).backbone.body
    assert not any(p.requires_grad for p in body.conv1.parameters())
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    assert isinstance(body.bn1, torchvision.ops.FrozenBatchNorm2d)


@pytest.mark.parametrize("opts,key", [
    (["MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, False, True, True]", "MODEL.RESNETS.DEPTH", "50",
      "MODEL.RESNETS.RES2_OUT_CHANNELS", "256", "MODEL.ROI_HEADS.NAME", "Res5ROIHeads"],
     "MODEL.RESNETS.DEFORM_ON_PER_STAGE"),
    (["MODEL.BACKBONE.NAME", "build_mobilenetv2_fpn_backbone"], "MODEL.BACKBONE.NAME"),
    (["SOLVER.AMP.ENABLED", "True"], "SOLVER.AMP.ENABLED"),
    (["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True"], "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG"),
    (["VIS_PERIOD", "20"], "VIS_PERIOD"),
    (["TEST.EXPECTED_RESULTS", "[['bbox', 'AP', 50.0, 0.5]]"], "TEST.EXPECTED_RESULTS"),
    (["DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler", "DATALOADER.REPEAT_THRESHOLD", "0.001"],
     "DATALOADER.SAMPLER_TRAIN"),
])
def test_unsupported_config_key_is_named(tmp_path, shapes_det, opts, key):
    cfg, path = make_cfg(tmp_path, shapes_det, "c4", opts=opts)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(cfg, _args(path))
    assert not (tmp_path / "out" / "model_final.pth").exists()


def test_zero_annotations_and_broken_json(tmp_path, shapes_det):
    src = json.load(open(os.path.join(shapes_det, "annotations", "instances_train.json")))
    empty, broken = tmp_path / "empty.json", tmp_path / "broken.json"
    empty.write_text(json.dumps(dict(src, annotations=[])))
    broken.write_text(json.dumps(src)[:200])
    img = os.path.join(shapes_det, "JPEGImages")
    for bad, message in ((empty, "zero annotations"), (broken, "not valid JSON")):
        cfg, path = make_cfg(tmp_path, shapes_det, "c4", "coco",
                             ["DATASETS.COCO_JSON", repr([["tr", str(bad), img], ["te", str(bad), img]])])
        with pytest.raises(DatasetError, match=message):
            run(cfg, _args(path))


def test_missing_image_is_named(tmp_path, shapes_det):
    ann = os.path.join(shapes_det, "annotations")
    wrong_root = str(tmp_path)  # the json is right, the image folder is not
    registered = [["tr", f"{ann}/instances_train.json", wrong_root], ["te", f"{ann}/instances_val.json", wrong_root]]
    cfg, path = make_cfg(tmp_path, shapes_det, "c4", "coco", ["DATASETS.COCO_JSON", repr(registered)])
    # training skips missing images as it skips unreadable ones, and says so when too many are
    with pytest.raises(TooManyBadImagesError, match=r"training set 'tr': 4 of 4 images cannot be read.*does not exist"):
        run(cfg, _args(path))


def test_missing_builtin_root_names_env_var(tmp_path, shapes_det, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    cfg, path = make_cfg(tmp_path, shapes_det, "c4", opts=["DATASETS.TEST", "('voc_2007_test',)"])
    with pytest.raises(DatasetError, match="DETECTRON2_DATASETS"):
        run(cfg, _args(path))


def test_class_count_mismatch(tmp_path, shapes_det):
    cfg, path = make_cfg(tmp_path, shapes_det, "c4", opts=["MODEL.ROI_HEADS.NUM_CLASSES", "20"])
    with pytest.raises(ConfigError, match="NUM_CLASSES"):
        run(cfg, _args(path))


def test_shipped_configs_build(tmp_path):
    """Every detection config in configs/ is one the engine can honour; each distinct model builds."""
    from conftest import ROOT
    root = os.path.join(ROOT, "configs")
    paths = sorted(p for p in os.listdir(root) if p.endswith(".yaml"))
    assert paths, "no detection configs found"
    built = set()
    for name in paths:
        cfg = load_det_config(os.path.join(root, name), ["MODEL.WEIGHTS", ""])
        check_supported(cfg)
        key = (cfg.MODEL.BACKBONE.NAME, cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.TIMM.ARCH, cfg.MODEL.MASK_ON,
               cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        if key not in built:
            built.add(key)
            model = build_model(cfg)
            assert model.roi_heads.box_predictor.cls_score.out_features == cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1
            resnet = {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}
            timm = {"conv_stem", "bn1", "blocks"}  # a timm backbone's own top-level modules
            assert set(backbone_modules(model)) >= (timm if cfg.MODEL.TIMM.ARCH else resnet)


def test_precise_bn_replaces_running_stats():
    from seed_det.engines.tv.precise_bn import update_bn_stats

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm2d(1, momentum=0.1)

        def forward(self, images, targets):
            return self.bn(torch.stack(images))

    net = Net()
    batches = iter([([torch.full((1, 2, 2), 2.0)], [{}]), ([torch.full((1, 2, 2), 4.0)], [{}])])
    update_bn_stats(net, batches, 2, torch.device("cpu"))
    assert net.bn.running_mean.item() == pytest.approx(3.0)  # the plain average, not an EMA
    assert net.bn.momentum == 0.1


def test_pooler_levels_and_alignment():
    from torchvision.ops import MultiScaleRoIAlign

    from seed_det.engines.tv.layers import RoIPooler

    torch.manual_seed(0)
    feats = {"0": torch.randn(1, 4, 8, 8)}
    boxes = [torch.tensor([[3.0, 5.0, 60.0, 70.0], [10.0, 10.0, 40.0, 30.0]])]
    unaligned = RoIPooler(["0"], [16], 7, 2, aligned=False)(feats, boxes)
    reference = MultiScaleRoIAlign(["0"], 7, 2)(feats, boxes, [(128, 128)])
    assert torch.allclose(unaligned, reference)
    assert not torch.allclose(RoIPooler(["0"], [16], 7, 2, aligned=True)(feats, boxes), reference)
    fpn = RoIPooler(["0", "1", "2", "3"], [4, 8, 16, 32], 7, 0, aligned=True)
    sizes = torch.tensor([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 10, 10], [0, 0, 900, 900]], dtype=torch.float)
    assert fpn._levels(sizes).tolist() == [2, 1, 0, 3]  # Detectron2: 224 px -> P4, clamped to P2..P5


def test_schedule_matches_detectron2(tmp_path, shapes_det):
    cfg, _ = make_cfg(tmp_path, shapes_det, opts=["SOLVER.WARMUP_ITERS", "10", "SOLVER.WARMUP_FACTOR", "0.1",
                                              "SOLVER.STEPS", "(20, 30)", "SOLVER.MAX_ITER", "40"])
    assert lr_factor(cfg, 0) == pytest.approx(0.1)
    assert lr_factor(cfg, 5) == pytest.approx(0.1 * 0.5 + 0.5)
    assert [lr_factor(cfg, i) for i in (10, 19, 20, 29, 30)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_schedule_ramps_to_the_value_where_warmup_ends(tmp_path, shapes_det):
    # Detectron2's warmup replaces the schedule: a step inside it lowers where the ramp ends.
    cfg, _ = make_cfg(tmp_path, shapes_det, opts=["SOLVER.WARMUP_ITERS", "10", "SOLVER.WARMUP_FACTOR", "0.1",
                                              "SOLVER.STEPS", "(4,)", "SOLVER.MAX_ITER", "40"])
    assert [lr_factor(cfg, i) for i in (0, 5, 9, 10)] == pytest.approx([0.1, 0.1, 0.1, 0.1])
    cosine, _ = make_cfg(tmp_path, shapes_det, opts=["SOLVER.WARMUP_ITERS", "10", "SOLVER.WARMUP_FACTOR", "0.1",
                                                 "SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR", "SOLVER.MAX_ITER", "40"])
    end = 0.5 * (1 + math.cos(math.pi * 10 / 40))
    assert lr_factor(cosine, 5) == pytest.approx(0.1 + (end - 0.1) * 0.5)
    assert lr_factor(cosine, 10) == pytest.approx(end)


def _in_detectron2_names(model, arch):
    """This engine's state in Detectron2's names and class order, spelt out rule by rule."""
    rules = [(r"^backbone\.fpn\.inner_blocks\.(\d)\.0\.", lambda m: f"backbone.fpn_lateral{int(m[1]) + 2}."),
             (r"^backbone\.fpn\.layer_blocks\.(\d)\.0\.", lambda m: f"backbone.fpn_output{int(m[1]) + 2}."),
             (r"^rpn\.head\.conv\.0\.0\.", lambda m: "proposal_generator.rpn_head.conv."),
             (r"^rpn\.head\.cls_logits\.", lambda m: "proposal_generator.rpn_head.objectness_logits."),
             (r"^rpn\.head\.bbox_pred\.", lambda m: "proposal_generator.rpn_head.anchor_deltas."),
             (r"^roi_heads\.box_head\.net\.1\.", lambda m: "roi_heads.box_head.fc1."),
             (r"^roi_heads\.box_head\.net\.3\.", lambda m: "roi_heads.box_head.fc2."),
             (r"^roi_heads\.box_head\.res5\.norm\.", lambda m: "roi_heads.res5.norm."),
             (r"^roi_heads\.mask_head\.(\d)\.0\.", lambda m: f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}."),
             (r"^roi_heads\.mask_predictor\.conv5_mask\.", lambda m: "roi_heads.mask_head.deconv."),
             (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.", lambda m: "roi_heads.mask_head.predictor.")]
    resnet = {"fpn": "backbone.body.", "c4": "backbone."}[arch]
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked") or k.startswith("roi_heads.mask_head.res5."):
            continue  # C4 lists the shared res5 under both heads; Detectron2 once
        if k.startswith(resnet) and "fpn" not in k or k.startswith("roi_heads.box_head.res5.layer4."):
            tv_name = k[len(resnet):] if k.startswith(resnet) else k[len("roi_heads.box_head.res5."):]
            (name, value), = torchvision_to_d2_state({tv_name: v}).items()
            out[("backbone.bottom_up." if arch == "fpn" else "roi_heads." if name.startswith("res5") else "backbone.")
                + name] = torch.as_tensor(value)
            continue
        if k.startswith("roi_heads.box_predictor.cls_score."):
            out[k] = torch.cat([v[1:], v[:1]])  # background last
            continue
        if k.startswith("roi_heads.box_predictor.bbox_pred."):
            out[k] = v[4:]  # no background box
            continue
        for rx, prefix in rules:
            m = re.match(rx, k)
            if m:
                out[prefix(m) + k[m.end():]] = v[1:] if "mask_fcn_logits" in k else v
                break
        else:
            raise AssertionError(f"no rule for {k}")
    return out


@pytest.mark.parametrize("arch", ["c4", "fpn"])
def test_a_detectron2_detector_loads_completely(tmp_path, shapes_det, arch):
    """A Detectron2 model_final.pth (Detectron2 names, background last, no background box or
    mask) fills every tensor of the model; evaluation refuses one that does not fit."""
    cfg, _ = make_cfg(tmp_path, shapes_det, arch, opts=["MODEL.MASK_ON", "True"])
    torch.manual_seed(0)
    source = build_model(cfg)
    with torch.no_grad():
        for name, p in source.named_parameters():
            p.normal_()
            if name.endswith(("bbox_pred.weight", "bbox_pred.bias")):
                p[:4] = 0  # torchvision's background box, which Detectron2 does not have
            if "mask_fcn_logits" in name:
                p[:1] = 0
    torch.save({"model": _in_detectron2_names(source, arch), "iteration": 9}, tmp_path / "model_final.pth")
    model = build_model(cfg)
    report = load_weights(model, str(tmp_path / "model_final.pth"), detector=True)
    assert not report["ignored"]
    expected = source.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k
    other, _ = make_cfg(tmp_path, shapes_det, arch, opts=["MODEL.MASK_ON", "True", "MODEL.ROI_HEADS.NUM_CLASSES", "2"])
    with pytest.raises(WeightsError, match="does not fit the model the config builds"):
        load_weights(build_model(other), str(tmp_path / "model_final.pth"), detector=True)


def test_detections_clipped_to_a_sliver_are_kept_as_detectron2_keeps_them(tmp_path, shapes_det):
    cfg, _ = make_cfg(tmp_path, shapes_det, "fpn", opts=["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.5"])
    heads = build_model(cfg).roi_heads
    proposals = [torch.tensor([[10.0, 10.0, 30.0, 30.0], [70.0, 10.0, 90.0, 30.0]])]  # the second lies past x = 64
    logits = torch.tensor([[0.0, 9.0, 0.0, 0.0], [0.0, 0.0, 9.0, 0.0]])
    boxes, scores, labels = heads.postprocess_detections(logits, torch.zeros(2, 16), proposals, [(64, 64)])
    assert labels[0].tolist() == [1, 2] and boxes[0][1].tolist() == [64.0, 10.0, 64.0, 30.0]


@pytest.mark.parametrize("arch", ["c4", "fpn"])
def test_preflight_reads_the_depth_of_an_engine_checkpoint(tmp_path, shapes_det, arch):
    # A fine-tuned model of this engine used as MODEL.WEIGHTS for further fine-tuning.
    cfg, _ = make_cfg(tmp_path, shapes_det, arch, opts=["MODEL.MASK_ON", "True"])
    path = save_checkpoint(str(tmp_path / "ft"), "model_final.pth", build_model(cfg))
    assert check_weights_depth(path, 18, 64).depth == 18
    with pytest.raises(CheckpointError, match="is a ResNet-18 but the config builds ResNet-34"):
        check_weights_depth(path, 34)
    # ... and converts to Detectron2 with res5 included, bit-equal.
    convert_to_d2(path, tmp_path / "ft.pkl")
    converted = read_d2_pkl(tmp_path / "ft.pkl")["model"]
    res5 = "roi_heads.box_head.res5.layer4" if arch == "c4" else "backbone.body.layer4"
    source = torch.load(path, weights_only=True)["model"][f"{res5}.1.conv2.weight"]
    assert (converted["res5.1.conv2.weight"] == source.numpy()).all()


def test_anchors_are_detectron2s_exact_corners_on_nominal_strides(tmp_path, shapes_det):
    from torchvision.models.detection.image_list import ImageList

    cfg, _ = make_cfg(tmp_path, shapes_det, "fpn", opts=["MODEL.ANCHOR_GENERATOR.SIZES", "[[24], [48], [96], [192], [384]]"])
    generator = build_model(cfg).rpn.anchor_generator
    # A 160 x 96 image: P6 is a 3 x 2 grid, which a stride read off the image size would make 53 x 48.
    grids = [(40, 24), (20, 12), (10, 6), (5, 3), (3, 2)]
    feats = [torch.zeros(1, 1, h, w) for h, w in grids]
    anchors = generator(ImageList(torch.zeros(1, 3, 160, 96), [(160, 96)]), feats)[0]
    assert len(anchors) == sum(h * w * 3 for h, w in grids)
    p6 = anchors[-3 * 6:].view(3, 2, 3, 4)  # rows, columns, ratios (0.5, 1, 2), corners
    w, h = 384 / 0.5 ** 0.5, 384 * 0.5 ** 0.5  # ratio = h / w, area 384^2, not rounded (271.5 x 135.8)
    assert p6[2, 1, 0].tolist() == pytest.approx([64 - w / 2, 128 - h / 2, 64 + w / 2, 128 + h / 2])
    assert p6[0, 0, 1].tolist() == pytest.approx([-192, -192, 192, 192])


@pytest.mark.parametrize("beta", [0.0, 1 / 9])
def test_box_head_loss_follows_smooth_l1_beta(tmp_path, shapes_det, beta):
    from torchvision.models.detection.roi_heads import fastrcnn_loss

    cfg, _ = make_cfg(tmp_path, shapes_det, "fpn", opts=["MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", str(beta)])
    heads = build_model(cfg).roi_heads
    torch.manual_seed(0)
    logits, deltas = torch.randn(6, 4), torch.randn(6, 16)
    labels, targets = torch.tensor([0, 2, 1, 0, 3, 2]), torch.randn(6, 4) * 0.2
    losses = heads._box_losses(logits, deltas, labels, targets)
    if beta:  # torchvision's own loss is smooth L1 with beta 1/9
        expected = fastrcnn_loss(logits, deltas, [labels], [targets])
    else:  # Detectron2's default: L1 on each foreground proposal's own class, over all sampled
        own = deltas.view(6, 4, 4)[torch.arange(6), labels]
        expected = (torch.nn.functional.cross_entropy(logits, labels),
                    ((own - targets).abs().sum(dim=1) * (labels > 0)).sum() / 6)
    assert losses["loss_classifier"].item() == pytest.approx(expected[0].item())
    assert losses["loss_box_reg"].item() == pytest.approx(expected[1].item())


def test_engine_identity_is_engine_library_and_package_versions(monkeypatch):
    """A cached fine-tuning is keyed on versions a reader can check with `pip show`, not on source files."""
    import importlib.metadata

    import seed_det.engines as engines

    before = engines.engine_identity("torchvision")
    assert before == {"engine": "torchvision", "library": torchvision.__version__.split("+")[0],
                      "seed-transfer": importlib.metadata.version("seed-transfer")}
    if not engines.detectron2_available():
        assert engines.engine_identity("auto") == before  # auto: the engine that runs
    monkeypatch.setattr(engines, "package_version", lambda: "99.0")  # a new release is a new identity
    assert engines.engine_identity("torchvision") == {**before, "seed-transfer": "99.0"}


def test_keys_the_engine_honours_its_own_way(tmp_path, shapes_det):
    """CUDNN_BENCHMARK is set for the run; INPUT.MASK_FORMAT polygon with masks is named in the log,
    since the engine's mask targets are Detectron2's 'bitmask' ones."""
    from seed_det.engines.tv.checks import mask_format_note
    cfg, path = make_cfg(tmp_path, shapes_det, "c4", "coco", ["MODEL.MASK_ON", "True", "CUDNN_BENCHMARK", "True",
                                                          "SOLVER.MAX_ITER", "0"])
    assert "bitmask" in mask_format_note(cfg)
    assert mask_format_note(load_det_config(path, ["INPUT.MASK_FORMAT", "bitmask", "MODEL.MASK_ON", "True"]
                                            + _datasets(shapes_det, "coco"))) is None
    before = torch.backends.cudnn.benchmark
    try:
        run(cfg, _args(path))
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before
    assert "INPUT.MASK_FORMAT polygon" in (tmp_path / "out" / "log.txt").read_text()


def test_one_function_says_what_a_weights_file_is(tmp_path, shapes_det):
    """seed_det.convert.read_weights_file decides the kind of MODEL.WEIGHTS for the checks before
    both engines, the torchvision engine's loader and the Detectron2 engine's load check."""
    import ast
    import seed_det
    root = os.path.dirname(seed_det.__file__)
    for module in ("engines/preflight.py", "engines/tv/weights.py", "engines/d2/engine.py"):
        tree = ast.parse(open(os.path.join(root, module)).read())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "seed_det.convert"
                    for a in n.names}
        assert "read_weights_file" in imported, module
    cfg, _ = make_cfg(tmp_path, shapes_det, "c4", opts=["MODEL.MASK_ON", "True"])
    model = build_model(cfg)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    convert_to_d2(tmp_path / "r18.pth", tmp_path / "r18.pkl")
    torch.save({"model": _in_detectron2_names(model, "c4")}, tmp_path / "d2_final.pth")
    torch.save({"model": {k: torch.as_tensor(v) for k, v in read_d2_pkl(tmp_path / "r18.pkl")["model"].items()}},
               tmp_path / "d2_backbone.pth")
    write_d2_pkl({k: v.numpy() for k, v in _in_detectron2_names(model, "c4").items()}, tmp_path / "d2_final.pkl")
    files = {"r18.pth": "backbone", "r18.pkl": "d2_backbone", "d2_backbone.pth": "d2_backbone",
             "d2_final.pth": "d2_detector", "d2_final.pkl": "d2_detector",
             os.path.relpath(save_checkpoint(str(tmp_path), "tv_final.pth", model), tmp_path): "tv_detector"}
    for name, kind in files.items():
        weights = read_weights_file(tmp_path / name)
        assert weights.kind == kind, name
        assert weights.is_detector == (kind in ("d2_detector", "tv_detector"))
        assert weights.resnet_spec().depth == 18
    # the torchvision engine loads each as what it is
    assert load_weights(build_model(cfg), str(tmp_path / "d2_backbone.pth"))["loaded"]
    for name in ("d2_final.pth", "d2_final.pkl", "tv_final.pth"):
        load_weights(build_model(cfg), str(tmp_path / name), detector=True)


def test_a_seed_error_in_a_data_loading_worker_reaches_the_user_in_one_line(tmp_path, shapes_det, monkeypatch, capsys):
    """A DatasetError raised inside a DataLoader worker (DATALOADER.NUM_WORKERS 1) is what the main
    process would print, with the run log holding the worker's traceback."""
    from conftest import load_script
    from seed_det.data.torch_dataset import DetectionDataset

    def broken(self, idx):
        raise DatasetError(f"image {os.path.basename(self.records[idx]['file_name'])} cannot be decoded; replace it")
    monkeypatch.setattr(DetectionDataset, "_readable", broken)  # the worker is forked: it sees the patch
    cfg, path = make_cfg(tmp_path, shapes_det, opts=["DATALOADER.NUM_WORKERS", "1"])
    log = os.path.join(cfg.OUTPUT_DIR, "log.txt")
    with pytest.raises(DatasetError, match=r"^image \S+ cannot be decoded; replace it \(details: .*log\.txt\)$"):
        run(cfg, _args(path))
    assert "Original Traceback" in open(log).read()

    train_net = load_script("tools/train_net.py")
    capsys.readouterr()
    opts = ["OUTPUT_DIR", str(tmp_path / "out2")] + _datasets(shapes_det, "voc") + ["DATALOADER.NUM_WORKERS", "1"]
    assert train_net.main(["--config-file", path, "--engine", "torchvision", *opts]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(r"error: image \S+ cannot be decoded; replace it \(details: .*out2/log\.txt\)", err[-1])
    assert not any("Traceback" in line or "Caught" in line for line in err)
