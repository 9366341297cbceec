"""Detectron2 engine: res5 head, shipped configs, checkpoint loading, 2-iteration train + eval.

Needs Detectron2 (not on PyPI, absent in CI): every test here is skipped without it.
Tiny data: 64-96 px images, 2 iterations, CPU.
"""
import dataclasses
import glob
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageDraw

d2 = pytest.importorskip("detectron2", reason="Detectron2 is not installed (it has no PyPI release); "
                                              "the Detectron2 engine tests need it")
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import ROI_HEADS_REGISTRY, build_model  # noqa: E402
from detectron2.modeling.backbone import build_resnet_backbone  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402

import seed_det.engines.d2.engine as d2_engine  # noqa: E402
from seed_core.errors import SeedError  # noqa: E402
from seed_det.config import BASIC_BLOCK_ROI_HEAD  # noqa: E402
from seed_det.convert import convert_to_d2, read_d2_pkl  # noqa: E402
from seed_det.engines.d2.checkpoint import verify_backbone_loaded  # noqa: E402
from seed_det.engines.d2.config import get_d2_cfg, load_d2_config  # noqa: E402
from seed_det.engines import RunOptions, main  # noqa: E402
from seed_det.results import read_results  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "voc_r*.yaml")) +  # the ResNet transfer-protocol configs
                 glob.glob(os.path.join(ROOT, "configs", "coco_r*.yaml")))
CPU = ["MODEL.DEVICE", "cpu"]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _converted(tmp_path, arch="resnet18"):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)()
    for m in model.modules():  # non-trivial BN statistics, so "loaded" is distinguishable from "init"
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    src = tmp_path / f"{arch}.pth"
    torch.save(model.state_dict(), src)
    out = tmp_path / f"{arch}.pkl"
    convert_to_d2(src, out)
    return str(out)


def _cfg(config, *opts):
    return load_d2_config(os.path.join(ROOT, "configs", config), list(CPU) + list(opts))


# ----------------------------------------------------------------------------------------------
# res5 head and model construction
# ----------------------------------------------------------------------------------------------

def test_basic_block_head_registered_and_shaped():
    assert BASIC_BLOCK_ROI_HEAD in ROI_HEADS_REGISTRY
    for depth, blocks in ((18, 2), (34, 3)):
        model = build_model(_cfg("voc_r18_seed.yaml", "MODEL.RESNETS.DEPTH", str(depth), "MODEL.WEIGHTS", ""))
        res5 = model.roi_heads.res5
        convs = [n for n, _ in res5.named_children() if n != "norm"]
        assert len(convs) == blocks
        assert type(res5[0]).__name__ == "BasicBlock"
        assert res5[0].conv1.weight.shape == (512, 256, 3, 3)
        assert res5[0].shortcut.weight.shape == (512, 256, 1, 1)
        assert hasattr(res5, "norm")  # RES5_EXTRA_NORM in the C4 base config
        assert model.roi_heads.box_predictor.cls_score.in_features == 512
    model = build_model(_cfg("voc_r18_seed.yaml", "MODEL.ROI_HEADS.RES5_EXTRA_NORM", "False"))
    assert not hasattr(model.roi_heads.res5, "norm")


@pytest.mark.parametrize("config", [os.path.basename(c) for c in CONFIGS])
def test_every_shipped_config_builds_on_cpu(config):
    cfg = _cfg(config)
    cfg.defrost()
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 50  # build only; keep it light
    model = build_model(cfg)
    assert model.roi_heads.num_classes == (20 if config.startswith("voc") else 80)
    assert model.roi_heads.mask_on == config.startswith("coco")


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config,arch", [("voc_r18_seed.yaml", "resnet18"), ("voc_r34_seed.yaml", "resnet34"),
                                         ("voc_r18_fpn_seed.yaml", "resnet18"),
                                         ("coco_r34_fpn_1x_seed.yaml", "resnet34")])
def test_converted_checkpoint_fills_backbone_and_res5(tmp_path, config, arch):
    pkl = _converted(tmp_path, arch)
    model = build_model(_cfg(config, "MODEL.WEIGHTS", pkl))
    DetectionCheckpointer(model).load(pkl)
    state = read_d2_pkl(pkl)["model"]
    assert verify_backbone_loaded(model, state) == []
    # Every converted tensor found a home (stem..res4 in the backbone, res5 in backbone or head).
    model_names = list(model.state_dict())
    homeless = [k for k in state if not any(m.endswith("." + k) for m in model_names)]
    assert homeless == []


def test_stock_res5_head_would_not_load_r18(tmp_path):
    """The failure our head exists for: stock Res5ROIHeads with R18 weights leaves res5 random."""
    pkl = _converted(tmp_path)
    cfg = get_d2_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "voc_r18_seed.yaml"))
    cfg.merge_from_list(CPU + ["MODEL.ROI_HEADS.NAME", "Res5ROIHeads"])
    model = build_model(cfg)
    DetectionCheckpointer(model).load(pkl)
    problems = verify_backbone_loaded(model, read_d2_pkl(pkl)["model"])
    assert problems and all(p.startswith("roi_heads.res5") for p in problems)


