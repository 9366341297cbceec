"""benchmarks/transfer_claim.py at the tiny preset: pretraining and fine-tunings in one schedule,
the teacher converted as a reference, and the report."""
import json
import os

import pytest
import yaml

from tools.benchmarking.transfer_claim import Settings, claim_table, run_claim, write_report


@pytest.mark.slow
def test_tiny_claim_fine_tunes_every_init_and_writes_its_report(tmp_path):
    s = Settings(preset="tiny", work_dir=str(tmp_path / "work"), seeds=(0,), splits=("train",), detectors=("fpn",),
                 inits=("random", "seed", "teacher"), engines=("torchvision",), workers=0)
    result = run_claim(s)
    assert [r["init"] for r in result["rows"]] == ["random", "seed", "teacher"]
    for row in result["rows"]:
        assert len(row["runs"]) == 1 and 0.0 <= row["AP50"] <= 100.0
    assert os.path.isfile(tmp_path / "work" / "convert_teacher" / "teacher.pkl")  # the teacher as a reference
    assert set(result["knn"]) >= {"teacher", "seed", "random"}
    paths = write_report(result, tmp_path / "results")
    assert json.load(open(paths["json"]))["rows"] == json.loads(json.dumps(result["rows"]))
    assert "teacher (reference)" in claim_table(result)

    # With the MoCo-v2 student in the inits, a teacher that is that student (the tiny preset trains it
    # once) shares its fine-tunings instead of repeating them; the rest is reused from the first call.
    before = set(os.listdir(tmp_path / "work"))
    result = run_claim(Settings(**{**s.__dict__, "inits": ("random", "moco", "seed", "teacher")}))
    assert {d for d in os.listdir(tmp_path / "work") if d.startswith("det")} - before == \
        {"det_torchvision_fpn_train_2it_moco_s0"}  # the tiny preset: 2 iterations
    rows = {r["init"]: r for r in result["rows"]}
    assert rows["teacher"]["same_as"] == "moco" and rows["teacher"]["runs"] == rows["moco"]["runs"]
    assert "teacher (reference) = MoCo-v2 R18" in claim_table(result)
    write_report(result, tmp_path / "results")

    # R18-C4 sees the scenes upscaled 2x (train and test), in a stage of its own that says so.
    result = run_claim(Settings(**{**s.__dict__, "detectors": ("c4",), "inits": ("random",)}))
    stage = tmp_path / "work" / "det_torchvision_c4_train_2it_128px_random_s0"  # the tiny canvas: 64 px
    cfg = yaml.safe_load(open(stage / "config.yaml"))["INPUT"]
    assert (cfg["MIN_SIZE_TRAIN"], cfg["MAX_SIZE_TRAIN"], cfg["MIN_SIZE_TEST"], cfg["MAX_SIZE_TEST"]) == ([128], 128, 128, 128)
    assert result["rows"][0]["input_size"] == 128 and "upscaled to 128 px" in claim_table(result)


def test_the_report_compares_engines_cell_by_cell_against_the_seed_spread():
    def row(engine, init, ap50, std):
        return {"engine": engine, "detector": "fpn", "split": "train", "init": init, "AP50": ap50, "AP50_std": std}
    result = {"settings": {"engines": ["torchvision", "detectron2"], "detectors": ["fpn"], "splits": ["train"],
                           "inits": ["random", "seed"]},
              "rows": [row("torchvision", "random", 7.0, 1.6), row("detectron2", "random", 9.1, 1.0),
                       row("torchvision", "seed", 13.1, 2.8), row("detectron2", "seed", 11.7, 3.3)]}
    from tools.benchmarking.transfer_claim import _engine_comparison
    lines = _engine_comparison(result)
    assert "| Faster R-CNN R18-FPN | all labels | random init | +2.1 (spread 1.6) |" in lines
    assert "| Faster R-CNN R18-FPN | all labels | SEED R18 | -1.4 (spread 3.3) |" in lines
    assert _engine_comparison({**result, "settings": {**result["settings"], "engines": ["torchvision"]}}) == []
    # a cell of one seed has no spread: the difference says so instead of "spread 0.0"
    del result["rows"][1]["AP50_std"], result["rows"][0]["AP50_std"]
    assert "| Faster R-CNN R18-FPN | all labels | random init | +2.1 (one seed: no spread) |" in _engine_comparison(result)


def test_the_footnote_states_each_detectors_schedule_as_its_rows_recorded_it():
    def row(det, init, **kw):
        return {"engine": "torchvision", "detector": det, "split": "train", "init": init, "AP": 1.0, "AP_std": 0.1,
                "AP50": 2.0, "AP50_std": 0.2, "AP75": 0.5, "AP75_std": 0.1, "mask_AP": 0.7, "mask_AP_std": 0.1, **kw}
    preset = {"det_iters": 300, "det_batch": 4, "det_lr": 0.02, "teacher_arch": "resnet18", "teacher_epochs": 1,
              "student_arch": "resnet18", "student_epochs": 1, "scenes": {"canvas": 96}}
    result = {"settings": {"engines": ["torchvision"], "detectors": ["fpn", "fpn_mask"], "splits": ["train"],
                           "inits": ["random"], "seeds": [0]},
              "preset": preset, "counts": {"train": 10, "train_small": 1, "test": 5, "pretrain": 50}, "knn": {},
              "rows": [row("fpn", "random", iterations=300, input_size=96),
                       row("fpn_mask", "random", iterations=1200, input_size=96),
                       row("c4", "random", iterations=300, input_size=192)]}
    result["settings"]["detectors"].append("c4")
    table = claim_table(result)
    assert "300 iterations (Mask R-CNN R18-FPN: 1200)" in table
    assert "test scenes of 96 px (Faster R-CNN R18-C4: upscaled to 192 px)," in table
    # only the mask detector's table has a mask AP column
    assert table.split("### Mask R-CNN")[1].count("mask_AP") == 1 and "mask_AP" not in table.split("### Mask")[0]
    # a result written before rows carried their schedule ran every detector at det_iters
    for r in result["rows"]:
        del r["iterations"], r["input_size"]
    assert "test scenes of 96 px, 300 iterations at batch" in claim_table(result)
