"""Bad detection inputs are refused before any work, naming the file and the object: COCO json and
VOC annotations, training sets left empty, --eval-only weights, the solver batch, the results file,
the converter's output, and a non-finite loss in the torchvision engine."""
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from seed_core.errors import CheckpointError, ConfigError, DatasetError, SeedError, TrainingError
from seed_det.convert import convert_to_d2
from seed_det.data import DatasetSpec
from seed_det.data.catalog import validate_dataset
from seed_det.engines import RunOptions, main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
SIZE = 16


def _coco(tmp_path, edit=lambda data: None, n=2):
    """A valid two-image COCO json (16x16 PNGs, one box each), then `edit` applied to its dict."""
    images = tmp_path / "images"
    images.mkdir(parents=True, exist_ok=True)
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for i in range(n):
        Image.fromarray(np.full((SIZE, SIZE, 3), 40 * i, dtype=np.uint8)).save(images / f"{i}.png")
        data["images"].append({"id": i + 1, "file_name": f"{i}.png", "width": SIZE, "height": SIZE})
        data["annotations"].append({"id": 10 + i, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                                    "bbox": [2, 2, 8, 8], "area": 64.0})
    edit(data)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return DatasetSpec("tiny", "coco", image_root=str(images), json_file=str(path))


def _set(key, value, index=0, where="images"):
    def edit(data):
        if value is None:
            data[where][index].pop(key)
        else:
            data[where][index][key] = value
    return edit


def _duplicate_id(data):
    data["images"][1]["id"] = 1
    data["annotations"][1]["image_id"] = 1


def _all_crowd(data):
    for a in data["annotations"]:
        a["iscrowd"] = 1


def _same_file_twice(data):
    data["images"][1]["file_name"] = "0.png"


def _repeat(where, key):
    def edit(data):
        if where == "categories":
            data["categories"].append({"id": 2, "name": "thing"} if key == "name" else {"id": 1, "name": "other"})
        else:
            data[where][1][key] = data[where][0][key]
    return edit


@pytest.mark.parametrize("edit,message", [
    (_set("width", 20, index=1), r"1\.png \(image id 2\) is 16x16 .* says 20x16"),
    (_duplicate_id, r"image id 1 is used twice \(0\.png and 1\.png\)"),
    (_set("image_id", 99, where="annotations"), r"annotation 10 refers to image id 99, which is not in 'images'"),
    (_set("height", None), r"image id 1 \(0\.png\) lacks a positive 'height' and 'width'"),
    (_set("bbox", None, where="annotations"), r"annotation 10 \(image id 1, 0\.png\) has no \[x, y, width, height\]"),
    (_set("bbox", [20, 20, 4, 4], where="annotations"),
     r"annotation 10 of image id 1 \(0\.png\): box \[20, 20, 24, 24\] lies entirely outside the 16x16 image"),
    (_all_crowd, r"training set 'tiny' .* has no box left to train on after dropping crowd annotations"),
    # repeats: never counted twice in a metric, never a phantom class
    (_same_file_twice, r"image file 0\.png is listed twice \(image ids 1 and 2\)"),
    (_repeat("annotations", "id"), r"annotation id 10 is used twice"),
    (_repeat("categories", "name"), r"category name 'thing' is used twice"),
    (_repeat("categories", "id"), r"category id 1 is used twice"),
])
def test_coco_json_is_validated_when_read(tmp_path, edit, message):
    assert len(validate_dataset(_coco(tmp_path / "ok"), for_training=True).records) == 2
    with pytest.raises(DatasetError, match=message):
        validate_dataset(_coco(tmp_path, edit), for_training=True)


def _voc(tmp_path, edit=lambda obj, size: None):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (SIZE, SIZE)).save(tmp_path / "JPEGImages" / "a.jpg")
    ann = ET.Element("annotation")
    size = ET.SubElement(ann, "size")
    for tag in ("width", "height"):
        ET.SubElement(size, tag).text = str(SIZE)
    obj = ET.SubElement(ann, "object")
    ET.SubElement(obj, "name").text = "dog"
    bnd = ET.SubElement(obj, "bndbox")
    for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (2, 2, 9, 9)):
        ET.SubElement(bnd, tag).text = str(v)
    edit(obj, size)
    if size.find("width") is None:
        ann.remove(size)
    ET.ElementTree(ann).write(tmp_path / "Annotations" / "a.xml")
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    return DatasetSpec("vtiny", "voc", dirname=str(tmp_path), split="train")


def _drop(tag):
    def edit(obj, size):
        parent = size if tag == "width" else obj
        parent.remove(parent.find(tag))
    return edit


def _swap_x(obj, size):
    obj.find("bndbox/xmin").text, obj.find("bndbox/xmax").text = "9", "2"


@pytest.mark.parametrize("edit,message", [
    (_drop("width"), r"a\.xml has no <size>"),
    (_drop("bndbox"), r"a\.xml, object 0 \('dog'\): no complete <bndbox>"),
    (_swap_x, r"a\.xml, object 0 \('dog'\): box \[9\.0, 2\.0, 2\.0, 9\.0\] has xmax < xmin"),
])
def test_voc_xml_is_validated_when_read(tmp_path, edit, message):
    assert validate_dataset(_voc(tmp_path / "ok"), for_training=True).num_annotations == 1
    with pytest.raises(DatasetError, match=message):
        validate_dataset(_voc(tmp_path, edit), for_training=True)