def test_golden_d2_resnet_names(tmp_path):
    """Converted names are exactly Detectron2's own ResNet state names (BN counters aside)."""
    for arch, depth, res2 in (("resnet18", 18, 64), ("resnet34", 34, 64), ("resnet50", 50, 256)):
        cfg = get_d2_cfg()
        cfg.merge_from_list(["MODEL.RESNETS.DEPTH", str(depth), "MODEL.RESNETS.RES2_OUT_CHANNELS", str(res2),
                             "MODEL.RESNETS.OUT_FEATURES", "['res5']", "MODEL.RESNETS.NORM", "BN"])
        backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
        expected = {k for k in backbone.state_dict() if not k.endswith("num_batches_tracked")}
        assert set(read_d2_pkl(_converted(tmp_path, arch))["model"]) == expected


# ----------------------------------------------------------------------------------------------
# Tiny datasets and end-to-end runs
# ----------------------------------------------------------------------------------------------

def _draw(path, box, size=96, color=(200, 30, 30)):
    img = Image.new("RGB", (size, size), (90, 120, 150))
    ImageDraw.Draw(img).rectangle(box, fill=color)
    img.save(path)


def make_tiny_voc(root, n=4):
    """VOC layout: Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/{trainval,test}.txt."""
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    ids = []
    for i in range(n):
        iid = f"{i:06d}"
        box = (10 + 5 * i, 12, 60 + 5 * i, 70)
        _draw(os.path.join(root, "JPEGImages", iid + ".jpg"), box)
        ann = ET.Element("annotation")
        size = ET.SubElement(ann, "size")
        for tag, val in (("width", 96), ("height", 96), ("depth", 3)):
            ET.SubElement(size, tag).text = str(val)
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = ("dog", "cat")[i % 2]
        for tag, val in (("pose", "Unspecified"), ("truncated", "0"), ("difficult", "0")):
            ET.SubElement(obj, tag).text = val  # Detectron2's VOC evaluator reads all three
        bnd = ET.SubElement(obj, "bndbox")
        for tag, val in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bnd, tag).text = str(val)
        ET.ElementTree(ann).write(os.path.join(root, "Annotations", iid + ".xml"))
        ids.append(iid)
    for split in ("trainval", "test"):
        with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    return str(root)


