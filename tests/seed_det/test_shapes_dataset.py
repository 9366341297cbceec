"""The generated shapes dataset: deterministic, consistent across its COCO and VOC forms."""
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from seed_det.data import DatasetSpec
from seed_det.data.synthetic.shapes import CLASSES as SHAPES_CLASSES, write_shapes_dataset
from seed_det.data.coco_json import load_coco_json
from seed_det.data.torch_dataset import segmentation_to_mask
from seed_det.data.voc import load_voc

from conftest import load_script


def _digest(folder):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shapes"))
    write_shapes_dataset(out, num_train=6, num_val=3, size=64, seed=3)
    return out


def test_same_seed_same_bytes_other_seed_differs(tmp_path, shapes):
    write_shapes_dataset(str(tmp_path / "a"), num_train=6, num_val=3, size=64, seed=3)
    write_shapes_dataset(str(tmp_path / "b"), num_train=6, num_val=3, size=64, seed=4)
    assert _digest(tmp_path / "a") == _digest(shapes)
    assert _digest(tmp_path / "b") != _digest(shapes)


def test_image_does_not_depend_on_split_size(tmp_path, shapes):
    write_shapes_dataset(str(tmp_path / "small"), num_train=2, num_val=1, size=64, seed=3)
    for name in ("train_000001.jpg", "val_000000.jpg"):
        a = np.asarray(Image.open(os.path.join(shapes, "JPEGImages", name)))
        b = np.asarray(Image.open(tmp_path / "small" / "JPEGImages" / name))
        assert np.array_equal(a, b)


def test_coco_json_boxes_masks_and_classes(shapes):
    with open(os.path.join(shapes, "annotations", "instances_train.json")) as f:
        data = json.load(f)
    assert [c["name"] for c in data["categories"]] == list(SHAPES_CLASSES)
    assert len(data["images"]) == 6
    per_image = {}
    for ann in data["annotations"]:
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
        mask = segmentation_to_mask(ann["segmentation"], 64, 64)
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        # Box, area and mask describe the same pixels.
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == [x, y, x + w, y + h]
        assert int(mask.sum()) == ann["area"]
        assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64
    assert all(n >= 2 for n in per_image.values()) and len(per_image) == 6
    assert {a["category_id"] for a in data["annotations"]} <= {1, 2, 3}


def test_shapes_are_drawn_where_annotated(shapes):
    with open(os.path.join(shapes, "annotations", "instances_val.json")) as f:
        data = json.load(f)
    img = data["images"][0]
    pixels = np.asarray(Image.open(os.path.join(shapes, "JPEGImages", img["file_name"]))).astype(float)
    for ann in (a for a in data["annotations"] if a["image_id"] == img["id"]):
        mask = segmentation_to_mask(ann["segmentation"], 64, 64).astype(bool)
        for _ in range(2):  # erode: JPEG blurs the edges of a shape
            mask = mask & np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
        inside = pixels[mask]
        assert len(inside) > 0
        # A shape is one flat colour: little spread inside the mask (the background is noisy).
        assert inside.std(axis=0).max() < 20


def test_voc_layout_matches_coco(shapes):
    main = os.path.join(shapes, "ImageSets", "Main")
    lists = {s: open(os.path.join(main, s + ".txt")).read().split() for s in ("train", "val", "trainval", "test")}
    assert lists["trainval"] == lists["train"] + lists["val"] and lists["test"] == lists["val"]
    voc = load_voc(DatasetSpec("v", "voc", dirname=shapes, split="train"))
    coco = load_coco_json(DatasetSpec("c", "coco", image_root=os.path.join(shapes, "JPEGImages"),
                                      json_file=os.path.join(shapes, "annotations", "instances_train.json")))
    assert voc.class_names == coco.class_names == list(SHAPES_CLASSES)
    for rv, rc in zip(voc.records, coco.records):
        assert rv["file_name"] == rc["file_name"]
        assert [(a["bbox"], a["category_id"]) for a in rv["annotations"]] == \
               [(a["bbox"], a["category_id"]) for a in rc["annotations"]]


def test_separate_test_split_and_cli(tmp_path):
    main = load_script("tools/make_shapes_dataset.py").main
    main([str(tmp_path), "--num-train", "2", "--num-val", "1", "--num-test", "2", "--size", "48", "--seed", "0"])
    test_ids = open(tmp_path / "ImageSets" / "Main" / "test.txt").read().split()
    assert test_ids == ["test_000000", "test_000001"]
    assert (tmp_path / "annotations" / "instances_test.json").is_file()
    assert main([str(tmp_path / "bad"), "--num-train", "0"]) == 2
