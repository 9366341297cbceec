"""Every tool that writes a run folder (or a run's output file) follows one policy
(seed_core.run_dir): a finished run is refused unless --resume or --overwrite, a folder another run is
writing is refused, and an output path that is a file or not writable is one `error: ...` line."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from conftest import load_script, tiny_opts
from seed_core.run_dir import LOCK_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FOLDER_TOOLS = ("distill", "train_net", "demo", "lincls")  # write a run folder
FILE_TOOLS = ("eval_knn", "eval_linear", "convert")     # write one output file


def _coco(root):
    """Two 16x16 images with one box each: enough for the detection preflight to pass."""
    os.makedirs(root / "images", exist_ok=True)
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 40 * i, dtype=np.uint8)).save(root / "images" / f"{i}.png")
        data["images"].append({"id": i + 1, "file_name": f"{i}.png", "width": 16, "height": 16})
        data["annotations"].append({"id": 10 + i, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                                    "bbox": [2, 2, 8, 8], "area": 64.0})
    (root / "instances.json").write_text(json.dumps(data))
    return str(root / "instances.json"), str(root / "images")


@pytest.fixture
def stub_engine(monkeypatch):
    """The torchvision engine's run replaced by a stand-in that records it was reached."""
    import seed_det.engines.tv.engine as tv
    calls = []
    monkeypatch.setattr(tv, "run", lambda cfg, options: calls.append(cfg.OUTPUT_DIR) or {"AP": 1.0})
    return calls


def _argv(tool, tmp_path, out):
    """The command line of `tool` writing to `out` (a folder, or for FILE_TOOLS a file)."""
    if tool == "distill":
        return tiny_opts(str(tmp_path / "no_images"), None, out, **{"LOSS.NAME": "moco"})
    if tool == "train_net":
        json_file, images = _coco(tmp_path / "coco")
        return ["--config", os.path.join(ROOT, "configs", "voc_r18_random.yaml"), "--engine", "torchvision",
                "MODEL.DEVICE", "cpu", "DATASETS.COCO_JSON", repr([["tiny", json_file, images]]),
                "DATASETS.TRAIN", "('tiny',)", "DATASETS.TEST", "('tiny',)", "MODEL.ROI_HEADS.NUM_CLASSES", "1",
                "RESULTS_CSV", str(tmp_path / "results_detection.csv"), "--output-dir", out]
    if tool == "demo":
        return ["--output-dir", out, "--preset", "tiny", "--engine", "torchvision"]
    if tool == "lincls":
        return ["--arch", "resnet18", "--random-init", "--train", str(tmp_path / "no_train"),
                "--val", str(tmp_path / "no_val"), "--results-csv", "", "--output-dir", out]
    if tool in ("eval_knn", "eval_linear"):
        return ["--arch", "resnet18", "--random-init", "--train", str(tmp_path / "no_train"),
                "--val", str(tmp_path / "no_val"), "--results-csv", "", "--no-progress", "--output", out]
    pth = tmp_path / "r18.pth"
    if not pth.exists():
        torch.save({k: v for k, v in torchvision.models.resnet18().state_dict().items()
                    if not k.startswith("fc.")}, pth)
    return [str(pth), out]


def _run(tool, argv, capsys):
    """Exit code and stderr of the tool's main(argv) (called in-process)."""
    script = {"convert": "tools/convert_to_d2.py"}.get(tool, f"tools/{tool}.py")
    capsys.readouterr()
    code = load_script(script).main(argv)
    return code, capsys.readouterr().err


def _one_error_line(err, *expected):
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _out(tool, tmp_path):
    return str(tmp_path / "run") if tool in FOLDER_TOOLS else str(tmp_path / "out" / (
        "model.pkl" if tool == "convert" else "metrics.json"))


def _lock_path(tool, out):
    return os.path.join(out, LOCK_FILE) if tool in FOLDER_TOOLS else \
        os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.lock")


@pytest.fixture
def live_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("tool", FOLDER_TOOLS + FILE_TOOLS)
def test_an_output_another_run_is_writing_is_refused_by_every_tool(tool, tmp_path, capsys, live_process,
                                                                   stub_engine):
    out = _out(tool, tmp_path)
    lock = _lock_path(tool, out)
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    owner = {"pid": live_process.pid, "host": socket.gethostname(), "started": "2026-01-01 00:00:00 +0000"}
    with open(lock, "w") as f:
        json.dump(owner, f)
    if tool in ("eval_knn", "eval_linear"):  # the claim comes before any feature, but after the data is found
        from conftest import write_images
        write_images(str(tmp_path / "no_train"), 4)
        write_images(str(tmp_path / "no_val"), 4)
    flags = ["--resume"] if tool in ("distill", "train_net") else []
    code, err = _run(tool, _argv(tool, tmp_path, out) + flags, capsys)
    assert code == 2
    _one_error_line(err, "in use by another run", f"process {live_process.pid} on {socket.gethostname()}")
    assert json.load(open(lock)) == owner and not stub_engine


