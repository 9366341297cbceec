"""benchmarks/lr_sweep.py on its tiny preset, and the sweep points' checks."""
import json

import pytest
import torch

from conftest import load_script
from tools.benchmarking.lr_sweep import at_lr_edge, pick_best, read_point, sweep_grid, sweep_table


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()  # the CLI sets the torch thread count for the whole process
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_tiny_sweep_picks_a_point_per_method_and_reruns_it(tmp_path, restore_threads):
    out, work = tmp_path / "out", tmp_path / "work"
    assert load_script("benchmarks/lr_sweep.py").main(["--tiny", "--out-dir", str(out), "--work-dir", str(work)]) == 0
    result = json.loads((out / "lr_sweep_resnet18.json").read_text())
    assert [r["point"] for r in result["sweep"]] == ["mocov2_lr0.03", "mocov2_m0.999_lr0.03", "seed_lr0.015",
                                                     "seed_lr0.03", "l2_lr0.03"]
    assert result["sweep"][1]["overrides"] == {"LOSS.MOCO_MOMENTUM": 0.999, "SOLVER.BASE_LR": 0.03}
    for method in ("moco", "seed", "l2"):
        rows = [r for r in result["sweep"] if r["method"] == method]
        best = max(rows, key=lambda r: r["top1_mean"])
        assert result["best"][method] == best["point"]
        assert result["final"][method]["point"] == best["point"]
    # Different settings are different runs of the cache.
    assert len(list((work / "runs").glob("resnet18-moco-s0-*"))) == 2
    assert "(best)" in (out / "lr_sweep_resnet18.md").read_text()


def test_pick_best_takes_the_highest_mean_per_method():
    rows = [{"method": "moco", "point": "a", "top1_mean": 90.0}, {"method": "moco", "point": "b", "top1_mean": 92.0},
            {"method": "seed", "point": "c", "top1_mean": 95.0}, {"method": "moco", "point": "d", "top1_mean": 92.0}]
    assert {m: r["point"] for m, r in pick_best(rows).items()} == {"moco": "b", "seed": "c"}


@pytest.mark.parametrize("text, message", [
    ("SOLVER:\n  BASE_LR: 0.1\n", "LOSS.NAME"),
    ("LOSS:\n  NAME: random\n", "LOSS.NAME"),
    ("LOSS:\n  NAME: moco\nSEED: 3\n", "set by the harness"),
    ("LOSS:\n  NAME: moco\nSOLVER:\n  BASE_LRR: 0.1\n", "BASE_LRR"),
])
def test_bad_sweep_points_are_refused(tmp_path, text, message):
    path = tmp_path / "point.yaml"
    path.write_text(text)
    with pytest.raises(Exception, match=message):
        read_point(path)


def _row(method, lr, **other):
    return {"method": method, "point": f"{method}{lr}", "overrides": {"SOLVER.BASE_LR": lr, **other}}


def test_a_best_lr_at_the_edge_of_its_series_is_flagged():
    rows = [_row("moco", 0.01), _row("moco", 0.03), _row("moco", 0.09),
            _row("moco", 0.01, **{"LOSS.MOCO_MOMENTUM": 0.999}), _row("seed", 0.03)]
    assert [at_lr_edge(r, rows) for r in rows] == [-1, 0, 1, 0, 0]  # one-lr series are not flagged


def test_the_sweep_table_names_the_teacher_and_an_edge():
    sweep = [{**_row("seed", lr), "top1_mean": m, "top1_std": 0.5} for lr, m in ((0.03, 90.0), (0.06, 93.0))]
    result = {"arch": "resnet18", "sweep_seeds": [0], "final_seeds": [0, 1], "sweep": sweep,
              "best": {"seed": "seed0.06"}, "final": {"seed": {**sweep[1], "top1_std": 0.4}}, "teacher_top1": 92.8}
    text = sweep_table(result)
    assert "teacher: k-NN top-1 92.8" in text and "SEED: the best point has the highest lr" in text


def test_the_grid_puts_each_lr_on_a_row_and_each_series_in_a_column():
    sweep = [{**_row("moco", 0.03), "top1_mean": 50.0, "top1_std": 1.0},
             {**_row("moco", 0.03, **{"LOSS.MOCO_MOMENTUM": 0.999}), "point": "m999", "top1_mean": 55.0,
              "top1_std": 2.0},
             {**_row("seed", 0.06), "top1_mean": 93.0, "top1_std": 0.5}]
    result = {"sweep": sweep, "best": {"moco": sweep[1]["point"], "seed": sweep[2]["point"]}}
    lines = sweep_grid(result).splitlines()
    assert lines[0] == "| lr (per 256 images) | MoCo-v2 alone | MoCo-v2 alone, LOSS.MOCO_MOMENTUM 0.999 | SEED |"
    assert lines[2] == "| 0.03 | 50.0 ± 1.0 | **55.0 ± 2.0** |  |"
    assert lines[3] == "| 0.06 |  |  | **93.0 ± 0.5** |"
