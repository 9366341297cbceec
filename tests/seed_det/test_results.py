"""metrics.json, the results CSV and the markdown table."""
import csv
import json
import os
import subprocess
import sys

import pytest

from seed_core.errors import SeedError
from seed_det.results import CSV_FIELDS, default_csv_path, read_results, record_run, render_markdown, \
    split_config_name

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
BOX = {"AP": 50.123, "AP50": 80.0, "AP75": 55.5}


def test_record_run_writes_json_and_appends_rows(tmp_path):
    out = tmp_path / "output" / "voc_r18_seed"
    row = record_run(out, "configs/voc_r18_seed.yaml", "pretrained/seed_r18.pkl", BOX, engine="detectron2")
    assert row["AP"] == "50.12" and row["mask_AP"] == ""
    record = json.loads((out / "metrics.json").read_text())
    assert record["metrics"]["AP"] == pytest.approx(50.123) and record["engine"] == "detectron2"

    csv_path = tmp_path / "output" / "results_detection.csv"
    assert default_csv_path(out) == str(csv_path)
    record_run(out, "configs/voc_r18_seed.yaml", "w.pkl", {**BOX, "mask_AP": 30.0}, engine="torchvision")
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["engine"] for r in rows] == ["detectron2", "torchvision"]
    assert rows[0]["output"] == str(out) and rows[0]["mode"] == "train"
    assert rows[1]["mask_AP"] == "30.00"
    assert csv_path.read_text().splitlines()[0] == ",".join(CSV_FIELDS)
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]


def test_explicit_csv_and_nan(tmp_path):
    csv_path = tmp_path / "elsewhere" / "table.csv"
    record_run(tmp_path / "run", "c.yaml", "", {**BOX, "AP75": float("nan"), "APs": float("nan"),
                                                 "per_dataset": {"x": {"bbox": {"APl": float("nan")}}}},
               csv_path=csv_path)
    assert read_results(csv_path)[0]["AP75"] == ""
    text = (tmp_path / "run" / "metrics.json").read_text()
    assert "NaN" not in text  # strict JSON
    metrics = json.loads(text)["metrics"]
    assert metrics["AP75"] is None and metrics["APs"] is None and metrics["per_dataset"]["x"]["bbox"]["APl"] is None


def test_bad_metrics_and_foreign_csv(tmp_path):
    with pytest.raises(SeedError, match="AP75"):
        record_run(tmp_path / "run", "c.yaml", "", {"AP": 1.0, "AP50": 2.0})
    foreign = tmp_path / "results.csv"
    foreign.write_text("a,b\n1,2\n")
    with pytest.raises(SeedError, match="not a results file of this project"):
        record_run(tmp_path / "run", "c.yaml", "", BOX, csv_path=foreign)
    assert foreign.read_text() == "a,b\n1,2\n"
    with pytest.raises(SeedError, match="not found"):
        read_results(tmp_path / "none.csv")


def test_split_config_name():
    assert split_config_name("configs/voc_r18_seed.yaml") == ("voc_r18", "seed")
    assert split_config_name("coco_r34_fpn_2x_mocov2.yaml") == ("coco_r34_fpn_2x", "mocov2")
    assert split_config_name("/x/mine.yaml") == ("mine", "other")


def _row(config, ap, mask="", mode="train"):
    return {"timestamp": "t", "config": config, "weights": "w", "engine": "detectron2", "AP": ap,
            "AP50": "1.00", "AP75": "2.00", "mask_AP": mask, "mode": mode}


def test_markdown_side_by_side():
    table = render_markdown([
        _row("configs/voc_r18_random.yaml", "10.00"), _row("configs/voc_r18_seed.yaml", "40.00"),
        _row("configs/voc_r18_mocov2.yaml", "35.00"), _row("configs/voc_r18_seed.yaml", "41.00"),
        _row("configs/voc_r34_seed.yaml", "45.00"),
    ])
    lines = table.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[0] == "task" and header[1] == "Random init AP" and header[-3] == "SEED student AP"
    assert header.index("MoCo-v2 student AP") < header.index("SEED student AP")
    r18 = [c.strip() for c in lines[2].strip("|").split("|")]
    assert r18[0] == "voc_r18" and r18[header.index("SEED student AP")] == "41.00"  # latest run wins
    r34 = [c.strip() for c in lines[3].strip("|").split("|")]
    assert r34[header.index("Random init AP")] == "–"
    assert "mask" not in lines[0]


def test_markdown_keeps_engines_apart():
    rows = [_row("voc_r18_seed.yaml", "40.00"), dict(_row("voc_r18_seed.yaml", "38.00"), engine="torchvision")]
    table = render_markdown(rows)
    assert "| voc_r18 (detectron2) | 40.00" in table and "| voc_r18 (torchvision) | 38.00" in table


def test_markdown_mask_column_and_empty():
    table = render_markdown([_row("coco_r18_1x_seed.yaml", "30.00", "27.00")])
    assert "SEED student mask AP" in table and "27.00" in table
    assert "no results" in render_markdown([])


