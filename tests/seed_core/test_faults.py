"""Faults injected into real runs: kill -9, preemption signals, disk full, unwritable output,
a dying rank. Each must leave a complete checkpoint and a run that resumes exactly."""
import errno
import glob
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, moco_state, tiny_opts, write_images
from seed_core.checkpoint_io import CheckpointError, load_untrusted
from seed_core.config import ConfigError, load_cfg
from seed_core.trainer import train

pytestmark = pytest.mark.slow
WORKER = os.path.join(ROOT, "tests", "seed_core", "worker.py")


def _worker(opts, env=None, resume=False, timeout=240, wait=True):
    cmd = [sys.executable, WORKER, *opts] + (["--resume"] if resume else [])
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)


def _final_state(out):
    ckpt = load_untrusted(os.path.join(out, "checkpoint.pth"))
    return ckpt


def _assert_same_run(a, b):
    ca, cb = _final_state(a), _final_state(b)
    assert ca["iteration"] == cb["iteration"]
    for k, v in ca["student"].items():
        assert torch.equal(v, cb["student"][k]), k
    assert torch.equal(ca["queue"]["embeddings"], cb["queue"]["embeddings"])


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Images, a teacher and one uninterrupted reference run, shared by every fault test."""
    root = tmp_path_factory.mktemp("faults")
    write_images(str(root / "images"), 24)
    torch.save(moco_state("resnet18"), root / "teacher.pth")
    images, teacher = str(root / "images"), str(root / "teacher.pth")
    out = str(root / "reference")
    # In a worker process like the faulty runs: same thread count, so bit-identical arithmetic.
    done = _worker(tiny_opts(images, teacher, out, **{"TRAIN.CHECKPOINT_PERIOD": 1}))
    assert done.returncode == 0, done.stderr[-2000:]
    return images, teacher, out


@pytest.fixture
def images(shared):
    return shared[0]


@pytest.fixture
def moco_teacher(shared):
    return shared[1]


@pytest.fixture
def reference_run(shared):
    return shared[2]


# 6 iterations (3 per epoch), a checkpoint after each: kill points before steps and inside writes.
# With the random-time kill below: five different points, two of them inside a checkpoint write.
KILL_POINTS = [("KILL_STEP", "2"), ("KILL_WRITE", "3"), ("KILL_STEP", "4"), ("KILL_WRITE", "6")]


@pytest.mark.parametrize("fault,where", KILL_POINTS, ids=[f"{f}={w}" for f, w in KILL_POINTS])
def test_kill_9_then_resume_matches_uninterrupted_run(images, moco_teacher, tmp_path, reference_run, fault, where):
    out = str(tmp_path / "killed")
    opts = tiny_opts(images, moco_teacher, out, **{"TRAIN.CHECKPOINT_PERIOD": 1})
    killed = _worker(opts, env={fault: where})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # the checkpoint on disk is complete: it loads, and it is the last one fully written
    ckpt = load_untrusted(os.path.join(out, "checkpoint.pth"))
    expected = int(where) - 1 if fault == "KILL_WRITE" else int(where)
    assert ckpt["iteration"] == expected
    if fault == "KILL_WRITE":
        assert glob.glob(os.path.join(out, ".checkpoint.pth.*.tmp"))  # the torn write went to a temp file
    resumed = _worker(opts, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not glob.glob(os.path.join(out, ".checkpoint.pth.*.tmp"))
    _assert_same_run(reference_run, out)


def test_kill_9_at_a_random_time(images, moco_teacher, tmp_path, reference_run):
    out = str(tmp_path / "random")
    opts = tiny_opts(images, moco_teacher, out, **{"TRAIN.CHECKPOINT_PERIOD": 1})
    proc = _worker(opts, env={"SLOW": "0.3"}, wait=False)
    rng = __import__("random").Random(7)
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(out, "checkpoint.pth")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.9))
    proc.kill()
    proc.wait()
    load_untrusted(os.path.join(out, "checkpoint.pth"))
    assert _worker(opts, resume=True).returncode == 0
    _assert_same_run(reference_run, out)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_preemption_signal_writes_checkpoint_and_exits_cleanly(images, moco_teacher, tmp_path, reference_run, sig):
    out = str(tmp_path / "preempted")
    opts = tiny_opts(images, moco_teacher, out, **{"TRAIN.CHECKPOINT_PERIOD": 1})
    proc = _worker(opts, env={"SLOW": "0.4"}, wait=False)
    metrics = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and (not os.path.exists(metrics) or len(open(metrics).readlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "continue with --resume" in err and "Traceback" not in err
    stopped_at = load_untrusted(os.path.join(out, "checkpoint.pth"))["iteration"]
    assert 2 <= stopped_at < 6
    assert _worker(opts, resume=True).returncode == 0
    _assert_same_run(reference_run, out)


def test_disk_full_during_checkpoint_keeps_previous(images, moco_teacher, tmp_path, monkeypatch):
    import seed_core.checkpoint_io as cio
    real_save, calls = torch.save, []

    def full_disk(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(cio.torch, "save", full_disk)
    out = str(tmp_path / "full")
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint.*intact"):
        train(load_cfg(None, tiny_opts(images, moco_teacher, out, **{"TRAIN.CHECKPOINT_PERIOD": 1})))
    monkeypatch.setattr(cio.torch, "save", real_save)
    assert load_untrusted(os.path.join(out, "checkpoint.pth"))["iteration"] == 2
    assert not glob.glob(os.path.join(out, ".checkpoint.pth.*.tmp"))


def test_unwritable_output_dir_fails_before_training(images, moco_teacher, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="OUTPUT_DIR .* is not writable"):
        train(load_cfg(None, tiny_opts(images, moco_teacher, str(blocker / "run"))))


def test_a_dying_rank_makes_the_other_exit_with_a_clear_error(images, moco_teacher, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp")
    opts = tiny_opts(images, moco_teacher, out, **{"TRAIN.DIST_TIMEOUT": 30, "SOLVER.EPOCHS": 4})
    procs = []
    for rank in (0, 1):
        env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "DIE": "1:2"}
        procs.append(_worker(opts, env=env, wait=False))
    _, err0 = procs[0].communicate(timeout=120)  # a hang guard, not a speed check
    procs[1].communicate(timeout=30)
    assert procs[1].returncode == 3
    assert procs[0].returncode not in (0, None)
    assert "lost contact with the other processes at iteration 2" in err0, err0[-2000:]