@pytest.mark.parametrize("tool,marker,flag", [
    ("distill", "checkpoint.pth", "--restart"), ("train_net", "metrics.json", "--overwrite"),
    ("train_net", "last_checkpoint", "--overwrite"), ("lincls", "checkpoint.pth", "--overwrite"),
    ("eval_knn", None, "--overwrite"),
    ("eval_linear", None, "--overwrite"), ("convert", None, "--overwrite")])
def test_a_finished_run_is_refused_without_resume_or_overwrite(tool, marker, flag, tmp_path, capsys, stub_engine):
    out = _out(tool, tmp_path)
    held = os.path.join(out, marker) if marker else out
    os.makedirs(os.path.dirname(held), exist_ok=True)
    with open(held, "w") as f:
        f.write("a finished run")
    code, err = _run(tool, _argv(tool, tmp_path, out), capsys)
    assert code == 2
    line = _one_error_line(err, flag)
    assert "already holds a run" in line or "exists already" in line
    assert open(held).read() == "a finished run" and not stub_engine
    assert not os.path.exists(_lock_path(tool, out))  # a refusal leaves no lock


@pytest.mark.parametrize("tool", FOLDER_TOOLS + FILE_TOOLS)
@pytest.mark.parametrize("where", ["is_a_file", "under_a_file"])
def test_an_output_path_that_is_a_file_or_not_writable_is_one_line(tool, where, tmp_path, capsys, stub_engine):
    blocker = tmp_path / "blocker"
    blocker.write_text("mine")
    if where == "is_a_file":  # a file where a folder goes, or a folder where a file goes
        out = str(blocker) if tool in FOLDER_TOOLS else str(tmp_path)
    else:  # its folder cannot be created: a file is in the way
        out = str(blocker / "run") if tool in FOLDER_TOOLS else str(blocker / _out(tool, tmp_path).split("/")[-1])
    code, err = _run(tool, _argv(tool, tmp_path, out), capsys)
    assert code == 2
    _one_error_line(err)
    assert blocker.read_text() == "mine" and not stub_engine


def test_detection_overwrite_moves_the_run_aside_and_resume_continues_it(tmp_path, capsys, stub_engine, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    (out / "model_final.pth").write_text("weights")
    argv = _argv("train_net", tmp_path, str(out))
    assert _run("train_net", argv + ["--resume", "--overwrite"], capsys)[0] == 2
    assert _run("train_net", argv + ["--resume"], capsys)[0] == 0 and (out / "metrics.json").exists()
    assert _run("train_net", argv + ["--overwrite"], capsys)[0] == 0
    (previous,) = out.glob("previous-*")
    assert sorted(os.listdir(previous)) == ["metrics.json", "model_final.pth"]
    assert sorted(os.listdir(out)) == [previous.name]  # lock released
    # --eval-only writes beside a training run (eval_metrics.json), but not over an earlier evaluation
    preflight = sys.modules["seed_det.engines.preflight"]  # the package's `preflight` is the function
    monkeypatch.setattr(preflight, "_check_eval_weights", lambda cfg, resume: None)  # no trained detector here
    (out / "eval_metrics.json").write_text("{}")
    code, err = _run("train_net", argv + ["--eval-only"], capsys)
    assert code == 2 and "already holds a run (eval_metrics.json)" in err
    assert len(stub_engine) == 2


def _distill_cli(out, images):
    code = ("import sys; sys.path.insert(0, {root!r}); from tools.distill import main; "
            "sys.exit(main(sys.argv[1:]))").format(root=ROOT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", code] + tiny_opts(images, None, out, **{"LOSS.NAME": "moco"}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


@pytest.mark.slow
def test_two_distillations_started_at_once_on_one_folder_exactly_one_proceeds(tmp_path, images):
    out = str(tmp_path / "run")
    procs = [_distill_cli(out, images) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    (refused,) = [err for code, err in results if code == 2]
    _one_error_line(refused, "in use by another run")
    assert len(open(os.path.join(out, "metrics.jsonl")).readlines()) == 6  # one run's log: 2 epochs x 3 steps
    assert not os.path.exists(os.path.join(out, LOCK_FILE))
