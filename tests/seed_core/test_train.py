import json
import math
import os

import pytest
import torch
import torchvision

from conftest import moco_state, tiny_opts, write_images
from seed_core.checkpoint_io import CheckpointError, load_untrusted
from seed_core.config import ConfigError, load_cfg
from seed_core.data import DatasetError
from seed_core.errors import NonFiniteLossError
from seed_core.monitoring import TooManyBadImagesError
from seed_core.trainer import train


def run(images, teacher, out, stop_at_iter=None, resume=False, **extra):
    cfg = load_cfg(None, tiny_opts(images, teacher, out, **extra))
    return train(cfg, resume=resume, stop_at_iter=stop_at_iter)


def test_distillation_writes_a_backbone_that_loads_into_torchvision(images, moco_teacher, tmp_path):
    out = str(tmp_path / "run")
    summary = run(images, moco_teacher, out)
    assert summary["finished"] and summary["iterations"] == 6  # 24 images / 8 per batch * 2 epochs
    state = torch.load(summary["backbone"], weights_only=True)
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()
    net.load_state_dict(state, strict=True)
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["arch"] == "resnet18" and meta["loss"] == "seed" and meta["feature_dim"] == 512
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] > 0 for r in records)
    ckpt = load_untrusted(os.path.join(out, "checkpoint.pth"))
    assert ckpt["iteration"] == 6 and int(ckpt["queue"]["ptr"]) == (6 * 8) % 20


def test_export_from_checkpoint_matches_the_exported_backbone(images, moco_teacher, tmp_path):
    from seed_core.export import export_from_checkpoint
    summary = run(images, moco_teacher, str(tmp_path / "run"))
    path = export_from_checkpoint(summary["checkpoint"], str(tmp_path / "again"))
    again, first = torch.load(path, weights_only=True), torch.load(summary["backbone"], weights_only=True)
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    assert json.load(open(tmp_path / "again" / "meta.json"))["arch"] == "resnet18"
    with pytest.raises(CheckpointError, match="not a distillation checkpoint"):
        export_from_checkpoint(summary["backbone"], str(tmp_path / "bad"))


@pytest.mark.parametrize("loss, extra", [("seed", {}), ("l2", {}), ("moco", {}),
                                         ("moco", {"SOLVER.OPTIMIZER": "lars", "MODEL.STUDENT.HEAD_BATCH_NORM": True})])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(images, moco_teacher, tmp_path, loss, extra):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    opts = {"LOSS.NAME": loss, **extra}
    run(images, moco_teacher, a, **opts)
    first = run(images, moco_teacher, b, stop_at_iter=4, **opts)  # stops mid-epoch 2
    assert not first["finished"] and first["iterations"] == 4
    run(images, moco_teacher, b, resume=True, **opts)
    ca = load_untrusted(os.path.join(a, "checkpoint.pth"))
    cb = load_untrusted(os.path.join(b, "checkpoint.pth"))
    for k, v in ca["student"].items():
        assert torch.equal(v, cb["student"][k]), k
    assert torch.equal(ca["queue"]["embeddings"], cb["queue"]["embeddings"])
    assert int(ca["queue"]["ptr"]) == int(cb["queue"]["ptr"])
    la = [json.loads(x)["loss"] for x in open(os.path.join(a, "metrics.jsonl"))]
    lb = [json.loads(x)["loss"] for x in open(os.path.join(b, "metrics.jsonl"))]
    assert la == lb


def test_resume_with_a_different_config_is_refused(images, moco_teacher, tmp_path):
    out = str(tmp_path / "r")
    run(images, moco_teacher, out, stop_at_iter=2)
    with pytest.raises(ConfigError, match="LOSS.STUDENT_TEMP"):
        run(images, moco_teacher, out, resume=True, **{"LOSS.STUDENT_TEMP": 0.1})
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run(images, moco_teacher, str(tmp_path / "never"), resume=True)


def test_resume_after_the_teacher_file_was_replaced_is_refused(images, moco_teacher, tmp_path):
    """Same config, same path, other weights (a teacher retrained in place): not the same run."""
    out = str(tmp_path / "r")
    run(images, moco_teacher, out, stop_at_iter=2)
    torch.save(moco_state("resnet18", seed=1), moco_teacher)
    with pytest.raises(CheckpointError, match="now holds other weights than the teacher this run started from"):
        run(images, moco_teacher, out, resume=True)
    assert load_untrusted(os.path.join(out, "checkpoint.pth"))["iteration"] == 2  # the run is untouched
    torch.save(moco_state("resnet18"), moco_teacher)  # the original teacher back: the run continues
    assert run(images, moco_teacher, out, resume=True)["finished"]


