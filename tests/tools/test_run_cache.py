"""The applications' run cache: a result is reused for the same parameters; a step that cannot
resume never deletes a finished run made with other parameters; two processes never run one step at once."""
import json
import multiprocessing as mp
import os
import time

from seed_core.errors import SeedError
from seed_core.run_dir import LOCK_FILE
from tools.pipeline.run_cache import MARKER, CachedRun


def _write(folder, name, text):
    with open(os.path.join(folder, name), "w") as f:
        f.write(text)
    return {"value": text}


def test_same_parameters_reuse_the_result_without_running(tmp_path):
    d = tmp_path / "step"
    assert CachedRun(d, {"iters": 300}).run(lambda: _write(d, "out.txt", "a"), fresh=True) == \
        {"value": "a", "seconds": json.load(open(d / MARKER))["result"]["seconds"]}
    def must_not_run():
        raise AssertionError("the cached result should have been reused")
    assert CachedRun(d, {"iters": 300}).run(must_not_run, fresh=True)["value"] == "a"


def test_a_finished_run_with_other_parameters_is_moved_aside_not_deleted(tmp_path):
    d = tmp_path / "step"
    CachedRun(d, {"iters": 300}).run(lambda: _write(d, "out.txt", "300"), fresh=True)
    result = CachedRun(d, {"iters": 1200}).run(lambda: _write(d, "out.txt", "1200"), fresh=True)
    assert result["value"] == "1200" and open(d / "out.txt").read() == "1200"
    [previous] = [n for n in os.listdir(d) if n.startswith("previous-")]
    assert open(d / previous / "out.txt").read() == "300"
    assert json.load(open(d / previous / MARKER))["params"] == {"iters": 300}

    # leftovers of an attempt that never finished are removed; the runs moved aside stay
    os.remove(d / MARKER)
    _write(d, "partial.txt", "x")
    CachedRun(d, {"iters": 50}).run(lambda: _write(d, "out.txt", "50"), fresh=True)
    assert sorted(n for n in os.listdir(d) if not n.startswith("previous-")) == sorted([MARKER, "out.txt"])
    assert [n for n in os.listdir(d) if n.startswith("previous-")] == [previous]


def _step_at_once(folder, barrier, results):
    """One of several processes sharing a cache folder that start the same step at the same moment."""
    def work():
        with open(os.path.join(folder, "ran.txt"), "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # still running while the others try
        return {"pid": os.getpid()}
    barrier.wait()
    try:
        results.put(("done", CachedRun(folder, {"iters": 1}).run(work, fresh=True)["pid"]))
    except SeedError as e:
        results.put(("refused", str(e)))


def test_two_processes_starting_one_step_at_once_never_both_run_it(tmp_path):
    d = str(tmp_path / "step")
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_step_at_once, args=(d, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    (done,) = [o for o in outcomes if o[0] == "done"]
    (refused,) = [o for o in outcomes if o[0] == "refused"]
    assert "the folder of step step" in refused[1] and "in use by another run" in refused[1]
    assert open(os.path.join(d, "ran.txt")).read() == f"{done[1]}\n"  # the step ran once
    assert not os.path.exists(os.path.join(d, LOCK_FILE))
    # the next process reuses the finished step instead of running it again
    assert CachedRun(d, {"iters": 1}).run(lambda: {"pid": -1})["pid"] == done[1]


def test_an_attempt_killed_midway_is_resumed_only_with_the_parameters_it_began_with(tmp_path):
    d = tmp_path / "step"

    def killed():
        _write(d, "checkpoint.txt", "half")
        raise KeyboardInterrupt
    try:
        CachedRun(d, {"teacher": "A"}).run(killed)
    except KeyboardInterrupt:
        pass
    assert not CachedRun(d, {"teacher": "A"}).outdated()  # same parameters: its checkpoint continues
    assert CachedRun(d, {"teacher": "B"}).outdated()  # the teacher changed since: it must start over
    CachedRun(d, {"teacher": "A"}).run(lambda: _write(d, "out.txt", "done"))
    assert "attempt.json" not in os.listdir(d)
    assert not CachedRun(d, {"teacher": "A"}).outdated() and CachedRun(d, {"teacher": "B"}).outdated()
    assert not CachedRun(tmp_path / "never", {"teacher": "A"}).outdated()
    # A finished with A, then an attempt with B killed midway: B's checkpoint resumes, A's marker
    # being older than B's attempt; any third setting starts over.
    try:
        CachedRun(d, {"teacher": "B"}).run(killed)
    except KeyboardInterrupt:
        pass
    assert not CachedRun(d, {"teacher": "B"}).outdated()
    assert CachedRun(d, {"teacher": "C"}).outdated()
    assert CachedRun(d, {"teacher": "A"}).cached() is not None  # A's result is still there to reuse


def test_a_distillation_stage_begun_with_another_teacher_restarts_instead_of_resuming(tmp_path, monkeypatch):
    from tools.pipeline import demo
    calls = []

    def fake_distill(stage, opts, restart):
        calls.append(restart)
        if len(calls) == 1:
            raise KeyboardInterrupt  # killed midway, its checkpoint left behind
        return {"backbone": "b.pth", "checkpoint": "c.pth"}
    monkeypatch.setattr(demo, "_distill", fake_distill)
    try:
        demo._distill_stage(str(tmp_path), "student", {"SOLVER.EPOCHS": 16}, identity={"teacher": {"epochs": 48}})
    except KeyboardInterrupt:
        pass
    demo._distill_stage(str(tmp_path), "student", {"SOLVER.EPOCHS": 16}, identity={"teacher": {"epochs": 96}})
    assert calls == [False, True]
