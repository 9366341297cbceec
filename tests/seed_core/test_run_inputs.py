"""A distillation run is never lost or overwritten, and bad run inputs are refused before work."""
import glob
import os
import stat

import pytest
import torch

from conftest import tiny_opts, write_images
from seed_core.checkpoint_io import CheckpointError, atomic_write_text, load_untrusted
from seed_core.config import ConfigError, load_cfg
from seed_core.data import list_images
from seed_core.evaluation.backbone_io import load_backbone
from seed_core.evaluation.features import load_or_compute_features
from seed_core.trainer import train


def moco_cfg(images, out, **extra):
    """A MoCo run (no teacher needed): seconds on CPU."""
    return load_cfg(None, tiny_opts(images, None, out, **{"LOSS.NAME": "moco", **extra}))


def test_a_folder_holding_a_run_is_refused_without_resume_and_restart_keeps_it(images, tmp_path):
    out = str(tmp_path / "run")
    train(moco_cfg(images, out), stop_at_iter=2)
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoint.pth, metrics.jsonl\).*--resume.*--restart"):
        train(moco_cfg(images, out))
    assert load_untrusted(os.path.join(out, "checkpoint.pth"))["iteration"] == 2  # untouched
    with pytest.raises(ConfigError, match="choose one"):
        train(moco_cfg(images, out), resume=True, restart=True)

    train(moco_cfg(images, out), stop_at_iter=1, restart=True)
    (previous,) = glob.glob(os.path.join(out, "previous-*"))
    assert load_untrusted(os.path.join(previous, "checkpoint.pth"))["iteration"] == 2
    assert len(open(os.path.join(previous, "metrics.jsonl")).readlines()) == 2
    assert load_untrusted(os.path.join(out, "checkpoint.pth"))["iteration"] == 1


def test_the_run_log_goes_to_output_dir(images, tmp_path):
    out = tmp_path / "run"
    train(moco_cfg(images, str(out)), stop_at_iter=1)
    log = (out / "log.txt").read_text()
    assert "iterations per epoch" in log and "seed_core.trainer" in log


def test_resume_after_the_image_folder_changed_is_refused(tmp_path):
    root = tmp_path / "images"
    write_images(str(root), 24)
    out = str(tmp_path / "run")
    train(moco_cfg(str(root), out), stop_at_iter=2)
    write_images(str(root / "more"), 8, seed=1)  # 32 images: 4 iterations per epoch instead of 3
    with pytest.raises(CheckpointError, match=r"now holds 32 images .*started with 24 images.*schedule"):
        train(moco_cfg(str(root), out), resume=True)
    assert load_untrusted(os.path.join(out, "checkpoint.pth"))["iteration"] == 2


def test_a_symlink_loop_lists_each_image_once(tmp_path):
    root = tmp_path / "images"
    write_images(str(root), 6)
    os.symlink(str(root), str(root / "class0" / "loop"))           # a loop back to the root
    os.symlink(str(root / "class1"), str(root / "class1_again"))    # a second name for a folder
    os.symlink(str(root / "class0" / "img0000.png"), str(root / "class1" / "same.png"))  # a linked image
    files = list_images(str(root))
    assert len(files) == 6 and len({os.path.realpath(f) for f in files}) == 6


@pytest.mark.parametrize("setting,match", [
    ({"MODEL.STUDENT.ARCH": "resnet19"}, "MODEL.STUDENT.ARCH: unknown backbone 'resnet19'"),
    ({"SOLVER.BATCH_SIZE": 1, "QUEUE.SIZE": 4}, "BatchNorm layers of resnet18 one image per batch"),
    ({"OUTPUT_DIR": "FILE"}, "OUTPUT_DIR .* is a file, not a folder"),
])
def test_bad_run_inputs_fail_before_work(tmp_path, setting, match):
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    setting = {k: str(blocker) if v == "FILE" else v for k, v in setting.items()}
    # DATA.ROOT does not exist: the error must come before the images are even listed.
    cfg = moco_cfg(str(tmp_path / "no_images_here"), str(tmp_path / "run"), **setting)
    with pytest.raises(ConfigError, match=match):
        train(cfg)
    assert blocker.read_text() == "mine" and not os.path.exists(tmp_path / "run" / "checkpoint.pth")


def test_a_cache_dir_that_is_a_file_fails_before_features_are_computed(images, tmp_path, monkeypatch):
    import seed_core.evaluation.features as features
    monkeypatch.setattr(features, "extract_features", lambda *a, **k: pytest.fail("features computed"))
    blocker = tmp_path / "cache"
    blocker.write_text("mine")
    backbone = load_backbone(None, "resnet18", True, 0)
    with pytest.raises(ConfigError, match=r"--cache-dir.* is a file, not a folder"):
        load_or_compute_features(backbone, images, image_size=32, cache_dir=str(blocker), progress=False)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text("x", str(tmp_path / "f.txt"))
        torch.save({}, str(tmp_path / "plain.pt"))  # what a plain open() would give
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f.txt").st_mode) == mode
    assert stat.S_IMODE(os.stat(tmp_path / "plain.pt").st_mode) == mode


def test_a_folder_given_as_a_checkpoint_names_the_checkpoints_inside_it(tmp_path):
    from seed_det.convert import read_d2_pkl
    run = tmp_path / "run"
    run.mkdir()
    (run / "student_backbone.pth").write_bytes(b"x")
    for read in (load_untrusted, read_d2_pkl):
        with pytest.raises(CheckpointError, match=r"run is a folder, not a checkpoint file.*student_backbone.pth"):
            read(str(run))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_untrusted(str(tmp_path / "missing.pth"))
