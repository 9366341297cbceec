"""The applications' run cache: a result is reused for the same parameters; a step that cannot
resume never deletes a finished run made with other parameters."""
import json
import os

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
