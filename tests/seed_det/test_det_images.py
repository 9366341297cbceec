"""The image policy of seed_core.images in detection (both engines read the same records): a
training set skips and counts unreadable images (DATALOADER.MAX_BAD_FRACTION), a test set refuses
them before any work, naming the file. The Detectron2 side: tests/seed_det/test_d2_engine.py."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BAD_IMAGE_KINDS, write_bad_image
from seed_core.errors import TooManyBadImagesError
from seed_core.images import UnreadableImageError
from seed_det.data import DatasetSpec
from seed_det.data.catalog import validate_dataset
from seed_det.data.torch_dataset import DetectionDataset
from seed_det.engines import RunOptions, main
from test_det_inputs import ROOT, SIZE


def _coco_with(tmp_path, bad_kind=None, n=4):
    """A tiny COCO set of `n` 16x16 PNGs, one box each; the last image replaced by a bad file of `bad_kind`."""
    images = tmp_path / "images"
    images.mkdir(parents=True, exist_ok=True)
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for i in range(n):
        name, size = f"{i}.jpg", SIZE
        if bad_kind and i == n - 1:
            size = 4 * SIZE  # a truncated JPEG keeps a whole header only when it holds more than a few bytes
            write_bad_image(images / name, bad_kind, size=(size, size))
        else:
            Image.fromarray(np.full((SIZE, SIZE, 3), 40 * i, dtype=np.uint8)).save(images / name)
        data["images"].append({"id": i + 1, "file_name": name, "width": size, "height": size})
        data["annotations"].append({"id": 10 + i, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                                    "bbox": [2, 2, 8, 8], "area": 64.0})
    (tmp_path / "instances.json").write_text(json.dumps(data))
    return DatasetSpec("tiny", "coco", image_root=str(images), json_file=str(tmp_path / "instances.json"))


@pytest.mark.parametrize("kind", BAD_IMAGE_KINDS)
def test_a_training_set_skips_and_counts_a_test_set_refuses(tmp_path, caplog, kind, monkeypatch):
    spec = _coco_with(tmp_path, kind)
    if kind != "truncated":  # found from the header, when the set is read
        with pytest.raises(TooManyBadImagesError, match=r"1 of 4 images cannot be read, more than "
                                                        r"DATALOADER.MAX_BAD_FRACTION = 0.2; for example .*3\.jpg"):
            validate_dataset(spec, for_training=True, max_bad_fraction=0.2)
        # the preflight's scan finds it, the dataset leaves it out: one header scan, one warning
        found = {}
        with caplog.at_level("WARNING"):
            dataset = validate_dataset(spec, for_training=True, max_bad_fraction=0.25, unreadable=found)
            assert list(found) == [os.path.join(spec.image_root, "3.jpg")] and "3.jpg cannot be read" in found[
                list(found)[0]]
            import seed_core.images
            monkeypatch.setattr(seed_core.images, "upright_size", lambda path: pytest.fail(f"{path} read again"))
            data = DetectionDataset(dataset, train=True, max_bad_fraction=0.25, unreadable=found)
        assert len(data) == 3 and caplog.text.count("skipping 1 of 4 images") == 1 and "3.jpg" in caplog.text
        monkeypatch.undo()
        caplog.clear()
        with caplog.at_level("WARNING"):  # without the preflight's findings, the dataset scans itself
            assert len(DetectionDataset(dataset, train=True, max_bad_fraction=0.25)) == 3
        assert caplog.text.count("skipping 1 of 4 images") == 1
    with pytest.raises(UnreadableImageError, match=r"test set 'tiny': 1 of 4 images cannot be read, and evaluation "
                                                   r"skips none .*3\.jpg cannot be read"):
        validate_dataset(spec, for_testing=True)


def test_an_image_whose_decoding_fails_in_training_is_replaced_and_counted(tmp_path):
    spec = _coco_with(tmp_path, "truncated")  # its header reads: it fails only when decoded
    dataset = validate_dataset(spec, for_training=True)
    data = DetectionDataset(dataset, train=True, flip_prob=0.0, max_bad_fraction=0.25)
    image, target = data[3]
    assert int(target["index"]) == 0 and float(image.mean()) == 0.0  # the next image, 0.jpg
    assert list(target["skipped"]) == [3] and "3.jpg cannot be read" in target["skipped"][3]  # for the trainer
    assert data[1][1]["skipped"] == {}
    counter = data.skipped_images()  # the trainer's: the set's size and limit
    counter.add(target["skipped"])
    assert len(counter) == 1
    strict = DetectionDataset(dataset, train=True, max_bad_fraction=0.0).skipped_images()
    with pytest.raises(TooManyBadImagesError, match=r"training set 'tiny': 1 of 4 images cannot be read, more than "
                                                    r"DATALOADER.MAX_BAD_FRACTION = 0.0; for example .*3\.jpg"):
        strict.add(target["skipped"])
    with pytest.raises(UnreadableImageError, match=r"3\.jpg cannot be read: it is truncated"):
        DetectionDataset(dataset, train=False)[3]  # evaluation never skips


def _tv_run(train, test, out, *opts, resume=False) -> RunOptions:
    """A tiny torchvision-engine run (32 px inputs) training on the set `train`, testing on `test`."""
    opts = ["MODEL.DEVICE", "cpu", "DATASETS.COCO_JSON", repr([["tr", train.json_file, train.image_root],
                                                                 ["te", test.json_file, test.image_root]]),
            "DATASETS.TRAIN", "('tr',)", "DATASETS.TEST", "('te',)", "MODEL.ROI_HEADS.NUM_CLASSES", "1",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.STEPS", "()",
            "INPUT.MIN_SIZE_TRAIN", "(32,)", "INPUT.MAX_SIZE_TRAIN", "32", "INPUT.MIN_SIZE_TEST", "32",
            "INPUT.MAX_SIZE_TEST", "32", "TEST.PRECISE_BN.ENABLED", "False", "OUTPUT_DIR", str(out), *opts]
    return RunOptions(os.path.join(ROOT, "configs", "voc_r18_random.yaml"), engine="torchvision", opts=opts,
                      resume=resume)


@pytest.mark.slow
@pytest.mark.parametrize("bad_in", ["train", "test"])
def test_the_torchvision_engine_trains_past_a_bad_image_and_refuses_one_to_test(tmp_path, bad_in, caplog):
    good, bad = _coco_with(tmp_path / "good"), _coco_with(tmp_path / "bad", "zero-byte")
    train, test = (bad, good) if bad_in == "train" else (good, bad)
    out = tmp_path / "runs" / "out"
    args = _tv_run(train, test, out, "DATALOADER.MAX_BAD_FRACTION", "0.25", "SOLVER.MAX_ITER", "1")
    if bad_in == "test":
        with pytest.raises(UnreadableImageError, match=r"test set 'te': 1 of 4 images cannot be read.*3\.jpg"):
            main(args)
        assert not out.exists()  # refused before any work
    else:
        with caplog.at_level("WARNING"):
            metrics = main(args)
        assert 0.0 <= metrics["AP"] <= 100.0
        assert "skipping 1 of 4 images" in (out / "log.txt").read_text()
        assert caplog.text.count("skipping 1 of 4 images") == 1, caplog.text  # the preflight's scan, once


@pytest.mark.slow
def test_the_torchvision_engine_counts_an_image_met_on_every_pass_once_over_workers_and_resumes(tmp_path, caplog):
    """One truncated image of 4, met on each of 4 passes over the data (2 batches of 2 a pass) by 2
    data-loading workers, is one skipped image: the run finishes, its log and checkpoint say 1, a
    resumed run goes on from 1; with no bad image allowed, the run stops naming the key."""
    bad, good = _coco_with(tmp_path / "bad", "truncated"), _coco_with(tmp_path / "good")
    out = tmp_path / "runs" / "out"
    opts = ("DATALOADER.MAX_BAD_FRACTION", "0.25", "DATALOADER.NUM_WORKERS", "2", "SOLVER.CHECKPOINT_PERIOD", "2")
    with caplog.at_level("WARNING"):
        main(_tv_run(bad, good, out, *opts, "SOLVER.MAX_ITER", "4"))
        main(_tv_run(bad, good, out, *opts, "SOLVER.MAX_ITER", "8", resume=True))
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, 9))
    met = [r["iteration"] for r in rows if r["skipped_images"]]
    assert met and all(r["skipped_images"] == 1 for r in rows[met[0] - 1:])  # 1 from its first meeting on
    assert met[0] <= 2 and caplog.text.count("3.jpg cannot be read") == 1, caplog.text  # warned once, both runs
    assert "(1 unreadable training image(s) skipped so far)" in (out / "log.txt").read_text()  # the resume
    ckpt = torch.load(out / "model_final.pth", weights_only=True)
    assert list(ckpt["skipped_images"]["errors"]) == [3]
    with pytest.raises(TooManyBadImagesError, match=r"training set 'tr': 1 of 4 images cannot be read, more than "
                                                    r"DATALOADER.MAX_BAD_FRACTION = 0.0; for example .*3\.jpg"):
        main(_tv_run(bad, good, tmp_path / "strict", "DATALOADER.MAX_BAD_FRACTION", "0.0", "SOLVER.MAX_ITER", "4"))
