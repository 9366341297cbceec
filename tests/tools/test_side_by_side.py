"""Independent demo steps side by side in worker processes (tools/pipeline/side_by_side.py)."""
import os

import pytest
from torch.utils.data import DataLoader, Dataset

from seed_core.errors import DatasetError
from tools import cli
from tools.pipeline.side_by_side import Step, StepFailed, run_steps


def square(x):
    print(f"squaring {x}")
    return {"pid": os.getpid(), "value": x * x}


def fail(x):
    raise ValueError(f"no good: {x}")


@pytest.mark.slow
def test_steps_run_in_worker_processes_with_their_output_in_logs(tmp_path, capsys):
    steps = [Step(f"sq{i}", square, (i,)) for i in range(3)]
    out = run_steps(steps, processes=2, log_dir=str(tmp_path / "logs"))
    assert {k: v["value"] for k, v in out.items()} == {"sq0": 0, "sq1": 1, "sq2": 4}
    assert all(v["pid"] != os.getpid() for v in out.values())
    assert "squaring 2" in (tmp_path / "logs" / "sq2.log").read_text()
    assert "squaring" not in capsys.readouterr().out   # two progress bars never interleave on the console


def test_one_process_runs_inline():
    out = run_steps([Step("a", square, (3,)), Step("b", square, (4,))], processes=1, log_dir="unused")
    assert [v["pid"] for v in out.values()] == [os.getpid()] * 2 and out["b"]["value"] == 16


@pytest.mark.slow
def test_a_failed_step_names_itself_and_its_log_after_the_others_finish(tmp_path):
    steps = [Step("bad", fail, (7,)), Step("good", square, (5,))]
    with pytest.raises(StepFailed, match=r"^step bad failed: ValueError: no good: 7 \(details: .*bad\.log\)$"):
        run_steps(steps, processes=2, log_dir=str(tmp_path))


class _Unreadable(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise DatasetError("image 7.png cannot be read;\nreplace it")


def fail_in_a_loader_worker():
    list(DataLoader(_Unreadable(), num_workers=1))


def test_a_failed_step_reaches_the_user_as_one_line_with_its_log(tmp_path, capsys):
    """A SeedError raised in a DataLoader worker of a step: the tool prints the step, the message the
    step would have printed and its log, which holds the traceback."""
    steps = [Step("distill", fail_in_a_loader_worker), Step("good", square, (2,))]
    assert cli.run(lambda: run_steps(steps, processes=2, log_dir=str(tmp_path))) == 2
    err = capsys.readouterr().err
    log = tmp_path / "distill.log"
    assert err == f"error: step distill failed: image 7.png cannot be read; replace it (details: {log})\n"
    assert "Original Traceback" in log.read_text() and "__getitem__" in log.read_text()


def stamp(name, log, wait_for=None):
    """Appends its name to a shared file when it starts and when it ends; with `wait_for`, it ends
    only once that step has started (so the two must run at the same time)."""
    import time
    with open(log, "a") as f:
        f.write(f"start {name}\n")
    deadline = time.time() + 120
    while wait_for and f"start {wait_for}" not in open(log).read():
        if time.time() > deadline:
            raise TimeoutError(f"{wait_for} never started beside {name}")
        time.sleep(0.05)
    with open(log, "a") as f:
        f.write(f"end {name}\n")
    return name


@pytest.mark.slow
def test_a_step_starts_only_after_the_steps_it_needs(tmp_path):
    log = str(tmp_path / "order.txt")
    steps = [Step("a", stamp, ("a", log, "c")), Step("b", stamp, ("b", log), after=("a",)),
             Step("c", stamp, ("c", log)), Step("d", stamp, ("d", log), after=("b", "c"))]
    out = run_steps(steps, processes=2, log_dir=str(tmp_path / "logs"))  # c needs nothing: it runs beside a
    assert set(out) == {"a", "b", "c", "d"}
    lines = open(log).read().split("\n")
    assert lines.index("end a") < lines.index("start b")
    assert lines.index("end b") < lines.index("start d") and lines.index("end c") < lines.index("start d")


@pytest.mark.slow
def test_steps_that_need_a_failed_step_are_reported_not_run(tmp_path):
    steps = [Step("bad", fail, (1,)), Step("later", square, (2,), after=("bad",)), Step("free", square, (3,))]
    with pytest.raises(StepFailed, match=r"(?s)bad: ValueError.*later: not run: it needs bad"):
        run_steps(steps, processes=2, log_dir=str(tmp_path))
    assert not (tmp_path / "later.log").exists() and "squaring 3" in (tmp_path / "free.log").read_text()


def test_a_step_listed_before_what_it_needs_is_refused():
    with pytest.raises(ValueError, match="'b' runs after \\['a'\\]"):
        run_steps([Step("b", square, (1,), after=("a",)), Step("a", square, (2,))], processes=1, log_dir="unused")


SCHEDULER = """
import sys, time
sys.path.insert(0, {root!r})
from tools.pipeline.side_by_side import Step, run_steps
from test_side_by_side import sleep_and_write
if __name__ == "__main__":
    run_steps([Step("a", sleep_and_write, ({out!r},)), Step("b", sleep_and_write, ({out!r},))], 2, {logs!r})
"""


def sleep_and_write(out):
    """Like a distillation: on SIGTERM it finishes cleanly (returns) instead of dying."""
    import signal
    import time
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(True))
    with open(out, "a") as f:
        f.write(f"{os.getpid()}\n")
    end = time.time() + 120
    while not stop and time.time() < end:
        time.sleep(0.1)
    return "stopped"


@pytest.mark.slow
def test_workers_stop_when_their_scheduler_is_killed(tmp_path):
    """A killed benchmark must not leave workers training on into folders the next run resumes, nor
    idle workers that stopped cleanly but wait for work that never comes."""
    import signal
    import subprocess
    import sys
    import time
    from conftest import ROOT
    out = tmp_path / "pids"
    script = tmp_path / "scheduler.py"
    script.write_text(SCHEDULER.format(root=ROOT, out=str(out), logs=str(tmp_path / "logs")))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests", "tools"), os.path.join(ROOT, "tests")]))
    parent = subprocess.Popen([sys.executable, str(script)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(out.read_text().split()) < 2):
        time.sleep(0.2)
    workers = [int(p) for p in out.read_text().split()]
    assert len(workers) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 30
    alive = workers
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [p for p in workers if _alive(p)]
    assert not alive, f"workers {alive} outlived their scheduler"


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
