"""The paper's linear evaluation (MoCo main_lincls): the recipe against a plain reimplementation,
exact resume, bad input, and DDP under torchrun."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision import transforms

from conftest import ROOT, load_script, write_bad_image, write_images
from seed_core.data import sample_seed
from seed_core.errors import CheckpointError, DatasetError
from seed_core.evaluation.lincls import LinclsOptions, LinearEvaluation, run_linear_evaluation
from seed_core.results import read_rows
from seed_core.stop_signals import Interrupted

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture
def data(tmp_path):
    """Random 40 px images in 3 classes, a ResNet-18 backbone export (random weights) beside them."""
    write_images(str(tmp_path / "train"), 12, size=40, seed=0, classes=3)
    write_images(str(tmp_path / "val"), 9, size=40, seed=1, classes=3)
    torch.manual_seed(7)
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()
    weights = str(tmp_path / "backbone.pth")
    torch.save(net.state_dict(), weights)
    return tmp_path, weights


def options(tmp_path, weights, out="out", **kw):
    base = dict(train=str(tmp_path / "train"), val=str(tmp_path / "val"), output_dir=str(tmp_path / out),
                backbone=weights, arch="resnet18", image_size=32, resize_size=36, workers=0, seed=3)
    base.update(kw)
    return LinclsOptions(**base)


def plain_lincls(tmp_path, weights, epochs, schedule, lr, seed):
    """MoCo's main_lincls written out on one batch holding the whole training set (so the image
    order inside an epoch does not matter): the backbone in eval mode, fc ~ N(0, 0.01), SGD on fc."""
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.fc = torch.nn.Linear(512, 3)
    model.fc.weight.data.normal_(0.0, 0.01, generator=torch.Generator().manual_seed(seed))
    model.fc.bias.data.zero_()
    model.eval()
    optimizer = torch.optim.SGD(model.fc.parameters(), lr, momentum=0.9, weight_decay=0.0)
    train = torchvision.datasets.ImageFolder(str(tmp_path / "train"))
    augment = transforms.Compose([transforms.RandomResizedCrop(32), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.1 ** sum(epoch >= m for m in schedule)
        images = []
        for index, (path, _) in enumerate(train.samples):
            torch.manual_seed(sample_seed(seed, epoch, index))  # the documented per-sample seed
            images.append(augment(Image.open(path).convert("RGB")))
        loss = F.cross_entropy(model(torch.stack(images)), torch.tensor(train.targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    val = torchvision.datasets.ImageFolder(str(tmp_path / "val"), transforms.Compose([
        transforms.Resize(36), transforms.CenterCrop(32), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]))
    with torch.no_grad():
        scores = model(torch.stack([x for x, _ in val]))
    labels = torch.tensor(val.targets)
    top1 = (scores.argmax(1) == labels).float().mean().item() * 100
    top2 = (scores.topk(2).indices == labels[:, None]).any(1).float().mean().item() * 100
    return model.fc, top1, top2


def test_steps_equal_a_plain_reimplementation_of_the_recipe(data):
    tmp_path, weights = data
    summary = run_linear_evaluation(options(tmp_path, weights, epochs=3, schedule=(1, 2), lr=0.5, batch_size=12))
    fc, top1, top2 = plain_lincls(tmp_path, weights, epochs=3, schedule=(1, 2), lr=0.5, seed=3)
    ours = torch.load(summary["checkpoint"], weights_only=True)["classifier"]
    assert not torch.allclose(fc.weight, torch.zeros_like(fc.weight), atol=0.05)  # it did learn something
    torch.testing.assert_close(ours["weight"], fc.weight.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["bias"], fc.bias.detach(), rtol=1e-5, atol=1e-6)
    assert summary["top1"] == pytest.approx(top1)
    assert [e["lr"] for e in summary["history"]] == pytest.approx([0.5, 0.05, 0.005])
    best = torch.load(summary["best"], weights_only=True)
    assert best["epoch"] == summary["best_epoch"] and best["top1"] == summary["best_top1"]
    assert summary["best_top1"] == max(e["top1"] for e in summary["history"])
    # top-5 of 3 classes is 100 by the usual convention; top-2 shows the ranking is scored
    assert summary["top5"] == 100.0 and top2 >= top1


def test_a_resumed_run_ends_exactly_as_an_uninterrupted_one(data):
    tmp_path, weights = data
    kw = dict(epochs=2, schedule=(1,), lr=1.0, batch_size=4)  # 3 iterations per epoch
    whole = run_linear_evaluation(options(tmp_path, weights, "whole", **kw))
    first = run_linear_evaluation(options(tmp_path, weights, "parts", **kw), stop_at_iter=4)  # mid-epoch 2
    assert not first["finished"] and first["epochs_done"] == 1
    # data-loading processes may change on resume; the result may not
    resumed = run_linear_evaluation(options(tmp_path, weights, "parts", workers=1, **kw), resume=True)
    a, b = (torch.load(s["checkpoint"], weights_only=True) for s in (whole, resumed))
    for key in ("weight", "bias"):
        assert torch.equal(a["classifier"][key], b["classifier"][key])
    assert torch.equal(a["optimizer"]["state"][0]["momentum_buffer"], b["optimizer"]["state"][0]["momentum_buffer"])
    assert a["history"] == b["history"] and resumed["finished"]
    with open(whole["metrics"]) as f1, open(resumed["metrics"]) as f2:
        m1, m2 = json.load(f1), json.load(f2)
    assert {k: v for k, v in m1.items() if k != "settings"} == {k: v for k, v in m2.items() if k != "settings"}


def test_sigterm_checkpoints_at_the_step_and_resume_ends_as_an_uninterrupted_run(data, monkeypatch):
    tmp_path, weights = data
    kw = dict(epochs=2, schedule=(1,), lr=1.0, batch_size=4)
    whole = run_linear_evaluation(options(tmp_path, weights, "whole", **kw))
    step, calls = LinearEvaluation.step, []

    def step_then_sigterm(self, *args):  # a preemption arriving during the second step
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, *args)
    monkeypatch.setattr(LinearEvaluation, "step", step_then_sigterm)
    with pytest.raises(Interrupted, match="after iteration 2"):
        run_linear_evaluation(options(tmp_path, weights, "parts", **kw))
    assert torch.load(str(tmp_path / "parts" / "checkpoint.pth"), weights_only=True)["iteration"] == 2
    monkeypatch.setattr(LinearEvaluation, "step", step)
    resumed = run_linear_evaluation(options(tmp_path, weights, "parts", **kw), resume=True)
    a, b = (torch.load(s["checkpoint"], weights_only=True)["classifier"] for s in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_other_settings_or_weights_is_refused(data):
    tmp_path, weights = data
    kw = dict(epochs=2, batch_size=4)
    run_linear_evaluation(options(tmp_path, weights, **kw), stop_at_iter=2)
    with pytest.raises(CheckpointError, match="lr: 30.0 -> 3.0"):
        run_linear_evaluation(options(tmp_path, weights, lr=3.0, **kw), resume=True)
    other = torchvision.models.resnet18()
    other.fc = torch.nn.Identity()
    torch.save(other.state_dict(), str(tmp_path / "other.pth"))
    with pytest.raises(CheckpointError, match="backbone_sha256"):
        run_linear_evaluation(options(tmp_path, str(tmp_path / "other.pth"), **kw), resume=True)


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "0"], "--epochs 0 must be >= 1"),
    (["--schedule", "80", "60"], "increasing order"),
    (["--resize-size", "30"], "smaller than the crop"),
    (["--batch-size", "64"], "fewer than one batch"),
    ([], "already holds a run"),
])
def test_bad_input_is_one_error_line(data, capsys, extra, message):
    tmp_path, weights = data
    tool = load_script("tools/lincls.py")
    out = str(tmp_path / "out")
    if not extra:
        os.makedirs(out)
        with open(os.path.join(out, "checkpoint.pth"), "wb") as f:
            f.write(b"x")
    argv = ["--backbone", weights, "--arch", "resnet18", "--train", str(tmp_path / "train"), "--val",
            str(tmp_path / "val"), "--output-dir", out, "--image-size", "32", "--resize-size", "36",
            "--batch-size", "4", "--epochs", "1", "--workers", "0", "--results-csv", "", *extra]
    assert tool.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1


def _tool_argv(tmp_path, weights, out, *extra):
    return ["--backbone", weights, "--arch", "resnet18", "--train", str(tmp_path / "train"), "--val",
            str(tmp_path / "val"), "--output-dir", str(out), "--image-size", "32", "--resize-size", "36",
            "--batch-size", "4", "--workers", "0", "--results-csv", "", *extra]


def test_an_unreadable_val_image_is_refused_before_any_step(data, capsys):
    tmp_path, weights = data
    write_bad_image(tmp_path / "val" / "class1" / "bad.jpg", "truncated")  # its header reads: decoding fails
    out = tmp_path / "out"
    assert load_script("tools/lincls.py").main(_tool_argv(tmp_path, weights, out, "--epochs", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --val ") and "bad.jpg cannot be read" in err and len(err.splitlines()) == 1
    assert not (out / "checkpoint.pth").exists() and not (out / "metrics.json").exists()  # refused before a step


def _spoil_a_training_image_of_epoch_2s_first_step(tmp_path, seed=3, batch=4):
    """Overwrite (truncate) a training image that epoch 2 (index 1) meets in its first step; its path."""
    from seed_core.data import ResumableSampler
    files = [p for p, _ in torchvision.datasets.ImageFolder(str(tmp_path / "train")).samples]
    sampler = ResumableSampler(len(files), batch, seed=seed)
    sampler.set_position(1)
    _, index = next(iter(sampler))
    return write_bad_image(files[index], "truncated")


def test_an_unreadable_training_image_is_skipped_counted_per_epoch_and_resumes_exactly(data, monkeypatch):
    tmp_path, weights = data
    bad = _spoil_a_training_image_of_epoch_2s_first_step(tmp_path)
    import seed_core.evaluation.lincls as lincls
    checked = []
    refuse = lincls.refuse_unreadable
    monkeypatch.setattr(lincls, "refuse_unreadable", lambda paths, *a: (checked.extend(paths), refuse(paths, *a)))
    kw = dict(epochs=2, schedule=(1,), lr=1.0, batch_size=4, max_bad_fraction=0.1)  # 1 of 12 is allowed
    whole = run_linear_evaluation(options(tmp_path, weights, "whole", **kw))
    assert checked and all(p.startswith(str(tmp_path / "val")) for p in checked)  # training images: not up front
    assert [e["bad_images"] for e in whole["history"]] == [1, 1] and whole["bad_images"] == 2
    with open(whole["metrics"]) as f:
        assert [e["bad_images"] for e in json.load(f)["history"]] == [1, 1]
    # stopped after epoch 2's first step (which met the bad image), then resumed with another limit
    run_linear_evaluation(options(tmp_path, weights, "parts", **kw), stop_at_iter=4)
    resumed = run_linear_evaluation(options(tmp_path, weights, "parts", **{**kw, "max_bad_fraction": 0.2}),
                                    resume=True)
    assert resumed["history"] == whole["history"] and resumed["bad_images"] == 2
    a, b = (torch.load(s["checkpoint"], weights_only=True)["classifier"] for s in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_more_unreadable_training_images_than_the_limit_stop_the_run_naming_one(data, capsys):
    tmp_path, weights = data
    bad = _spoil_a_training_image_of_epoch_2s_first_step(tmp_path)
    out = tmp_path / "out"
    tool = load_script("tools/lincls.py")
    assert tool.main(_tool_argv(tmp_path, weights, out, "--epochs", "1")) == 2  # the default limit: 0.01 of 12
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "--max-bad-fraction = 0.01" in err and os.path.relpath(bad, tmp_path / "train") in err, err
    assert tool.main(_tool_argv(tmp_path, weights, tmp_path / "ok", "--epochs", "1", "--max-bad-fraction", "0.1")) == 0
    with open(tmp_path / "ok" / "metrics.json") as f:
        assert json.load(f)["history"][0]["bad_images"] == 1


@pytest.mark.parametrize("content", [torch.zeros(3), {"student": {}, "iteration": 3}])
def test_resume_from_a_file_that_is_not_a_lincls_checkpoint_is_refused(data, content):
    tmp_path, weights = data
    os.makedirs(tmp_path / "out")
    torch.save(content, tmp_path / "out" / "checkpoint.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint of the linear evaluation"):
        run_linear_evaluation(options(tmp_path, weights, batch_size=4, epochs=1), resume=True)


def test_val_classes_must_match_train(data):
    tmp_path, weights = data
    write_images(str(tmp_path / "val4"), 8, size=40, classes=4)
    with pytest.raises(DatasetError, match="class folders"):
        run_linear_evaluation(options(tmp_path, weights, val=str(tmp_path / "val4"), batch_size=4, epochs=1))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_under_torchrun_train_the_same_classifier_as_one(data):
    tmp_path, weights = data
    args = ["--backbone", weights, "--arch", "resnet18", "--train", str(tmp_path / "train"), "--val",
            str(tmp_path / "val"), "--image-size", "32", "--resize-size", "36", "--batch-size", "4",
            "--epochs", "2", "--schedule", "1", "--lr", "1.0", "--workers", "0", "--seed", "3"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), os.path.join(ROOT, "tools", "lincls.py"), *args,
           "--output-dir", str(tmp_path / "ddp"), "--results-csv", str(tmp_path / "results_linear.csv")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = run_linear_evaluation(options(tmp_path, weights, "single", epochs=2, schedule=(1,), lr=1.0, batch_size=4))
    a = torch.load(str(tmp_path / "ddp" / "checkpoint.pth"), weights_only=True)
    b = torch.load(single["checkpoint"], weights_only=True)
    for key in ("weight", "bias"):  # the frozen backbone makes each image's features independent of the split
        torch.testing.assert_close(a["classifier"][key], b["classifier"][key], rtol=1e-5, atol=1e-6)
    assert [e["top1"] for e in a["history"]] == pytest.approx([e["top1"] for e in b["history"]])
    _, rows = read_rows(str(tmp_path / "results_linear.csv"))  # one row, from the main process
    assert len(rows) == 1 and rows[0]["optimizer"] == "lincls" and rows[0]["epochs"] == "2"
    assert rows[0]["top1"] == f"{a['history'][-1]['top1']:.2f}"
