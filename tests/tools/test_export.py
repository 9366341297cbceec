"""tools/export.py: a backbone export folder to ONNX beside it, its summary on stdout; an existing
output, overrides without --config and missing weights (a backbone's or a
detector's, each in this tool's terms) are one `error:` line and exit code 2."""
import json
import os

import pytest

from conftest import load_script, write_backbone_export


@pytest.fixture(scope="module")
def tool():
    return load_script(os.path.join("tools", "export.py"))


def test_backbone_folder_exported_beside_it_then_kept_without_overwrite(tmp_path, tool, capsys):
    _, dim = write_backbone_export(tmp_path / "run", "mobilenetv3_small_050")
    assert tool.main([str(tmp_path / "run"), "--format", "onnx", "--image-size", "32"]) == 0
    summary = json.loads(capsys.readouterr().out)
    out = tmp_path / "run" / "student_backbone.onnx"
    assert summary["output"] == str(out) and summary["feature_dim"] == dim and out.is_file()
    assert summary["max_abs_difference"] <= 1e-4
    written = out.read_bytes()
    assert tool.main([str(tmp_path / "run"), "--image-size", "32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--overwrite" in err
    assert out.read_bytes() == written


@pytest.mark.parametrize("argv,message", [
    (["w.pth", "MODEL.MASK_ON", "True"], "--config only"),
    (["w.pth", "--config", "c.yaml", "--arch", "resnet18"], "--arch and --image-size are a backbone's"),
    (["w.pth", "--config", "c.yaml", "--image-size", "64"], "--arch and --image-size are a backbone's"),
    (["missing_folder"], "does not exist"),
    (["w.pth", "--format", "tflite"], "invalid choice"),
])
def test_bad_input_is_one_error_line(tmp_path, tool, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)  # restored afterwards: the folder is deleted when the test passes
    assert tool.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_missing_detector_weights_are_named_in_the_export_tools_terms(tmp_path, tool, capsys):
    config = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "voc_r18_seed.yaml")
    missing = str(tmp_path / "run" / "model_final.pth")
    assert tool.main([missing, "--config", config, "--output", str(tmp_path / "d.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert f"WEIGHTS {missing} does not exist" in err and "detector checkpoint" in err, err
    assert "MODEL.WEIGHTS" not in err and "convert the student" not in err, err  # train_net's wording
    assert not (tmp_path / "d.onnx").exists()
