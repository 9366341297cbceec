import json
import os

import pytest

from tools.apps.demo_pipeline import run_demo
from tools.apps.report import read_loss_curve

pytestmark = pytest.mark.slow


def test_tiny_pipeline_end_to_end_and_cached_rerun(tmp_path, capsys):
    out = str(tmp_path / "demo")
    results = run_demo(out, "tiny", engine="torchvision", workers=0)
    assert set(results) == {"random", "moco", "seed"}
    for metrics in results.values():
        assert {"AP", "AP50", "AP75"} <= set(metrics)
        assert all(0.0 <= metrics[k] <= 100.0 for k in ("AP", "AP50", "AP75"))
    table = open(os.path.join(out, "results.md")).read()
    assert table.count("\n") == 5 and "SEED resnet18" in table and "random init" in table
    for png in ("results.png", "loss_curves.png"):
        assert open(os.path.join(out, png), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    for stage in ("teacher_moco", "student_seed", "student_moco"):
        its, losses = read_loss_curve(os.path.join(out, stage))
        assert its and len(its) == len(losses)
    assert os.path.exists(os.path.join(out, "student_seed", "student_backbone.pth"))
    meta = json.load(open(os.path.join(out, "student_seed", "meta.json")))
    assert meta["loss"] == "seed" and meta["teacher"]["arch"] == "resnet18"

    markers = {s: os.path.getmtime(os.path.join(out, s, "run.json"))
               for s in ("teacher_moco", "student_seed", "det_seed")}
    capsys.readouterr()
    again = run_demo(out, "tiny", engine="torchvision", workers=0)
    assert again == results
    assert "running" not in capsys.readouterr().out
    for s, t in markers.items():
        assert os.path.getmtime(os.path.join(out, s, "run.json")) == t
