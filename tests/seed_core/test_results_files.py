"""A results file in the way (damaged, torn, of another schema) is moved aside with a warning, a new
one is started with the good rows, and no row is lost; results_table.py reports such a file in one
line and shows the good ones. The policy is shared by every writer: detection (both engines write
through seed_det.results.record_run), k-NN and linear evaluation, and the JSON files of distillation
(meta.json), evaluation (--output) and detection (metrics.json)."""
import csv
import glob
import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from seed_core.evaluation.results import record_accuracy
from seed_core.export import write_backbone
from seed_core.results import columns, read_rows, results_path, write_json
from seed_det.results import record_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOX = {"AP": 50.0, "AP50": 80.0, "AP75": 55.0}
REPORT = {"timestamp": "t", "backbone": "student.pth", "arch": "resnet18", "train": "d/train", "val": "d/val",
          "top1": 91.0, "top5": 99.5, "k": 200, "temperature": 0.07, "optimizer": "lbfgs", "epochs": 10}


def _write(kind, root, tag):
    """One row of `kind` through its writer, into root/results_<kind>.csv; `tag` tells rows apart."""
    if kind == "detection":
        record_run(root / f"run_{tag}", f"configs/voc_r18_{tag}.yaml", "w.pkl", BOX)
    else:
        record_accuracy(results_path(root, kind), kind, {**REPORT, "backbone": f"student_{tag}.pth"})


def _tags(kind, rows):
    key = "config" if kind == "detection" else "weights"
    return [r[key].replace("configs/voc_r18_", "").replace("student_", "").split(".")[0] for r in rows]


DAMAGE = {
    "garbage bytes": lambda text: text.encode() + b"\x00\xff\xfe garbage \x89PNG\r\n\x1a\n",
    "torn last row": lambda text: text.encode() + text.splitlines()[-1][:25].encode(),
    "torn row in the middle": lambda text: (text.splitlines()[0] + "\n" + text.splitlines()[1][:20] + "\n"
                                            + "\n".join(text.splitlines()[1:]) + "\n").encode(),
}


@pytest.mark.parametrize("kind", ["detection", "knn", "linear"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_results_file_is_moved_aside_and_its_good_rows_kept(tmp_path, kind, damage, caplog):
    root = tmp_path / "output"
    _write(kind, root, "a")
    _write(kind, root, "b")
    path = results_path(root, kind)
    with open(path) as f:
        text = f.read()
    with open(path, "wb") as f:
        f.write(DAMAGE[damage](text))
    damaged_bytes = open(path, "rb").read()
    with caplog.at_level(logging.WARNING, logger="seed_core.results"):
        _write(kind, root, "c")
    aside = glob.glob(path + ".damaged-*")
    assert len(aside) == 1 and open(aside[0], "rb").read() == damaged_bytes  # moved, not changed
    assert any(aside[0] in r.getMessage() and "good rows are kept" in r.getMessage() for r in caplog.records)
    got_kind, rows = read_rows(path)
    assert got_kind == kind and _tags(kind, rows) == ["a", "b", "c"]
    assert open(path).read().splitlines()[0] == ",".join(columns(kind))


@pytest.mark.parametrize("kind", ["detection", "knn", "linear"])
@pytest.mark.parametrize("content", [b"name,score\nmine,1\n", b"\x89PNG\r\n\x1a\n\x00\x00binary"])
def test_a_file_of_another_schema_is_moved_aside_not_refused(tmp_path, kind, content, caplog):
    root = tmp_path / "output"
    root.mkdir()
    path = results_path(root, kind)
    with open(path, "wb") as f:
        f.write(content)
    with caplog.at_level(logging.WARNING, logger="seed_core.results"):
        _write(kind, root, "a")
    aside = glob.glob(path + ".foreign-*") + glob.glob(path + ".damaged-*")
    assert len(aside) == 1 and open(aside[0], "rb").read() == content
    assert any(aside[0] in r.getMessage() for r in caplog.records)
    assert _tags(kind, read_rows(path)[1]) == ["a"]


def test_no_row_is_lost_when_files_are_moved_aside_twice_in_a_second(tmp_path):
    root = tmp_path / "output"
    root.mkdir()
    path = results_path(root, "knn")
    with open(path, "w") as f:
        f.write("other,schema\n")
    for tag in "abc":
        _write("knn", root, tag)
        with open(path, "a") as f:
            f.write("torn")
    _write("knn", root, "d")
    assert len(glob.glob(path + ".foreign-*")) == 1 and len(glob.glob(path + ".damaged-*")) == 3  # none overwritten
    assert _tags("knn", read_rows(path)[1]) == ["a", "b", "c", "d"]


def _meta_json(path):
    write_backbone({"backbone.w": torch.zeros(1)}, os.path.dirname(path), {"arch": "resnet18"})


def _metrics_json(path):
    record_run(os.path.dirname(path), "configs/voc_r18_seed.yaml", "w.pkl", BOX)


def _eval_json(path):
    write_json(path, {"tool": "eval_knn", "top1": 1.0})


JSON_WRITERS = {"distillation meta.json": ("meta.json", _meta_json),
                "detection metrics.json": ("metrics.json", _metrics_json),
                "evaluation --output": ("knn.json", _eval_json)}


@pytest.mark.parametrize("writer", sorted(JSON_WRITERS))
@pytest.mark.parametrize("content, why", [(b'{"top1": 1.0, "tool": "ev', "damaged"), (b"\xff\xfe\x00binary", "damaged"),
                                          (b'{"name": "not ours"}\n', "foreign")])
def test_a_damaged_or_foreign_json_is_moved_aside(tmp_path, writer, content, why, caplog):
    name, write = JSON_WRITERS[writer]
    path = tmp_path / "run" / name
    path.parent.mkdir()
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="seed_core.results"):
        write(str(path))
    aside = glob.glob(f"{path}.{why}-*")
    assert len(aside) == 1 and open(aside[0], "rb").read() == content
    assert any(aside[0] in r.getMessage() for r in caplog.records)
    json.loads(path.read_text())
    write(str(path))  # our own file of the same schema: replaced as before, nothing moved
    assert len(glob.glob(f"{path}.*-*")) == 1


def _table(*paths):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "results_table.py"), *map(str, paths)],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.mark.parametrize("kind", ["detection", "knn", "linear"])
def test_results_table_reports_a_bad_file_in_one_line_and_goes_on(tmp_path, kind):
    root = tmp_path / "output"
    _write(kind, root, "a")
    _write(kind, root, "b")
    other = "knn" if kind == "detection" else "detection"
    _write(other, root, "z")
    path = results_path(root, kind)
    with open(path, "ab") as f:
        f.write(b"\x00\xffgarbage")
    res = _table(root)
    assert res.returncode == 0
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("warning: ") and path in res.stderr
    assert "Traceback" not in res.stderr and "2 good rows are shown" in res.stderr
    assert f"### {kind}" in res.stdout and f"### {other}" in res.stdout
    assert os.path.isfile(path) and not glob.glob(path + ".*")  # reading moves nothing

    foreign = tmp_path / "mine.csv"
    foreign.write_text("name,score\nmine,1\n")
    res = _table(foreign, results_path(root, other))
    assert res.returncode == 0 and f"### {other}" in res.stdout
    assert res.stderr.count("\n") == 1 and str(foreign) in res.stderr and "not a results file" in res.stderr
    res = _table(foreign)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")
    assert res.stdout == ""
