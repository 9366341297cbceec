"""Independent demo steps side by side in worker processes (tools/apps/side_by_side.py)."""
import os

import pytest

from tools.apps.side_by_side import Step, StepFailed, run_steps


def square(x):
    print(f"squaring {x}")
    return {"pid": os.getpid(), "value": x * x}


def fail(x):
    raise ValueError(f"no good: {x}")


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


def test_a_failed_step_names_itself_and_its_log_after_the_others_finish(tmp_path):
    steps = [Step("bad", fail, (7,)), Step("good", square, (5,))]
    with pytest.raises(StepFailed, match=r"bad: ValueError: no good: 7 \(log: .*bad\.log\)"):
        run_steps(steps, processes=2, log_dir=str(tmp_path))