def test_cli(tmp_path):
    record_run(tmp_path / "out" / "voc_r18_seed", "configs/voc_r18_seed.yaml", "w", BOX)
    record_run(tmp_path / "out" / "voc_r18_mocov2", "configs/voc_r18_mocov2.yaml", "w", BOX)
    tool = os.path.join(ROOT, "tools", "results_table.py")
    res = subprocess.run([sys.executable, tool, str(tmp_path / "out" / "results_detection.csv")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "| voc_r18 |" in res.stdout and "MoCo-v2 student AP" in res.stdout
    missing = subprocess.run([sys.executable, tool, str(tmp_path / "no.csv")], capture_output=True, text=True)
    assert missing.returncode == 2 and "not found" in missing.stderr


def _record(args):
    out, i = args
    record_run(os.path.join(out, f"run{i}"), f"configs/voc_r18_{i}.yaml", "w", BOX)


def test_concurrent_runs_lose_no_row(tmp_path):
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_record, [(str(tmp_path), i) for i in range(24)])
    rows = read_results(tmp_path / "results_detection.csv")
    assert sorted(r["config"] for r in rows) == sorted(f"configs/voc_r18_{i}.yaml" for i in range(24))


def test_eval_only_never_replaces_a_training_result(tmp_path):
    out = tmp_path / "out" / "voc_r18_seed"
    record_run(out, "configs/voc_r18_seed.yaml", "seed.pkl", BOX, dataset="voc_2007_test")
    record_run(out, "configs/voc_r18_seed.yaml", "heads_random.pkl", {**BOX, "AP": 1.0}, eval_only=True)
    assert json.loads((out / "metrics.json").read_text())["metrics"]["AP"] == pytest.approx(50.123)
    assert json.loads((out / "eval_metrics.json").read_text())["mode"] == "eval-only"
    rows = read_results(tmp_path / "out" / "results_detection.csv")
    assert [r["mode"] for r in rows] == ["train", "eval-only"] and rows[0]["dataset"] == "voc_2007_test"
    assert "| voc_r18 | 50.12 |" in render_markdown(rows)
    # eval-only rows still replace each other, and a new training row replaces them
    assert "| 3.00 |" in render_markdown([_row("voc_r18_seed.yaml", "2.00", mode="eval-only"),
                                          _row("voc_r18_seed.yaml", "3.00", mode="eval-only")])
    assert "| 4.00 |" in render_markdown([_row("voc_r18_seed.yaml", "3.00", mode="eval-only"),
                                          _row("voc_r18_seed.yaml", "4.00")])


def test_one_file_per_kind_and_one_table_tool(tmp_path):
    """Detection and k-NN rows never meet in one file; results_table.py reads every kind; a CSV that
    is not ours, or of another kind, is refused before anything is written."""
    from seed_core.evaluation.results import record_accuracy
    from seed_core.results import ResultsError, check_results_file, results_path

    root = tmp_path / "output"
    record_run(root / "voc_r18_seed", "configs/voc_r18_seed.yaml", "w", BOX)
    report = {"timestamp": "t", "backbone": "student.pth", "arch": "resnet18", "train": "d/train",
              "val": "d/val", "top1": 91.0, "top5": 99.5, "k": 200, "temperature": 0.07}
    record_accuracy(results_path(root, "knn"), "knn", report)
    record_accuracy(results_path(root, "linear"), "linear",
                    {**report, "top1": 93.25, "optimizer": "lbfgs", "epochs": 10})
    assert sorted(os.listdir(root)) == ["results_detection.csv", "results_knn.csv", "results_linear.csv",
                                        "voc_r18_seed"]
    with pytest.raises(ResultsError, match="holds detection results, not knn"):
        check_results_file(results_path(root, "detection"), "knn")
    before = (root / "results_knn.csv").read_text()
    with pytest.raises(ResultsError, match="holds knn results"):
        record_run(root / "x", "c.yaml", "w", BOX, csv_path=root / "results_knn.csv")
    assert (root / "results_knn.csv").read_text() == before
    assert not (root / "x").exists()  # refused before the metrics file was written
    with pytest.raises(ResultsError, match="is a directory"):
        check_results_file(root, "knn")
    tool = os.path.join(ROOT, "tools", "results_table.py")
    res = subprocess.run([sys.executable, tool, str(root)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "### detection" in res.stdout and "| voc_r18 | 50.12 |" in res.stdout
    assert "| student.pth | resnet18 | d/train -> d/val | 200 | 0.07 | 91.00 | 99.50 |" in res.stdout
    assert "| lbfgs | 10 | 93.25 |" in res.stdout
    (tmp_path / "old.csv").write_text("timestamp,tool,backbone,arch,top1,top5\nt,eval_knn,b,a,1,2\n")
    res = subprocess.run([sys.executable, tool, str(tmp_path / "old.csv")], capture_output=True, text=True)
    assert res.returncode == 2 and "not a results file of this project" in res.stderr


def test_detection_columns_are_declared_by_seed_det_only():
    """seed_core knows the run columns and its own kinds; the detection schema is seed_det.results'."""
    code = ("import sys, seed_core.results as r, seed_core.evaluation.results\n"
            "assert 'detection' not in r.KIND_COLUMNS and 'seed_det' not in sys.modules, r.KIND_COLUMNS\n"
            "import seed_det.results as d\n"
            "assert r.columns('detection') == d.CSV_FIELDS == r.RUN_COLUMNS + ('config', 'AP', 'AP50', 'AP75', 'mask_AP')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    for folder, _, names in os.walk(os.path.join(ROOT, "seed_core")):
        for name in names:
            if name.endswith(".py"):
                assert "AP50" not in open(os.path.join(folder, name)).read(), name


def test_a_kind_is_declared_once():
    from seed_core.results import ResultsError, register_kind
    assert register_kind("detection", CSV_FIELDS[6:]) == CSV_FIELDS  # again, same columns: nothing changes
    with pytest.raises(ResultsError, match="declared already"):
        register_kind("detection", ("config", "AP"))
    with pytest.raises(ResultsError, match="share its columns"):
        register_kind("knn_copy", ("arch", "k", "temperature", "top1", "top5"))