def test_missing_and_empty_dataset(moco_teacher, tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        run(str(tmp_path / "nothing"), moco_teacher, str(tmp_path / "o"))
    empty = tmp_path / "empty"
    (empty / "class0").mkdir(parents=True)
    (empty / "class0" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="no images found"):
        run(str(empty), moco_teacher, str(tmp_path / "o"))
    assert not os.path.exists(tmp_path / "o" / "checkpoint.pth")


def test_corrupt_and_empty_images_are_skipped_and_counted(moco_teacher, tmp_path):
    root = tmp_path / "imgs"
    write_images(str(root), 40)
    (root / "class0" / "zero.jpg").write_bytes(b"")
    (root / "class1" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "class1" / "text.png").write_text("hello")
    os.symlink(str(root / "gone.png"), str(root / "class0" / "dangling.png"))  # unreadable: target missing
    locked = root / "class1" / "img0001.png"
    os.chmod(locked, 0)  # unreadable for a normal user (root reads it anyway)
    unreadable = 4 + (os.geteuid() != 0)
    # bad files are ~10% of 45: the limit applies per epoch, not to the run's total (~20%).
    summary = run(str(root), moco_teacher, str(tmp_path / "o"), **{"DATA.MAX_BAD_FRACTION": 0.15})
    os.chmod(locked, 0o644)
    assert summary["finished"]
    assert summary["bad_images"] == 2 * unreadable  # each bad file seen once in each of 2 epochs
    with pytest.raises(TooManyBadImagesError,
                       match=r"DATA.MAX_BAD_FRACTION.*for example .*(zero\.jpg|corrupt\.jpg|text\.png|dangling\.png)"):
        run(str(root), moco_teacher, str(tmp_path / "o2"), **{"DATA.MAX_BAD_FRACTION": 0.01})


def test_bad_model_settings_are_refused_before_training(images, moco_teacher, tmp_path):
    out = str(tmp_path / "o")
    with pytest.raises(CheckpointError, match="does not fit the teacher backbone 'resnet34'"):
        run(images, moco_teacher, out, **{"MODEL.TEACHER.ARCH": "resnet34"})
    with pytest.raises(ConfigError, match="MODEL.STUDENT.HEAD_DIM 128"):
        run(images, moco_teacher, out, **{"MODEL.STUDENT.HEAD_DIM": 64})
    with pytest.raises(ConfigError, match="QUEUE.SIZE = 4 is smaller than the global batch"):
        run(images, moco_teacher, out, **{"QUEUE.SIZE": 4})
    assert not os.path.exists(os.path.join(out, "checkpoint.pth"))


def test_non_finite_loss_stops_naming_the_iteration_and_keeps_last_checkpoint(images, moco_teacher, tmp_path,
                                                                              monkeypatch):
    import seed_core.objectives as objectives
    real, calls = objectives.seed_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(objectives, "seed_loss", poisoned)
    out = str(tmp_path / "o")
    with pytest.raises(NonFiniteLossError, match="iteration 4"):
        run(images, moco_teacher, out, **{"TRAIN.CHECKPOINT_PERIOD": 2})
    ckpt = load_untrusted(os.path.join(out, "checkpoint.pth"))
    assert ckpt["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["student"].values() if v.is_floating_point())


@pytest.mark.parametrize("poisoned_calls,max_nonfinite,stops", [({3}, 1, False), ({3, 4}, 1, True)])
def test_max_nonfinite_skips_that_many_steps_in_a_row(images, tmp_path, monkeypatch, poisoned_calls, max_nonfinite,
                                                      stops):
    import seed_core.objectives as objectives
    real, calls = objectives.info_nce_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("inf") if len(calls) in poisoned_calls else loss

    monkeypatch.setattr(objectives, "info_nce_loss", poisoned)
    opts = {"LOSS.NAME": "moco", "LOSS.MAX_NONFINITE": max_nonfinite, "SOLVER.MAX_ITER": 6}
    if stops:
        with pytest.raises(NonFiniteLossError, match="iteration 3 .*2 such step.*LOSS.MAX_NONFINITE = 1"):
            run(images, None, str(tmp_path / "o"), **opts)
    else:
        summary = run(images, None, str(tmp_path / "o"), **opts)
        assert summary["finished"] and summary["iterations"] == 6
        losses = [json.loads(line)["loss"] for line in open(tmp_path / "o" / "metrics.jsonl")]
        assert math.isnan(losses[2]) and all(map(math.isfinite, losses[:2] + losses[3:]))  # iteration 3 skipped


@pytest.mark.parametrize("damage,moved_aside", [
    (b'{"iteration": 3, "lo', False),                      # torn last line of a killed run: dropped
    (b"\x00\xff\xfe garbage\n", True),                        # bytes that are not text
    (b'{"epoch": 1}\n["iteration", 3]\n', True),            # JSON of another schema
])
def test_a_torn_or_damaged_metrics_log_never_stops_a_resume(images, moco_teacher, tmp_path, caplog, damage,
                                                            moved_aside):
    out = tmp_path / "r"
    run(images, moco_teacher, str(out), stop_at_iter=2)
    log = out / "metrics.jsonl"
    before = log.read_bytes()
    log.write_bytes(before + damage)
    with caplog.at_level("WARNING"):
        run(images, moco_teacher, str(out), resume=True)
    records = [json.loads(line) for line in open(log)]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5, 6]  # the good rows kept, no garbage
    aside = list(out.glob("metrics.jsonl.damaged-*"))
    assert len(aside) == int(moved_aside)
    if moved_aside:  # nothing lost: the damaged file is kept whole
        assert aside[0].read_bytes() == before + damage and "moved it aside" in caplog.text
    else:
        assert "torn" in caplog.text and "line 3" in caplog.text