def make_tiny_coco(root, n=4):
    """COCO json with boxes and polygon masks."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    images, anns = [], []
    for i in range(n):
        x0, y0, x1, y1 = 8 + 4 * i, 10, 56 + 4 * i, 60
        _draw(os.path.join(root, "images", f"{i}.png"), (x0, y0, x1, y1))
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 96, "height": 96})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1 + i % 2, "iscrowd": 0,
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float((x1 - x0) * (y1 - y0)),
                     "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
    data = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "block"}]}
    json_file = os.path.join(root, "instances.json")
    with open(json_file, "w") as f:
        json.dump(data, f)
    return json_file, os.path.join(root, "images")


TINY = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.STEPS", "()", "SOLVER.BASE_LR", "0.001",
        "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "100",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "96", "DATALOADER.NUM_WORKERS", "0", "TEST.PRECISE_BN.ENABLED", "False",
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
        "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "SEED", "0"] + CPU


def _args(config, opts, eval_only=False):
    return RunOptions(config_file=os.path.join(ROOT, "configs", config), engine="detectron2",
                      num_gpus=1, num_machines=1, machine_rank=0, dist_url="auto", resume=False,
                      eval_only=eval_only, opts=list(opts))


def _finite_metrics(metrics, keys):
    for k in keys:
        assert isinstance(metrics[k], float) and 0.0 <= metrics[k] <= 100.0, (k, metrics[k])


def test_voc_train_two_iterations_then_eval_only(tmp_path):
    voc = make_tiny_voc(tmp_path / "VOCtiny")
    pkl = _converted(tmp_path)
    out = tmp_path / "runs" / "voc_r18_seed"
    opts = TINY + ["DATASETS.VOC", f"[['tiny_voc_trainval', '{voc}', 'trainval', 2007], "
                                   f"['tiny_voc_test', '{voc}', 'test', 2007]]",
                   "DATASETS.TRAIN", "('tiny_voc_trainval',)", "DATASETS.TEST", "('tiny_voc_test',)",
                   "MODEL.WEIGHTS", pkl, "OUTPUT_DIR", str(out)]
    metrics = main(_args("voc_r18_seed.yaml", opts))
    _finite_metrics(metrics, ("AP", "AP50", "AP75"))
    assert (out / "model_final.pth").is_file()
    record = json.loads((out / "metrics.json").read_text())
    assert record["engine"] == "detectron2" and record["weights"] == pkl
    assert "seed_det.results INFO] results:" in (out / "log.txt").read_text()  # the suite's records join Detectron2's

    final = str(out / "model_final.pth")
    again = main(_args("voc_r18_seed.yaml", opts[:-4] + ["MODEL.WEIGHTS", final, "OUTPUT_DIR", str(out)],
                       eval_only=True))
    _finite_metrics(again, ("AP", "AP50", "AP75"))
    rows = read_results(tmp_path / "runs" / "results_detection.csv")
    assert [r["mode"] for r in rows] == ["train", "eval-only"] and rows[1]["engine"] == "detectron2"
    assert json.loads((out / "metrics.json").read_text())["mode"] == "train"  # not replaced by the evaluation
    # TEST.EXPECTED_RESULTS is checked after an evaluation too (Detectron2's verify_results), not ignored
    expect = ["TEST.EXPECTED_RESULTS", "[['bbox', 'AP50', 101.0, 0.1]]"]
    again_opts = opts[:-4] + ["MODEL.WEIGHTS", final, "OUTPUT_DIR", str(out)] + expect
    # OUTPUT_DIR reuse is loud, as on the torchvision engine: an evaluation is not replaced silently
    with pytest.raises(SeedError, match=r"already holds a run \(eval_metrics.json\).*--overwrite"):
        main(_args("voc_r18_seed.yaml", again_opts, eval_only=True))
    with pytest.raises(SystemExit):
        main(dataclasses.replace(_args("voc_r18_seed.yaml", again_opts, eval_only=True), overwrite=True))
    assert len(read_results(tmp_path / "runs" / "results_detection.csv")) == 2
    assert glob.glob(str(out / "previous-*" / "eval_metrics.json"))  # the first evaluation, moved aside
    with pytest.raises(SeedError, match=r"already holds a run \(metrics.json.*--resume.*--overwrite"):
        main(_args("voc_r18_seed.yaml", opts))  # Detectron2 would train over the finished run
    assert json.loads((out / "metrics.json").read_text())["mode"] == "train"


def test_fine_tunings_in_one_process_each_log_to_their_own_folder(tmp_path):
    """The benchmarks and the demo fine-tune many times in one process: Detectron2's handlers of a
    finished run must not write a later run's lines into its log.txt, nor repeat console lines."""
    import logging
    voc = make_tiny_voc(tmp_path / "VOCtiny")
    data = ["DATASETS.VOC", f"[['tiny_voc_trainval', '{voc}', 'trainval', 2007], ['tiny_voc_test', '{voc}', 'test', 2007]]",
            "DATASETS.TRAIN", "('tiny_voc_trainval',)", "DATASETS.TEST", "('tiny_voc_test',)",
            "MODEL.WEIGHTS", _converted(tmp_path)]
    handlers = {name: len(logging.getLogger(name).handlers) for name in ("detectron2", "fvcore")}
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        main(_args("voc_r18_seed.yaml", TINY + data + ["OUTPUT_DIR", str(out)]))
    assert str(first) in (first / "log.txt").read_text()
    assert str(second) in (second / "log.txt").read_text()
    assert str(second) not in (first / "log.txt").read_text()
    assert {name: len(logging.getLogger(name).handlers) for name in handlers} == handlers


