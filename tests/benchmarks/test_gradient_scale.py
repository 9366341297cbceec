"""benchmarks/gradient_scale.py: per-stage relative step of fresh ResNets under a contrastive loss."""
import json
import os

import pytest

from tools.benchmarking.gradient_scale import STAGES, digit_crops, stage_ratios


def test_quick_mode_writes_a_table_to_a_temporary_folder(capsys):
    import benchmarks.gradient_scale as script
    assert script.main(["--quick"]) == 0
    out = capsys.readouterr().out
    folder = out.strip().splitlines()[-1].split("wrote ")[1].rsplit("/", 1)[0]
    assert not folder.startswith(script.RESULTS)
    rows = json.load(open(os.path.join(folder, "gradient_scale.json")))["rows"]
    assert [r["arch"] for r in rows] == ["resnet18", "resnet18"] and [r["head_batch_norm"] for r in rows] == [False, True]
    assert all(r["ratio_mean"][s] > 0 for r in rows for s in STAGES)


def test_the_first_stage_of_a_resnet50_takes_a_far_larger_step_than_a_resnet18s():
    images = digit_crops(8)
    r18, r50 = stage_ratios("resnet18", False, images, 0), stage_ratios("resnet50", False, images, 0)
    assert r50["conv1"] > 5 * r18["conv1"]
    # in both, gradients grow toward the input against the weights
    assert r18["conv1"] > r18["layer4"] and r50["conv1"] > 100 * r50["layer4"]


def test_crops_are_bright_ink_on_black():
    crop = digit_crops(1, size=16)[0]
    assert crop.size == (16, 16) and crop.mode == "RGB"
    assert crop.getextrema()[0] == (0, pytest.approx(255, abs=40))
