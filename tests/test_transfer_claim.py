"""benchmarks/transfer_claim.py at the tiny preset: pretraining and fine-tunings in one schedule,
the teacher converted as a reference, and the report."""
import json
import os

import pytest

from tools.apps.transfer_claim import Settings, claim_table, run_claim, write_report

pytestmark = pytest.mark.slow


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
        {"det_torchvision_fpn_train_moco_s0"}
    rows = {r["init"]: r for r in result["rows"]}
    assert rows["teacher"]["same_as"] == "moco" and rows["teacher"]["runs"] == rows["moco"]["runs"]
    assert "teacher (reference) = MoCo-v2 R18" in claim_table(result)
    write_report(result, tmp_path / "results")


def test_the_report_compares_engines_cell_by_cell_against_the_seed_spread():
    def row(engine, init, ap50, std):
        return {"engine": engine, "detector": "fpn", "split": "train", "init": init, "AP50": ap50, "AP50_std": std}
    result = {"settings": {"engines": ["torchvision", "detectron2"], "detectors": ["fpn"], "splits": ["train"],
                           "inits": ["random", "seed"]},
              "rows": [row("torchvision", "random", 7.0, 1.6), row("detectron2", "random", 9.1, 1.0),
                       row("torchvision", "seed", 13.1, 2.8), row("detectron2", "seed", 11.7, 3.3)]}
    from tools.apps.transfer_claim import _engine_comparison
    lines = _engine_comparison(result)
    assert "| Faster R-CNN R18-FPN | all labels | random init | +2.1 (spread 1.6) |" in lines
    assert "| Faster R-CNN R18-FPN | all labels | SEED R18 | -1.4 (spread 3.3) |" in lines
    assert _engine_comparison({**result, "settings": {**result["settings"], "engines": ["torchvision"]}}) == []
