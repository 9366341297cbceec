"""Distillation as a SLURM job through submitit: a preempted job (submitit's local executor,
SIGUSR2 as SLURM sends it) is requeued and ends exactly as an uninterrupted run; bad input and a
missing submitit are refused before anything is submitted."""
import os
import signal
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT, load_script, tiny_opts, write_images
from seed_core import zoo
from seed_core.config import load_cfg
from seed_core.errors import ConfigError, SeedError
from seed_core.slurm import SlurmOptions, executor_parameters, require_submitit, submit, time_limit_minutes
from seed_core.trainer import train


def _task_pids(controller_pid):
    """The tasks submitit's local controller started (its child processes)."""
    with open(f"/proc/{controller_pid}/task/{controller_pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _logged_steps(out):
    try:
        with open(os.path.join(out, "metrics.jsonl")) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_ends_as_an_uninterrupted_run(tmp_path, moco_teacher, monkeypatch):
    images = str(tmp_path / "images")
    write_images(images, 48, size=64)
    extra = {"SOLVER.EPOCHS": 3, "DATA.IMAGE_SIZE": 64}  # 18 iterations: long enough to be preempted mid-run
    monkeypatch.setenv("PYTHONPATH", ROOT)  # the job's processes import this checkout
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = str(tmp_path / "job")
    job = submit(load_cfg(None, tiny_opts(images, moco_teacher, out, **extra)),
                 SlurmOptions(nodes=1, gpus_per_node=1, time="10"), cluster="local")
    try:
        deadline = time.time() + 120
        while _logged_steps(out) < 3 and not job.done():
            assert time.time() < deadline, job.stderr()
            time.sleep(0.02)
        assert not job.done(), f"the job ended before it could be preempted:\n{job.stderr()}"
        for pid in _task_pids(job._process.pid):
            os.kill(pid, signal.SIGUSR2)  # what SLURM sends before a preemption or the time limit
        job.wait()
    finally:
        if not job.done():
            job.cancel()
    assert job.state == "FINISHED", job.stderr()
    log = (job.stdout() or "") + (job.stderr() or "")
    assert "Requeued job" in log, log[-3000:]
    with open(os.path.join(out, "log.txt")) as f:
        run_log = f.read()
    # stopped at a step with a checkpoint, then a second attempt (which resumes: see the weights)
    assert "received SIGTERM" in run_log and run_log.count("iterations in total") == 2, run_log[-3000:]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the job's process
    try:
        reference = train(load_cfg(None, tiny_opts(images, moco_teacher, str(tmp_path / "whole"), **extra)))
    finally:
        torch.set_num_threads(threads)
    a = torch.load(reference["backbone"], weights_only=True)
    b = torch.load(os.path.join(out, "student_backbone.pth"), weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_executor_parameters_follow_the_options():
    cfg = load_cfg(None, ["DATA.NUM_WORKERS", "6"])
    params = executor_parameters(cfg, SlurmOptions(nodes=4, gpus_per_node=8, partition="gpu", time="2-00:00:00"))
    assert params == {"name": "seed-distill", "nodes": 4, "gpus_per_node": 8, "tasks_per_node": 8,
                      "timeout_min": 2 * 24 * 60, "cpus_per_task": 7, "slurm_partition": "gpu"}
    assert executor_parameters(cfg, SlurmOptions(cpus_per_task=3))["cpus_per_task"] == 3


@pytest.mark.parametrize("text, minutes", [("90", 90), ("1:30", 2), ("1:30:00", 90), ("1-12", 36 * 60),
                                           ("1-00:01", 24 * 60 + 1), ("0-00:00:30", 1)])
def test_slurm_time_limits(text, minutes):
    assert time_limit_minutes(text) == minutes


@pytest.mark.parametrize("text", ["", "0", "1h", "1:2:3:4", "-5"])
def test_bad_time_limits_are_refused(text):
    with pytest.raises(ConfigError, match="not a SLURM time limit"):
        time_limit_minutes(text)


def test_missing_submitit_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    with pytest.raises(SeedError, match=r"pip install \"seed-transfer\[slurm\]\""):
        require_submitit()


@pytest.fixture
def distill_argv(tmp_path, images, moco_teacher):
    return ["--output-dir", str(tmp_path / "run"), *tiny_opts(images, moco_teacher, str(tmp_path / "run"))]


@pytest.mark.parametrize("flags, message", [
    (["--nodes", "2"], "--nodes only apply with --slurm"),
    (["--slurm", "--nodes", "0", "--gpus-per-node", "1"], "--nodes 0 must be >= 1"),
    (["--slurm", "--gpus-per-node", "0"], "--gpus-per-node 0 must be >= 1"),
    (["--slurm", "--gpus-per-node", "1", "--time", "soon"], "not a SLURM time limit"),
    (["--slurm", "--gpus-per-node", "3"], "SOLVER.BATCH_SIZE = 8 must be divisible by the number of processes (3)"),
    (["--slurm", "--gpus-per-node", "1", "--stop-at-iter", "2"], "--stop-at-iter does not apply"),
    (["--slurm", "--gpus-per-node", "1", "--resume"], "no checkpoint"),
    (["--slurm", "--gpus-per-node", "1", "DATA.ROOT", "/nonexistent"], "DATA.ROOT /nonexistent is not a folder"),
])
def test_bad_slurm_input_is_one_error_line_and_nothing_is_submitted(distill_argv, tmp_path, capsys, flags, message):
    assert load_script("tools/distill.py").main(distill_argv + flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "run" / "slurm")


def test_slurm_without_submitit_is_one_error_line(distill_argv, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    assert load_script("tools/distill.py").main(distill_argv + ["--slurm", "--gpus-per-node", "1"]) == 2
    err = capsys.readouterr().err
    assert "submitit" in err and "pip install" in err


def test_slurm_needs_sbatch(distill_argv, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch: not a SLURM login node
    assert load_script("tools/distill.py").main(distill_argv + ["--slurm", "--gpus-per-node", "1"]) == 2
    assert "sbatch is not on PATH" in capsys.readouterr().err


def test_a_run_in_the_folder_is_refused_without_resume_or_restart(tmp_path, images, moco_teacher):
    out = tmp_path / "run"
    os.makedirs(out)
    (out / "checkpoint.pth").write_bytes(b"x")
    cfg = load_cfg(None, tiny_opts(images, moco_teacher, str(out)))
    with pytest.raises(ConfigError, match="already holds a run"):
        submit(cfg, SlurmOptions(gpus_per_node=1), cluster="local")
    assert not os.path.exists(out / "slurm")


def test_a_zoo_teacher_is_fetched_at_submission_and_the_job_keeps_its_name(tmp_path, images, moco_teacher,
                                                                             file_server, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with open(moco_teacher, "rb") as f:
        file_server.files["/moco.pth"] = f.read()
    monkeypatch.setitem(zoo.CATALOGUE, "toy", zoo.ZooEntry("toy", file_server.url("/moco.pth"), "resnet18", "moco",
                                                           None, "a test file"))
    submitted = []

    class Executor:  # submitit's, minus the cluster: records what would be submitted
        def __init__(self, folder, cluster):
            pass

        def update_parameters(self, **params):
            pass

        def submit(self, job):
            submitted.append(job)
            return SimpleNamespace(job_id="1", paths=SimpleNamespace(folder="slurm"))

    monkeypatch.setattr(require_submitit(), "AutoExecutor", Executor)
    cfg = load_cfg(None, tiny_opts(images, "zoo:toy", str(tmp_path / "run")))
    submit(cfg, SlurmOptions(gpus_per_node=1), cluster="local")
    assert os.path.isfile(zoo.cache_path("toy")) and len(file_server.requests) == 1  # fetched before the job
    assert "WEIGHTS: zoo:toy" in submitted[0].cfg_text  # not made into a path


def test_an_unreachable_zoo_teacher_stops_the_submission(tmp_path, images, file_server, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setitem(zoo.CATALOGUE, "toy", zoo.ZooEntry("toy", file_server.url("/missing.pth"), "resnet18",
                                                           "moco", None, "a test file"))
    with pytest.raises(SeedError, match="could not download"):
        submit(load_cfg(None, tiny_opts(images, "zoo:toy", str(tmp_path / "run"))), SlurmOptions(gpus_per_node=1),
               cluster="local")
    assert not os.path.exists(tmp_path / "run" / "slurm")
