"""benchmarks/teacher_precision.py: the tiny run end to end, and the rule that sets TRAIN.TEACHER_PRECISION auto."""
import json
import tempfile

import pytest
import torch

from conftest import load_script
from tools.benchmarking.teacher_precision import verdict, within_seed_spread


@pytest.fixture(autouse=True)
def temporary_folders_inside_tmp_path(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    n = torch.get_num_threads()  # the CLI sets the thread count for the whole process
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_tiny_run_scores_every_precision_and_times_its_step(tmp_path):
    out = tmp_path / "out"
    script = load_script("benchmarks/teacher_precision.py")
    assert script.main(["--tiny", "--out-dir", str(out), "--work-dir", str(tmp_path / "work"),
                        "--archs", "resnet18", "--precisions", "bf16", "fp16"]) == 0
    result = json.loads((out / "teacher_precision_students.json").read_text())
    assert result["precisions"] == ["fp32", "bf16", "fp16"]  # the reference is always added
    points = result["students"]["resnet18"]["points"]
    assert [p["value"] for p in points] == ["fp32", "bf16", "fp16"]
    assert all(0.0 <= p["top1_mean"] <= 100.0 for p in points)
    assert points[0]["difference_to_fp32"] is None and points[1]["difference_to_fp32"]["n"] == 1
    steps = result["timing"]["resnet18"]["seconds_per_step"]
    assert set(steps) == {"fp32", "bf16", "fp16"} and all(v > 0 for v in steps.values())
    assert result["timing"]["resnet18"]["relative_to_fp32"]["fp32"] == 1.0
    text = (out / "teacher_precision_students.md").read_text()
    assert "| resnet18 | fp16 |" in text and "emulated" in text


def test_tiny_run_never_writes_over_the_committed_results():
    script = load_script("benchmarks/teacher_precision.py")
    with pytest.raises(SystemExit, match="overwrite the committed results"):
        script.parse_args(["--tiny", "--out-dir", script.RESULTS])


def _diff(mean, low, high):
    return {"n": 3, "mean": mean, "low": low, "high": high}


@pytest.mark.parametrize("diff, std, expected", [
    (_diff(0.3, -0.5, 1.1), 1.0, True),     # interval holds zero, mean inside the spread
    (_diff(1.5, -0.2, 3.2), 1.0, False),    # interval holds zero but the mean exceeds the spread
    (_diff(-0.8, -1.2, -0.4), 1.0, False),  # a difference the interval resolves
    ({"n": 1, "mean": 0.0}, 1.0, None),     # one seed: no interval
    (_diff(0.0, -0.1, 0.1), None, None),    # no spread to compare with
])
def test_within_seed_spread(diff, std, expected):
    assert within_seed_spread(diff, std) is expected


def test_verdict_needs_every_student_within_its_spread():
    def student(flag):
        return {"points": [{"value": "fp32", "within_seed_spread": None},
                           {"value": "bf16", "within_seed_spread": flag}]}
    assert verdict({"precisions": ["fp32", "bf16"], "students": {"a": student(True), "b": student(True)}}) == {"bf16": True}
    assert verdict({"precisions": ["fp32", "bf16"], "students": {"a": student(True), "b": student(False)}}) == {"bf16": False}
    assert verdict({"precisions": ["fp32", "bf16"], "students": {"a": student(True), "b": student(None)}}) == {"bf16": None}
