"""A run folder is never shared or silently reused: the one policy (seed_core.run_dir.claim_run_dir)
every tool and both detection engines follow - refusal of a folder holding a run, --overwrite moving
it aside, and the lock that lets exactly one of two runs started at once write there."""
import glob
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys

import pytest

from seed_core.errors import ConfigError, RunFolderError, SeedError
from seed_core.run_dir import LOCK_FILE, RunLock, claim_output_file, claim_run_dir


def _claim_and_hold(folder, barrier, results):
    """A run started at the same moment as the others: claim, hold the folder a while, report."""
    barrier.wait()
    try:
        with claim_run_dir(folder, markers=("metrics.json",)):
            with open(os.path.join(folder, "metrics.json"), "a") as f:
                f.write(f"{os.getpid()}\n")
            results.put(("ran", os.getpid()))
            barrier.wait()  # every other run has tried while this one held the folder
    except SeedError as e:
        results.put(("refused", str(e)))
        barrier.wait()


@pytest.mark.parametrize("runs", [2, 4])
def test_runs_started_at_once_on_one_folder_exactly_one_proceeds(tmp_path, runs):
    folder = str(tmp_path / "run")
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(runs), ctx.Queue()
    procs = [ctx.Process(target=_claim_and_hold, args=(folder, barrier, results)) for _ in range(runs)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    ran = [o for o in outcomes if o[0] == "ran"]
    refused = [o[1] for o in outcomes if o[0] == "refused"]
    assert len(ran) == 1 and len(refused) == runs - 1
    for message in refused:
        assert "is in use by another run (process" in message and socket.gethostname() in message
    assert open(os.path.join(folder, "metrics.json")).read() == f"{ran[0][1]}\n"  # written by one run only
    assert not os.path.exists(os.path.join(folder, LOCK_FILE))  # released when that run ended


def _write_lock(folder, pid, host):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_FILE), "w") as f:
        json.dump({"pid": pid, "host": host, "started": "2026-01-01 00:00:00 +0000"}, f)


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = str(tmp_path / "run")
    _write_lock(folder, dead.pid, socket.gethostname())
    with claim_run_dir(folder):
        owner = json.load(open(os.path.join(folder, LOCK_FILE)))
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    assert f"removed the lock left by process {dead.pid}" in caplog.text
    assert not os.path.exists(os.path.join(folder, LOCK_FILE))


def test_a_live_or_foreign_lock_is_refused_whatever_the_flags(tmp_path):
    folder = str(tmp_path / "run")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(folder, live.pid, socket.gethostname())
        for flags in ({}, {"resume": True}, {"overwrite": True}):
            with pytest.raises(RunFolderError, match=f"in use by another run \\(process {live.pid} on "):
                claim_run_dir(folder, **flags)
    finally:
        live.kill()
        live.wait()
    _write_lock(folder, 1, "another-machine")
    with pytest.raises(RunFolderError, match=r"another-machine.*from another machine.*if that run is over, delete "
                                             + glob.escape(os.path.join(folder, LOCK_FILE))):
        claim_run_dir(folder)
    assert json.load(open(os.path.join(folder, LOCK_FILE)))["host"] == "another-machine"  # left as it was


def test_a_folder_holding_a_run_needs_resume_or_overwrite_and_overwrite_moves_it_aside(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.json").write_text("{}")
    (folder / "model_final.pth").write_text("weights")
    with pytest.raises(RunFolderError, match=r"already holds a run \(metrics.json\).*--resume.*--overwrite"
                                             r".*previous-<time>.*nothing is deleted"):
        claim_run_dir(str(folder), markers=("metrics.json",))
    assert not (folder / LOCK_FILE).exists()  # a refusal leaves no lock behind
    with pytest.raises(ConfigError, match="choose one"):
        claim_run_dir(str(folder), markers=("metrics.json",), resume=True, overwrite=True)
    with claim_run_dir(str(folder), markers=("metrics.json",), resume=True):
        assert (folder / "metrics.json").exists()  # continued, untouched
    with claim_run_dir(str(folder), markers=("metrics.json",), overwrite=True,
                       outputs=("metrics.json", "model_final.pth")):
        assert sorted(os.listdir(folder)) == [LOCK_FILE] + [n for n in os.listdir(folder) if n.startswith("previous-")]
    (previous,) = folder.glob("previous-*")
    assert (previous / "metrics.json").read_text() == "{}" and (previous / "model_final.pth").read_text() == "weights"


def test_an_output_path_that_is_a_file_or_not_writable_is_one_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        claim_run_dir(str(blocker))
    with pytest.raises(ConfigError, match="is not writable"):
        claim_run_dir(str(blocker / "run"))
    with pytest.raises(ConfigError, match="is a folder: give a file name"):
        claim_output_file(str(tmp_path))
    assert blocker.read_text() == "mine"


def test_an_output_file_is_refused_or_moved_aside_and_locked_while_written(tmp_path):
    out = tmp_path / "metrics.json"
    out.write_text("old")
    with pytest.raises(RunFolderError, match="exists already; pass --overwrite"):
        claim_output_file(str(out))
    with claim_output_file(str(out), overwrite=True):
        assert not out.exists() and (tmp_path / ".metrics.json.lock").exists()
        out.write_text("new")
    (previous,) = tmp_path.glob("previous-*")
    assert (previous / "metrics.json").read_text() == "old" and out.read_text() == "new"
    assert not (tmp_path / ".metrics.json.lock").exists()


def test_a_step_of_this_process_shares_the_lock_its_caller_holds(tmp_path):
    """A cached stage holds its folder's lock and runs a distillation into that same folder."""
    folder = str(tmp_path / "stage")
    with claim_run_dir(folder):
        with claim_run_dir(folder, markers=("checkpoint.pth",)):
            pass
        assert os.path.exists(os.path.join(folder, LOCK_FILE))  # still the caller's
        assert RunLock(folder).acquire().nested
    assert not os.path.exists(os.path.join(folder, LOCK_FILE))