def test_coco_json_mask_rcnn_two_iterations(tmp_path, monkeypatch):
    """Also runs COCO evaluation the way it must work without Detectron2's compiled extension."""
    monkeypatch.setattr(d2_engine, "fast_coco_eval_available", lambda: False)
    built = []
    real_build = d2_engine.d2_evaluator
    monkeypatch.setattr(d2_engine, "d2_evaluator", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    json_file, images = make_tiny_coco(tmp_path / "coco_tiny")
    pkl = _converted(tmp_path)
    out = tmp_path / "runs" / "coco"
    opts = TINY + ["DATASETS.COCO_JSON", f"[['tiny_coco', '{json_file}', '{images}']]",
                   "DATASETS.TRAIN", "('tiny_coco',)", "DATASETS.TEST", "('tiny_coco',)",
                   "MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.WEIGHTS", pkl, "OUTPUT_DIR", str(out)]
    metrics = main(_args("coco_r18_1x_seed.yaml", opts))
    _finite_metrics(metrics, ("AP", "AP50", "AP75", "mask_AP"))
    assert "segm" in metrics["per_dataset"]["tiny_coco"]
    assert built and not built[0]._use_fast_impl


# ----------------------------------------------------------------------------------------------
# Bad input fails before training
# ----------------------------------------------------------------------------------------------

def test_depth_mismatch_refused_before_training(tmp_path):
    voc = make_tiny_voc(tmp_path / "VOCtiny", n=2)
    data = ["DATASETS.VOC", f"[['tiny_voc_trainval', '{voc}', 'trainval', 2007]]",
            "DATASETS.TRAIN", "('tiny_voc_trainval',)", "DATASETS.TEST", "('tiny_voc_trainval',)",
            "OUTPUT_DIR", str(tmp_path / "out")]
    with pytest.raises(SeedError, match="ResNet-34 but the config builds ResNet-18"):
        main(_args("voc_r18_seed.yaml", TINY + data + ["MODEL.WEIGHTS", _converted(tmp_path, "resnet34")]))
    with pytest.raises(SeedError, match="ResNet-18 but the config builds ResNet-34"):
        main(_args("voc_r34_seed.yaml", TINY + data + ["MODEL.WEIGHTS", _converted(tmp_path, "resnet18")]))
    assert not (tmp_path / "out").exists()  # nothing started


def test_a_diverging_run_raises_the_projects_non_finite_loss_error(tmp_path):
    # The benchmarks record a diverged seed as an outcome; they recognise it by this error, on either engine.
    from seed_core.errors import NonFiniteLossError

    voc = make_tiny_voc(tmp_path / "VOCtiny", n=2)
    data = ["DATASETS.VOC", f"[['tiny_voc_trainval', '{voc}', 'trainval', 2007]]",
            "DATASETS.TRAIN", "('tiny_voc_trainval',)", "DATASETS.TEST", "('tiny_voc_trainval',)",
            "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.WEIGHTS", _converted(tmp_path),
            "SOLVER.BASE_LR", "1e12", "SOLVER.WARMUP_ITERS", "0", "SOLVER.MAX_ITER", "20"]
    with pytest.raises(NonFiniteLossError, match="not finite.*Lower SOLVER.BASE_LR"):
        main(_args("voc_r18_seed.yaml", TINY + data))


def test_unconverted_pth_refused_by_detectron2_engine(tmp_path):
    voc = make_tiny_voc(tmp_path / "VOCtiny", n=2)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    opts = TINY + ["DATASETS.VOC", f"[['tiny_voc_trainval', '{voc}', 'trainval', 2007]]",
                   "DATASETS.TRAIN", "('tiny_voc_trainval',)", "DATASETS.TEST", "('tiny_voc_trainval',)",
                   "MODEL.WEIGHTS", str(tmp_path / "r18.pth"), "OUTPUT_DIR", str(tmp_path / "out")]
    with pytest.raises(SeedError, match="not a Detectron2 checkpoint. Convert it first"):
        main(_args("voc_r18_seed.yaml", opts))


def test_missing_dataset_root_names_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    with pytest.raises(SeedError, match="DETECTRON2_DATASETS"):
        main(_args("voc_r18_random.yaml", CPU + ["OUTPUT_DIR", str(tmp_path / "out")]))


def test_same_validation_and_decoder_as_the_torchvision_engine(tmp_path):
    """A bad COCO json is refused before Detectron2 starts (the same preflight as the torchvision
    engine), and Detectron2's mapper reads images through seed_core.images (16-bit, EXIF, sizes)."""
    from seed_core.errors import DatasetError
    from seed_det.engines.d2.mapper import DecodingMapper

    json_file, images = make_tiny_coco(tmp_path / "coco_bad")
    data = json.load(open(json_file))
    data["images"][1]["id"] = data["images"][0]["id"]
    json.dump(data, open(json_file, "w"))
    out = tmp_path / "runs" / "bad"
    opts = TINY + ["DATASETS.COCO_JSON", f"[['bad_coco', '{json_file}', '{images}']]",
                   "DATASETS.TRAIN", "('bad_coco',)", "DATASETS.TEST", "('bad_coco',)",
                   "MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(out)]
    with pytest.raises(DatasetError, match=r"image id 1 is used twice \(0\.png and 1\.png\)"):
        main(_args("coco_r18_1x_random.yaml", opts))
    assert not out.exists()

    png = tmp_path / "deep.png"
    Image.fromarray(np.full((96, 64), 32768, dtype=np.uint16)).save(png)
    record = {"file_name": str(png), "image_id": 5, "height": 96, "width": 64, "annotations": []}
    mapper = DecodingMapper(_cfg("coco_r18_1x_random.yaml", "INPUT.MIN_SIZE_TEST", "64",
                                 "INPUT.MAX_SIZE_TEST", "200"), is_train=False)
    image = mapper(record)["image"]
    assert tuple(image.shape) == (3, 96, 64) and int(image.max()) == 128  # 16 bits scaled, not saturated
    with pytest.raises(DatasetError, match=r"deep\.png \(image id 5\) is 64x96 .* says 96x96"):
        mapper(dict(record, width=96))


# ----------------------------------------------------------------------------------------------
# The torchvision engine computes what Detectron2 computes
# ----------------------------------------------------------------------------------------------

def _model_cfgs(path):
    """(torchvision engine, Detectron2) configs of a demo detector; no datasets: only models are built."""
    from seed_det.config import get_det_cfg, merge_det_config

    return merge_det_config(get_det_cfg(), path, CPU), merge_det_config(get_d2_cfg(), path, CPU)


@pytest.mark.parametrize("config", ["digits_r18_fpn.yaml", "digits_r18_c4.yaml"])
def test_torchvision_engine_anchors_equal_detectron2s(config):
    from detectron2.modeling.anchor_generator import build_anchor_generator
    from torchvision.models.detection.image_list import ImageList

    from seed_det.engines.tv.model import build_model as build_tv_model

    path = os.path.join(ROOT, "configs", "demo", config)
    tv_cfg, d2_cfg = _model_cfgs(path)
    tv_generator = build_tv_model(tv_cfg).rpn.anchor_generator
    d2_generator = build_anchor_generator(d2_cfg,
                                          [ShapeSpec(stride=s) for s in tv_generator.strides])
    height, width = 160, 192  # P6 is 3 x 3 on it: its stride is not the image size over the grid
    feats = [torch.zeros(1, 1, -(-height // s), -(-width // s)) for s in tv_generator.strides]
    expected = torch.cat([boxes.tensor for boxes in d2_generator(feats)])
    got = tv_generator(ImageList(torch.zeros(1, 3, height, width), [(height, width)]), feats)[0]
    assert got.shape == expected.shape and torch.allclose(got, expected)


def test_torchvision_engine_box_head_losses_equal_detectron2s():
    from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    from seed_det.engines.tv.model import build_model as build_tv_model

    path = os.path.join(ROOT, "configs", "demo", "digits_r18_fpn.yaml")
    tv_cfg, d2_cfg = _model_cfgs(path)
    k = d2_cfg.MODEL.ROI_HEADS.NUM_CLASSES
    d2_outputs = FastRCNNOutputLayers(d2_cfg, ShapeSpec(channels=8))
    tv_heads = build_tv_model(tv_cfg).roi_heads
    torch.manual_seed(0)
    n = 12
    proposals = torch.cat([torch.rand(n, 2) * 50, torch.rand(n, 2) * 50 + 60], dim=1)
    gt = proposals + torch.randn(n, 4) * 4
    d2_classes = torch.randint(0, k + 1, (n,))  # k is background in Detectron2
    d2_classes[:3] = torch.tensor([k, 0, k - 1])
    scores, d2_deltas = torch.randn(n, k + 1), torch.randn(n, 4 * k) * 0.3
    instances = Instances((200, 200), proposal_boxes=Boxes(proposals), gt_boxes=Boxes(gt), gt_classes=d2_classes)
    with EventStorage():  # Detectron2 logs the classification accuracy
        expected = d2_outputs.losses((scores, d2_deltas), [instances])

    # torchvision puts background first: class c of Detectron2 is c + 1, background k is 0.
    tv_labels = torch.where(d2_classes == k, 0, d2_classes + 1)
    tv_scores = torch.cat([scores[:, k:], scores[:, :k]], dim=1)
    tv_deltas = torch.cat([torch.zeros(n, 4), d2_deltas], dim=1)
    targets = tv_heads.box_coder.encode_single(gt, proposals)
    got = tv_heads._box_losses(tv_scores, tv_deltas, tv_labels, targets)
    assert got["loss_classifier"].item() == pytest.approx(expected["loss_cls"].item(), rel=1e-5)
    assert got["loss_box_reg"].item() == pytest.approx(expected["loss_box_reg"].item(), rel=1e-5)


# A trained Detectron2 detector in the torchvision engine, and one training step in each engine

DETECTORS = [("demo", "digits_r18_fpn.yaml"), ("demo", "digits_r18_fpn_mask.yaml"), ("demo", "digits_r18_c4.yaml"),
             ("", "voc_r18_seed.yaml"), ("", "coco_r18_fpn_1x_seed.yaml"), ("", "coco_r18_1x_seed.yaml")]
SMALL = ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96", "INPUT.MIN_SIZE_TRAIN", "(96,)",
         "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.FORMAT", "RGB"]


def _detector_cfgs(folder, config, *opts):
    from seed_det.config import get_det_cfg, merge_det_config

    path = os.path.join(ROOT, "configs", folder, config)
    opts = tuple(CPU) + tuple(SMALL) + tuple(opts)
    return merge_det_config(get_det_cfg(), path, opts), merge_det_config(get_d2_cfg(), path, opts)


def _confident_d2_detector(d2_cfg):
    """A Detectron2 model whose RPN and predictors give well separated scores (a freshly initialised
    one scores every box about the same, and ties would make the comparison meaningless)."""
    torch.manual_seed(0)
    model = build_model(d2_cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("objectness_logits.weight", "cls_score.weight")):
                p.mul_(20)
            elif name.endswith(("anchor_deltas.weight", "bbox_pred.weight", "mask_head.predictor.weight")):
                p.mul_(20)
        for m in model.modules():
            if hasattr(m, "running_var") and m.running_var is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2)
    return model


def _scene(seed=0):
    """A 96 px RGB image with a few bright blocks on a noisy background, 0..255."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, 96, 96, generator=g) * 60
    for x, y, s in ((8, 10, 30), (50, 20, 24), (30, 60, 20)):
        image[:, y:y + s, x:x + s] += 150
    return image.round().clamp(0, 255)


@pytest.mark.parametrize("folder,config", DETECTORS)
def test_a_detectron2_detector_gives_the_same_detections_in_the_torchvision_engine(tmp_path, folder, config):
    """Its model_final.pth, as MODEL.WEIGHTS of the torchvision engine: every tensor loads (the
    predictors' background moved first) and inference returns Detectron2's boxes, scores and classes."""
    from seed_det.engines.tv.model import build_model as build_tv_model, set_input_sizes
    from seed_det.engines.tv.weights import load_weights

    tv_cfg, d2_cfg = _detector_cfgs(folder, config)
    d2_model = _confident_d2_detector(d2_cfg).eval()
    DetectionCheckpointer(d2_model, save_dir=str(tmp_path)).save("model_final")
    tv_model = build_tv_model(tv_cfg).eval()
    report = load_weights(tv_model, str(tmp_path / "model_final.pth"), detector=True)
    assert not report["ignored"]
    set_input_sizes(tv_model, tv_cfg, train=False)
    image = _scene()
    channels = image if d2_cfg.INPUT.FORMAT == "RGB" else image.flip(0)
    with torch.no_grad():
        expected = d2_model([{"image": channels.to(torch.uint8), "height": 96, "width": 96}])[0]["instances"]
        got = tv_model([channels])[0]
    assert len(expected) > 5, "the comparison needs detections"
    assert len(got["boxes"]) == len(expected)
    assert torch.allclose(got["boxes"], expected.pred_boxes.tensor, atol=1e-3)
    assert torch.allclose(got["scores"], expected.scores, atol=1e-5)
    assert torch.equal(got["labels"] - 1, expected.pred_classes)
    if d2_cfg.MODEL.MASK_ON:
        agree = ((got["masks"][:, 0] > 0.5) == expected.pred_masks).float().mean().item()
        assert agree > 0.99, agree


def test_a_backbone_is_refused_for_evaluation_and_a_detector_for_other_classes_keeps_what_fits(tmp_path):
    from seed_det.engines.tv.model import build_model as build_tv_model
    from seed_det.engines.tv.weights import WeightsError, load_weights

    tv_cfg, d2_cfg = _detector_cfgs("demo", "digits_r18_fpn.yaml")
    DetectionCheckpointer(build_model(d2_cfg), save_dir=str(tmp_path)).save("model_final")
    weights = str(tmp_path / "model_final.pth")
    other, _ = _detector_cfgs("demo", "digits_r18_fpn.yaml", "MODEL.ROI_HEADS.NUM_CLASSES", "3")
    with pytest.raises(WeightsError, match=r"does not fit .*cls_score"):
        load_weights(build_tv_model(other), weights, detector=True)
    report = load_weights(build_tv_model(other), weights)  # fine-tuning on another dataset
    assert len(report["ignored"]) == 4 and all("box_predictor" in p for p in report["ignored"])
    assert any(k.startswith("rpn.head.") for k in report["loaded"])
    with pytest.raises(WeightsError, match="holds a backbone only"):
        load_weights(build_tv_model(tv_cfg), _converted(tmp_path), detector=True)


@pytest.mark.parametrize("config", ["digits_r18_fpn.yaml", "digits_r18_c4.yaml"])
def test_same_weights_and_batch_give_detectron2s_losses_and_gradients(config):
    """Sampling every anchor and every proposal removes the only randomness of a training step:
    then both engines must compute the same four losses and the same gradient for every tensor."""
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    from seed_det.engines.tv.d2_names import d2_detector_state
    from seed_det.engines.tv.model import build_model as build_tv_model, set_input_sizes
    from seed_det.engines.tv.weights import load_d2_detector

    every = ["MODEL.RPN.BATCH_SIZE_PER_IMAGE", "1000000", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "1000000"]
    tv_cfg, d2_cfg = _detector_cfgs("demo", config, *every)
    torch.manual_seed(0)
    d2_model = build_model(d2_cfg).train()
    tv_model = build_tv_model(tv_cfg).train()
    load_d2_detector(tv_model, d2_model.state_dict(), "the Detectron2 model", complete=True)
    set_input_sizes(tv_model, tv_cfg, train=True)
    images, targets, inputs = [], [], []
    for i, boxes in enumerate(([[8, 10, 38, 40], [50, 20, 74, 44]], [[30, 60, 50, 80]])):
        image, boxes = _scene(i), torch.tensor(boxes, dtype=torch.float32)
        classes = torch.tensor([3, 7][:len(boxes)])
        images.append(image)
        targets.append({"boxes": boxes, "labels": classes + 1})  # torchvision: 0 is background
        inputs.append({"image": image.to(torch.uint8),
                       "instances": Instances((96, 96), gt_boxes=Boxes(boxes), gt_classes=classes)})
    with EventStorage():
        expected = d2_model(inputs)
    got = tv_model(images, targets)
    names = {"loss_rpn_cls": "loss_objectness", "loss_rpn_loc": "loss_rpn_box_reg", "loss_cls": "loss_classifier",
             "loss_box_reg": "loss_box_reg"}
    for d2_name, tv_name in names.items():
        assert got[tv_name].item() == pytest.approx(expected[d2_name].item(), rel=1e-4, abs=1e-7), d2_name
    sum(expected.values()).backward()
    sum(got.values()).backward()
    d2_grads = {k: p.grad for k, p in d2_model.named_parameters() if p.grad is not None}
    mapped, _ = d2_detector_state(d2_grads, tv_model)
    tv_grads = {k: p.grad for k, p in tv_model.named_parameters() if p.grad is not None}
    assert set(tv_grads) == set(mapped)
    for k, g in tv_grads.items():
        assert torch.allclose(g, mapped[k], rtol=1e-3, atol=1e-6 * (1 + mapped[k].abs().max().item())), k


@pytest.mark.parametrize("opts", [
    ("SOLVER.STEPS", "(20, 30)"),
    ("SOLVER.STEPS", "(4,)"),  # a step inside warmup: the ramp ends at the stepped-down rate
    ("SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR"),
    ("SOLVER.STEPS", "(20,)", "SOLVER.WARMUP_METHOD", "constant"),
    ("SOLVER.STEPS", "(20,)", "SOLVER.WARMUP_ITERS", "60"),  # warmup longer than the run
])
def test_torchvision_engine_lr_schedule_equals_detectron2s(opts):
    from detectron2.solver import build_lr_scheduler

    from seed_det.engines.tv.solver import lr_factor

    base = ("SOLVER.MAX_ITER", "40", "SOLVER.BASE_LR", "0.1", "SOLVER.WARMUP_FACTOR", "0.1",
            "SOLVER.WARMUP_ITERS", "10")
    tv_cfg, d2_cfg = _detector_cfgs("demo", "digits_r18_fpn.yaml", *base, *opts)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_lr_scheduler(d2_cfg, optimizer)
    for it in range(40):
        assert 0.1 * lr_factor(tv_cfg, it) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-6), it
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("bad_in", ["train", "test"])
def test_detectron2_skips_an_unreadable_training_image_and_refuses_one_to_test(tmp_path, bad_in, caplog):
    """The image policy of the torchvision engine (tests/seed_det/test_det_images.py) on Detectron2:
    training leaves out and counts an image that does not open, evaluation refuses it before work."""
    from conftest import write_bad_image
    from seed_core.images import UnreadableImageError
    from seed_det.engines.d2.mapper import DecodingMapper
    from seed_core.images import SkippedImages

    good, bad = make_tiny_voc(tmp_path / "good"), make_tiny_voc(tmp_path / "bad")
    write_bad_image(os.path.join(bad, "JPEGImages", "000003.jpg"), "zero-byte")
    train, test = (bad, good) if bad_in == "train" else (good, bad)
    out = tmp_path / "runs" / "out"
    opts = TINY + ["DATASETS.VOC", f"[['bad_voc_train', '{train}', 'trainval', 2007], "
                                   f"['bad_voc_test', '{test}', 'test', 2007]]",
                   "DATASETS.TRAIN", "('bad_voc_train',)", "DATASETS.TEST", "('bad_voc_test',)",
                   "DATALOADER.MAX_BAD_FRACTION", "0.25", "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(out)]
    if bad_in == "test":
        with pytest.raises(UnreadableImageError, match=r"test set 'bad_voc_test': 1 of 4 images cannot be read.*"
                                                       r"000003\.jpg cannot be read: the file is empty"):
            main(_args("voc_r18_random.yaml", opts))
        assert not out.exists()
        return
    with caplog.at_level("WARNING"):
        _finite_metrics(main(_args("voc_r18_random.yaml", opts)), ("AP", "AP50"))
    assert "skipping 1 of 4 images" in (out / "log.txt").read_text()
    assert caplog.text.count("skipping 1 of 4 images") == 1, caplog.text  # the preflight's scan, once
    # an image whose decoding fails later: the mapper skips it in training (Detectron2 maps another), not in testing
    cfg = _cfg("voc_r18_random.yaml")
    record = {"file_name": write_bad_image(tmp_path / "cut.jpg", "truncated", size=(64, 64)), "image_id": 1,
              "height": 64, "width": 64, "annotations": []}
    skipped = SkippedImages(total=4, max_fraction=0.25, what="training set 't'", key="DATALOADER.MAX_BAD_FRACTION")
    assert DecodingMapper(cfg, is_train=True, skipped=skipped)(record) is None and len(skipped) == 1
    with pytest.raises(UnreadableImageError, match=r"cut\.jpg cannot be read: it is truncated"):
        DecodingMapper(cfg, is_train=False)(record)


D2_BROKEN_RANK = """
import sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import time
from detectron2.utils import comm
import seed_det.engines.d2.engine as d2_engine


def broken(cfg, options):
    if comm.get_rank() == 1:
        {{}}["a key that is not there"]  # a bug, not the user's fault: not a SeedError
    time.sleep(60)  # rank 0 waits: the launcher stops it once rank 1 has failed


d2_engine._train_or_test = broken  # made at import: the processes Detectron2 spawns import this script too
if __name__ == "__main__":
    from conftest import load_script
    sys.exit(load_script("tools/train_net.py").main())
"""


def test_an_unexpected_error_of_one_of_two_processes_is_one_line(tmp_path):
    """Detectron2's own launcher (2 processes, gloo on the CPU): the failing rank's one line, not the
    traceback text torch.multiprocessing wraps in its exception."""
    voc = make_tiny_voc(tmp_path / "VOCtiny")
    runner = tmp_path / "broken_rank.py"
    runner.write_text(D2_BROKEN_RANK.format(root=ROOT, tests=os.path.join(ROOT, "tests")))
    out = tmp_path / "out"
    opts = TINY + ["DATASETS.VOC", f"[['tiny_voc_trainval', '{voc}', 'trainval', 2007]]",
                   "DATASETS.TRAIN", "('tiny_voc_trainval',)", "DATASETS.TEST", "('tiny_voc_trainval',)",
                   "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(out)]
    res = subprocess.run([sys.executable, str(runner), "--config", os.path.join(ROOT, "configs", "voc_r18_random.yaml"),
                          "--engine", "detectron2", "--num-gpus", "2", *opts], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = out / "log.txt"
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.strip().splitlines()[-1] == (f"error: the process of rank 1 failed: KeyError: "
                                                   f"'a key that is not there' (details: {log})")
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "a key that is not there" in log.read_text()


# ----------------------------------------------------------------------------------------------
# Several processes on the CPU (gloo)
# ----------------------------------------------------------------------------------------------

def test_syncbn_for_cpu_processes_keeps_every_tensor_and_name():
    from seed_det.engines.d2.processes import sync_batchnorm_for_cpu
    from seed_det.engines.tv.layers import SyncBatchNorm2d

    model = build_model(_cfg("voc_r18_fpn_seed.yaml"))  # SyncBN in backbone and FPN
    for m in model.modules():
        if isinstance(m, torch.nn.SyncBatchNorm):
            m.running_mean.uniform_(-1, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert n > 0 and sync_batchnorm_for_cpu(model) == n
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert sum(isinstance(m, SyncBatchNorm2d) for m in model.modules()) == n
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.slow
def test_two_cpu_processes_train_and_evaluate(tmp_path, shapes_det):
    """--num-gpus 2 without a GPU: Detectron2's launcher over gloo, DDP without device ids, SyncBN
    over the two processes, evaluation sharded and gathered on the main process."""
    from conftest import shapes_det_opts

    out = tmp_path / "runs" / "out"
    tiny = TINY + ["MODEL.ROI_HEADS.NUM_CLASSES", "3", "SOLVER.MAX_ITER", "3"]
    opts = tiny + shapes_det_opts("voc_r18_seed.yaml", shapes_det, out, _converted(tmp_path))
    metrics = main(dataclasses.replace(_args("voc_r18_seed.yaml", opts), num_gpus=2))
    _finite_metrics(metrics, ("AP", "AP50", "AP75"))
    assert json.loads((out / "metrics.json").read_text())["metrics"] == metrics
    assert len(read_results(tmp_path / "runs" / "results_detection.csv")) == 1  # one row, from the main process
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [r for r in logged if "total_loss" in r]  # the ranks' mean, as Detectron2 logs it
    assert losses and all(np.isfinite(r[k]) for r in losses for k in r if k.startswith("loss")), logged
    log = (out / "log.txt").read_text()
    assert "World size: 2" in log and "run as SyncBatchNorm2d" in log
    assert "Start inference on 1 batches" in log  # 2 test images: one per process
    # the shards gathered on the main process score as one process scoring every image
    single = main(_args("voc_r18_seed.yaml", tiny + shapes_det_opts("voc_r18_seed.yaml", shapes_det, tmp_path / "single",
                                                                    str(out / "model_final.pth")), eval_only=True))
    for k in ("AP", "AP50", "AP75"):
        assert single[k] == pytest.approx(metrics[k], abs=1e-9), k