@pytest.mark.parametrize("split, classes, message", [
    ("a\nb\na\n", None, r"train\.txt lists image 'a' twice \(entries 1 and 3\)"),
    ("a\n", "dog\ncat\ndog\n", r"classes\.txt: class 'dog' is listed twice \(entries 1 and 3\)"),
    ("a\n", "dog\n\ncat\n", r"classes\.txt: entry 2 is blank"),
])
def test_voc_lists_with_repeats_are_refused(tmp_path, split, classes, message):
    spec = _voc(tmp_path)
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text(split)
    if split.count("b"):
        import shutil
        shutil.copy(tmp_path / "Annotations" / "a.xml", tmp_path / "Annotations" / "b.xml")
        shutil.copy(tmp_path / "JPEGImages" / "a.jpg", tmp_path / "JPEGImages" / "b.jpg")
    if classes:
        (tmp_path / "classes.txt").write_text(classes)
    with pytest.raises(DatasetError, match=message):
        validate_dataset(spec, for_training=True)
    (tmp_path / "classes.txt").write_text("dog\ncat\n\n")  # a trailing blank line is only the file's end
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    assert validate_dataset(spec, for_training=True).class_names == ["dog", "cat"]


def _args(opts, eval_only=False, resume=False):
    return RunOptions(os.path.join(ROOT, "configs", "voc_r18_random.yaml"), engine="torchvision", opts=opts,
                      resume=resume, eval_only=eval_only)


@pytest.fixture
def run_opts(tmp_path):
    """Overrides for a tiny COCO run whose output folder must stay absent when input is refused."""
    spec = _coco(tmp_path / "data")
    return ["MODEL.DEVICE", "cpu", "DATASETS.COCO_JSON", repr([["tiny", spec.json_file, spec.image_root]]),
            "DATASETS.TRAIN", "('tiny',)", "DATASETS.TEST", "('tiny',)", "MODEL.ROI_HEADS.NUM_CLASSES", "1",
            "OUTPUT_DIR", str(tmp_path / "runs" / "out")]


def _backbone_pkl(tmp_path):
    pth = tmp_path / "r18.pth"
    torch.save({k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}, pth)
    convert_to_d2(pth, tmp_path / "r18.pkl")
    return str(tmp_path / "r18.pkl")


def test_bad_run_inputs_fail_before_work(tmp_path, run_opts):
    out = tmp_path / "runs" / "out"
    with pytest.raises(SeedError, match="--eval-only needs MODEL.WEIGHTS"):
        main(_args(run_opts, eval_only=True))
    with pytest.raises(SeedError, match="holds a backbone only \\(no detection heads\\)"):
        main(_args(run_opts + ["MODEL.WEIGHTS", _backbone_pkl(tmp_path)], eval_only=True))
    with pytest.raises(ConfigError, match="SOLVER.IMS_PER_BATCH is 0"):
        main(_args(run_opts + ["SOLVER.IMS_PER_BATCH", "0"]))
    assert not out.exists()
    foreign = tmp_path / "runs" / "results_detection.csv"
    foreign.parent.mkdir()
    foreign.write_text("name,score\nmine,1\n")
    with pytest.raises(SeedError, match="not a results file of this project"):
        main(_args(run_opts))
    assert foreign.read_text() == "name,score\nmine,1\n"
    foreign.unlink()
    bad = _coco(tmp_path / "bad", _all_crowd)
    with pytest.raises(DatasetError, match="no box left to train on"):  # the sampler used to loop forever
        main(_args(run_opts + ["DATASETS.COCO_JSON", repr([["tiny", bad.json_file, bad.image_root]])]))
    assert not out.exists()


def test_converter_output_must_be_a_new_pkl_file(tmp_path):
    pkl = _backbone_pkl(tmp_path)
    pth = str(tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        convert_to_d2(pth, tmp_path)
    before = os.path.getmtime(pkl)
    with pytest.raises(CheckpointError, match="exists already; pass --overwrite"):
        convert_to_d2(pth, pkl)
    assert os.path.getmtime(pkl) == before
    convert_to_d2(pth, pkl, overwrite=True)
    tool = os.path.join(ROOT, "tools", "convert_to_d2.py")
    res = subprocess.run([sys.executable, tool, pth, str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 2 and "is a directory" in res.stderr and "Traceback" not in res.stderr


class _NanDetector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, images, targets):
        return {"loss_classifier": self.w * float("nan"), "loss_box_reg": self.w}


def test_non_finite_detection_loss_names_the_iteration(tmp_path, run_opts, monkeypatch):
    from seed_det.config import load_det_config
    from seed_det.data.torch_dataset import DetectionDataset
    from seed_det.engines.tv import trainer as tv_trainer

    cfg = load_det_config(os.path.join(ROOT, "configs", "voc_r18_random.yaml"),
                          run_opts + ["SOLVER.IMS_PER_BATCH", "1", "DATALOADER.NUM_WORKERS", "0"])
    data = DetectionDataset(validate_dataset(_coco(tmp_path / "data"), for_training=True), train=True)
    os.makedirs(cfg.OUTPUT_DIR)
    trainer = tv_trainer.Trainer(cfg, _NanDetector(), data, torch.device("cpu"))
    monkeypatch.setattr(tv_trainer, "set_input_sizes", lambda *a, **k: None)  # the stand-in has no transform
    with pytest.raises(TrainingError, match=r"detection loss is not finite \(nan\) at iteration 0 .*loss_classifier"):
        trainer.train()
