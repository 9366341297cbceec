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
