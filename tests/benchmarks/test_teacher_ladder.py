"""benchmarks/teacher_ladder.py: bad ladders are refused before any stage runs, the paired statistics
are right, results files grow, the report is made from the json alone, and the tiny ladder runs."""
import json
import math
import os
from dataclasses import replace

import pytest
from conftest import load_script

from tools.benchmarking.ladder_report import ladder_table, paired_difference
from tools.benchmarking.teacher_ladder import (Arm, Settings, backbone_stages, check_settings, mobile_settings,
                                               plan_cells, render_report, run_ladder, teacher_stage, tiny_settings,
                                               write_report)
from tools.pipeline.demo import load_preset


@pytest.mark.parametrize("arms, says", [
    (("mocov2:resnet18", "seed:resnet34:resnet18"), "smaller than its student"),
    (("mocov2:resnet18", "seed:resnet18:resnet9000"), "unknown"),
    (("mocov2:resnet18", "dino:resnet18"), "not one of random, mocov2, seed, l2"),
    (("mocov2:resnet18", "seed:resnet18"), "needs a teacher"),
    (("mocov2:resnet18:resnet50",), "has no teacher"),
    (("mocov2:resnet18", "seed:resnet50:resnet50"), "cannot be fine-tuned"),
    (("mocov2:resnet18", "seed:mobilenetv3_small_050:mobilenetv3_large_100"), "not a ResNet the ladder trains"),
    (("seed:resnet18:resnet50",), "needs the arm mocov2:resnet18"),
    (("mocov2:resnet18", "seed"), "INIT:STUDENT"),
])
def test_a_bad_ladder_is_refused_before_any_stage_runs(tmp_path, arms, says):
    s = Settings(work_dir=str(tmp_path / "work"), arms=arms)
    with pytest.raises(ValueError, match=says):
        run_ladder(s)
    assert not (tmp_path / "work").exists()


def test_a_mobile_ladder_needs_its_own_baseline_and_an_fpn(tmp_path):
    s = mobile_settings(str(tmp_path / "work"))
    check_settings(s)
    from dataclasses import replace
    with pytest.raises(ValueError, match="needs the arm mocov2:mobilenetv3_small_050"):
        run_ladder(replace(s, arms=("mocov2:resnet18", "seed:mobilenetv3_small_050:resnet50")))
    with pytest.raises(ValueError, match="add the arm mocov2:resnet18"):  # the R18 teacher is that student
        run_ladder(replace(s, arms=("mocov2:mobilenetv3_small_050", "seed:mobilenetv3_small_050:resnet18")))
    with pytest.raises(ValueError, match="fine-tuned on an FPN only"):
        run_ladder(replace(s, detectors=("c4",)))
    assert not (tmp_path / "work").exists()


def test_a_mobile_student_is_fine_tuned_on_an_fpn_in_both_splits_and_never_as_c4():
    s = mobile_settings()
    from dataclasses import replace
    s = replace(s, detectors=("fpn", "c4"), engines=("torchvision", "detectron2"))
    cells = plan_cells(s, check_settings(s))
    assert {(c.engine, c.detector, c.split) for c in cells} == {
        (e, "fpn", x) for e in ("torchvision", "detectron2") for x in ("train", "train_small")}
    assert all(seeds == (0, 1, 2, 3, 4) for c, seeds in cells.items() if c.engine == "torchvision")
    assert all(seeds == (0,) for c, seeds in cells.items() if c.engine == "detectron2")
    assert {c.arm for c in cells} == {Arm("random", "mobilenetv3_small_050"), Arm("mocov2", "mobilenetv3_small_050"),
                                      Arm("seed", "mobilenetv3_small_050", "resnet34")}


def test_the_teachers_lr_is_the_presets_unless_set():
    from dataclasses import replace
    p, s = load_preset("tiny"), Settings(preset="tiny")
    data = {"pretrain": "crops"}
    arms = [Arm("mocov2", "resnet18"), Arm("seed", "resnet18", "resnet34")]
    teacher = teacher_stage("resnet34")
    assert backbone_stages(p, data, arms, s)[teacher][0]["SOLVER.BASE_LR"] == float(p["distill_base_lr"])
    assert backbone_stages(p, data, arms, replace(s, teacher_lr=0.5))[teacher][0]["SOLVER.BASE_LR"] == 0.5


def test_the_cli_answers_a_bad_ladder_with_one_line(tmp_path, capsys):
    assert load_script("benchmarks/teacher_ladder.py").main(["--work-dir", str(tmp_path), "--arms", "mocov2:resnet18", "seed:resnet34:resnet18"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: arm seed:resnet34:resnet18: the teacher resnet18")


def test_the_decisive_cells_get_their_seeds_on_every_engine_and_detectron2_the_first_seed_elsewhere():
    s = Settings(engines=("torchvision", "detectron2"), seeds=(0, 1, 2, 3, 4), decisive_seeds=tuple(range(10)))
    cells = plan_cells(s, check_settings(s))
    seed50, moco = Arm("seed", "resnet18", "resnet50"), Arm("mocov2", "resnet18")
    for engine in ("torchvision", "detectron2"):
        for det in ("fpn", "c4"):
            assert cells[(engine, det, "train_small", seed50)] == tuple(range(10))
            assert cells[(engine, det, "train_small", moco)] == tuple(range(10))
    assert cells[("torchvision", "c4", "train", seed50)] == (0, 1, 2, 3, 4)
    assert cells[("detectron2", "c4", "train", seed50)] == (0,)
    assert cells[("detectron2", "fpn", "train_small", Arm("seed", "resnet18", "resnet34"))] == (0,)
    # a ResNet-34 student only where it is asked for: R34-FPN at 10 % labels
    r34 = [c for c in cells if c.arm.student == "resnet34"]
    assert r34 and {(c.detector, c.split) for c in r34} == {("fpn", "train_small")}


def test_paired_difference_is_the_t_interval_of_the_per_seed_differences():
    a = {0: 50.0, 1: 52.0, 2: 47.0, 3: 55.0, 9: 1.0}
    b = {0: 48.0, 1: 49.0, 2: 47.5, 3: 51.0, 7: 0.0}   # seeds 9 and 7 have no partner
    d = paired_difference(a, b)
    diffs = [2.0, 3.0, -0.5, 4.0]
    mean = sum(diffs) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 3)
    half = 3.182446305284263 * sd / 2   # t(0.975, 3) * sd / sqrt(4)
    assert d["n"] == 4 and d["mean"] == pytest.approx(mean)
    assert (d["low"], d["high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert "low" not in paired_difference({0: 1.0}, {0: 2.0})
    assert paired_difference({0: 1.0}, {1: 2.0}) is None


def _run(init, teacher, seed, ap50, labels="10%", detector="fpn", student="resnet18", engine="torchvision"):
    return {"detector": detector, "labels": labels, "init": init, "teacher_arch": teacher, "student_arch": student,
            "seed": seed, "engine": engine, "ap": ap50 / 2, "ap50": ap50, "ap75": ap50 / 3}


def test_ladders_writing_side_by_side_keep_each_others_records(tmp_path, monkeypatch):
    """Two ladders (e.g. the two engines) sharing a results folder: every merge is one read-write
    under the folder's lock, so none drops the other's records however their writes interleave."""
    import threading
    import time

    import tools.benchmarking.teacher_ladder as ladder
    merge = ladder.merge_results

    def slow_merge(old, new):  # widens the window between reading the json and writing it
        time.sleep(0.02)
        return merge(old, new)
    monkeypatch.setattr(ladder, "merge_results", slow_merge)
    monkeypatch.setattr(ladder, "render_report", lambda path: None)

    def ladder_run(engine):
        for s in range(6):
            write_report({"runs": [_run("mocov2", None, s, 40.0, engine=engine)], "backbones": []}, tmp_path)
    threads = [threading.Thread(target=ladder_run, args=(e,)) for e in ("torchvision", "detectron2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runs = json.load(open(tmp_path / "teacher_ladder.json"))["runs"]
    assert sorted((r["engine"], r["seed"]) for r in runs) == sorted(
        (e, s) for e in ("torchvision", "detectron2") for s in range(6))


def test_results_grow_across_invocations_and_the_report_is_made_from_the_json(tmp_path):
    first = {"runs": [_run("mocov2", None, s, 40.0 + s) for s in range(3)] +
                     [_run("seed", "resnet50", s, 45.0 + s) for s in range(3)],
             "backbones": [{"arch": "resnet18", "method": "mocov2", "teacher_arch": None, "epochs": 16, "knn": 89.6}]}
    write_report(first, tmp_path)
    again = {"runs": [_run("seed", "resnet50", 0, 60.0), _run("seed", "resnet50", 0, 30.0, engine="detectron2")],
             "backbones": [{"arch": "resnet50", "method": "mocov2", "teacher_arch": None, "epochs": 48, "knn": 93.0}]}
    paths = write_report(again, tmp_path)
    merged = json.load(open(paths["json"]))
    assert len(merged["runs"]) == 7 and len(merged["backbones"]) == 2
    assert [r["ap50"] for r in merged["runs"] if r["init"] == "seed" and r["seed"] == 0
            and r["engine"] == "torchvision"] == [60.0]   # measured again: replaced
    md = open(paths["md"]).read()
    # SEED − MoCo-v2 over seeds 0-2: +20, +5, +5 -> mean +10.0, its interval spans zero (not bold)
    assert "| SEED R18 ← R50 | 3 | " in md and "+10.0 [" in md and "**+10.0" not in md
    assert "| MoCo-v2 R50 | teacher" in md or "| MoCo-v2 R50 |" in md
    os.remove(paths["md"])
    os.remove(paths["png"])
    render_report(paths["json"])
    assert open(paths["md"]).read() == md and os.path.getsize(paths["png"]) > 0
    assert ladder_table(merged) == md


@pytest.mark.slow
def test_tiny_ladder_runs_every_kind_of_stage_and_resumes_from_its_cache(tmp_path):
    s = tiny_settings(str(tmp_path / "work"))
    seen = []
    result = run_ladder(s, on_progress=lambda r: seen.append(len(r["runs"])))
    runs = result["runs"]
    assert {(r["init"], r["teacher_arch"]) for r in runs} == {("random", None), ("mocov2", None),
                                                               ("seed", "resnet34"), ("l2", "resnet34")}
    assert sorted(r["seed"] for r in runs if r["init"] == "seed") == [0, 1]
    assert all(set(r) >= {"detector", "labels", "init", "teacher_arch", "student_arch", "seed", "engine", "ap",
                          "ap50", "ap75"} for r in runs)
    assert seen[-1] == len(runs) == 8 and seen == sorted(seen)  # the report grew run by run
    bbs = {(b["method"], b["arch"], b["teacher_arch"]) for b in result["backbones"]}
    assert bbs == {("random", "resnet18", None), ("mocov2", "resnet18", None), ("mocov2", "resnet34", None),
                   ("seed", "resnet18", "resnet34"), ("l2", "resnet18", "resnet34")}
    paths = write_report(result, tmp_path / "results")
    assert "SEED R18 ← R34" in open(paths["md"]).read()
    # again: every stage is reused, nothing runs twice
    stamp = {d: os.path.getmtime(tmp_path / "work" / d / "run.json") for d in os.listdir(tmp_path / "work")
             if os.path.isfile(tmp_path / "work" / d / "run.json")}
    again = run_ladder(s)
    assert sorted(map(str, again["runs"])) == sorted(map(str, runs))
    assert all(os.path.getmtime(tmp_path / "work" / d / "run.json") == t for d, t in stamp.items())


@pytest.mark.slow
def test_tiny_mobile_ladder_fine_tunes_a_timm_student_and_reports_against_its_own_baselines(tmp_path):
    s = tiny_settings(str(tmp_path / "work"), like=mobile_settings())
    result = run_ladder(s)
    student = "mobilenetv3_small_050"
    assert {(r["init"], r["student_arch"], r["teacher_arch"]) for r in result["runs"]} == {
        ("random", student, None), ("mocov2", student, None), ("seed", student, "resnet34"), ("l2", student, "resnet34")}
    assert all(r["ap50"] is not None for r in result["runs"])
    # each method at the mobile student's own lr (its lr sweep's winners), not the ResNet-18's
    lrs = {(b["method"], b["arch"]): b.get("lr") for b in result["backbones"]}
    assert lrs[("mocov2", student)] == 0.12 and lrs[("seed", student)] == 0.24 and lrs[("l2", student)] == 0.96
    paths = write_report(result, tmp_path / "results")
    assert paths["json"].endswith("mobile_students.json")
    md = open(paths["md"]).read()
    assert "AP50 − MoCo-v2 MNv3-S 0.5" in md and "SEED MNv3-S 0.5 ← R34" in md


def test_a_teacher_recipe_from_the_command_line_is_another_teacher(tmp_path):
    """--teacher-set and --teacher-lr change the larger teachers' stage (and nothing else): a recipe
    probe trains another teacher, whose record names its recipe."""
    from tools.benchmarking.ladder_cli import _typed
    from tools.benchmarking.teacher_ladder import backbone_stages, load_preset
    assert (_typed("True"), _typed("0.5"), _typed("3"), _typed("glyphs")) == (True, 0.5, 3, "glyphs")
    s = Settings(arms=("mocov2:resnet18", "seed:resnet18:resnet50"), teacher_recipes=())
    data = {"pretrain": str(tmp_path)}
    p = load_preset(s.preset)
    base = backbone_stages(p, data, check_settings(s), s)
    # by default each larger teacher has the recipe that passed the bar; the tiny ladder's teacher none
    assert Settings().teacher_overrides("resnet50")["SOLVER.OPTIMIZER"] == "lars"
    assert Settings().teacher_overrides("resnet50")["SOLVER.EPOCHS"] == 96
    assert Settings().teacher_overrides("resnet34") == {"SOLVER.EPOCHS": 96}
    assert tiny_settings(str(tmp_path)).teacher_overrides("resnet34") == {}
    from dataclasses import replace
    probe = replace(s, teacher_lr=0.12, teacher_recipe=(("MODEL.STUDENT.ZERO_INIT_RESIDUAL", True),))
    changed = backbone_stages(p, data, check_settings(probe), probe)
    t = "teacher_moco_resnet50"
    assert changed[t][0] == {**base[t][0], "SOLVER.BASE_LR": 0.12, "MODEL.STUDENT.ZERO_INIT_RESIDUAL": True}
    assert changed["mocov2_resnet18"] == base["mocov2_resnet18"]
    # a teacher's own recipe changes that teacher only; the command line's probe settings override it
    own = replace(s, arms=s.arms + ("seed:resnet18:resnet34",),
                  teacher_recipes=(("resnet50", (("SOLVER.OPTIMIZER", "lars"), ("SOLVER.BASE_LR", 16.0))),))
    mine = backbone_stages(p, data, check_settings(own), own)
    assert mine[t][0] == {**base[t][0], "SOLVER.OPTIMIZER": "lars", "SOLVER.BASE_LR": 16.0}
    assert mine["teacher_moco_resnet34"][0]["SOLVER.BASE_LR"] == base[t][0]["SOLVER.BASE_LR"]
    assert "SOLVER.OPTIMIZER" not in mine["teacher_moco_resnet34"][0]
    assert replace(own, teacher_lr=0.5).teacher_overrides("resnet50") == {"SOLVER.OPTIMIZER": "lars", "SOLVER.BASE_LR": 0.5}
    s_cli = load_script("benchmarks/teacher_ladder.py")
    assert s_cli.main(["--work-dir", str(tmp_path), "--teacher-set", "MODEL.STUDENT.ZERO_INIT_RESIDUAL"]) == 2


def test_detection_settings_need_a_results_file_of_their_own(tmp_path, capsys):
    from tools.benchmarking.ladder_cli import _pairs
    assert _pairs("--det-set", ["MODEL.TIMM.NORM", "FrozenBN", "MODEL.FPN.NORM", "GN"]) == (
        ("MODEL.TIMM.NORM", "FrozenBN"), ("MODEL.FPN.NORM", "GN"))
    cli = load_script("benchmarks/mobile_students.py")
    assert cli.main(["--work-dir", str(tmp_path), "--det-set", "MODEL.TIMM.NORM", "FrozenBN"]) == 2
    assert "--results-name of their own" in capsys.readouterr().err
    assert cli.main(["--work-dir", str(tmp_path), "--det-set", "MODEL.TIMM.NORM"]) == 2
    assert not os.listdir(tmp_path)


def test_a_teacher_retrained_at_the_same_path_gets_its_k_nn_measured_again(tmp_path, monkeypatch):
    """The k-NN stage is keyed by the backbone's content: a teacher trained again with another recipe
    (same stage folder, same file name) is scored again, never reported with its predecessor's k-NN."""
    from tools.benchmarking import teacher_ladder as tl
    backbone = tmp_path / "teacher_moco_resnet50" / "backbone.pth"
    backbone.parent.mkdir()
    monkeypatch.setattr(tl, "_trained", lambda root, name, opts: {"backbone": str(backbone)})
    scored = []
    monkeypatch.setattr(tl, "_knn", lambda path, arch, data, size, cache: scored.append(open(path).read()) or 50.0 + len(scored))
    p = {"scenes": {"crop_size": 32}}
    backbone.write_text("first recipe")
    first = tl._knn_backbone(str(tmp_path), p, {}, "teacher_moco_resnet50", "resnet50", ("teacher_moco_resnet50", {}))
    assert tl._knn_backbone(str(tmp_path), p, {}, "teacher_moco_resnet50", "resnet50",
                            ("teacher_moco_resnet50", {})) == first  # unchanged: reused
    backbone.write_text("second recipe")
    second = tl._knn_backbone(str(tmp_path), p, {}, "teacher_moco_resnet50", "resnet50", ("teacher_moco_resnet50", {}))
    assert scored == ["first recipe", "second recipe"] and second != first


def test_the_footnote_names_each_teachers_recipe_from_its_own_record():
    """The settings of the invocation that merged last need not be the ones a teacher trained with."""
    from tools.benchmarking.ladder_report import _footnote
    preset = {"scenes": {"canvas": 96}, "det_iters": 300, "det_batch": 4, "det_lr": 0.01, "student_epochs": 16,
              "distill_batch": 32}
    teacher = {"arch": "resnet50", "method": "mocov2", "teacher_arch": None, "epochs": 96, "batch": 64, "lr": 4.0,
               "role": "teacher", "knn": 93.4,
               "recipe": {"MODEL.STUDENT.HEAD_BATCH_NORM": True, "SOLVER.OPTIMIZER": "lars", "SOLVER.EPOCHS": 96}}
    result = {"preset": preset, "counts": {"train": 480, "train_small": 48, "test": 48, "pretrain": 4079},
              "settings": {"teacher_recipes": [], "teacher_epochs": 48, "teacher_lr": None}, "backbones": [teacher]}
    [text] = _footnote(result)
    assert "the R50 also MODEL.STUDENT.HEAD_BATCH_NORM True, SOLVER.OPTIMIZER lars" in text
    assert "48 epochs" not in text  # the teacher's epochs are its record's, in the backbone table
    [plain] = _footnote({**result, "backbones": [{**teacher, "recipe": {}}]})
    assert "also" not in plain


def test_a_students_own_detection_settings_name_its_runs_and_reach_its_records(tmp_path):
    """R34-FPN fine-tunes at its own lr; its stages say so, the R18 arms' do not change."""
    from tools.benchmarking.ladder_report import _footnote
    from tools.benchmarking.teacher_ladder import _run_record, Cell
    s = Settings()
    assert s.det_settings("resnet34") == {"SOLVER.BASE_LR": 0.005} and s.det_settings("resnet18") == {}
    assert replace(s, det_recipe=(("MODEL.FPN.NORM", "GN"),)).det_settings("resnet34") == {
        "SOLVER.BASE_LR": 0.005, "MODEL.FPN.NORM": "GN"}
    rec = _run_record(Cell("torchvision", "fpn", "train_small", Arm.parse("random:resnet34")), 0,
                      {"AP": 4.0, "AP50": 10.0, "AP75": 2.0}, "stage", s.det_settings("resnet34"))
    assert rec["det_settings"] == {"SOLVER.BASE_LR": 0.005}
    preset = {"scenes": {"canvas": 96}, "det_iters": 300, "det_batch": 4, "det_lr": 0.01, "student_epochs": 16,
              "distill_batch": 32}
    [text] = _footnote({"preset": preset, "counts": {}, "runs": [rec]})
    assert "lr 0.01; the R34 students' SOLVER.BASE_LR 0.005." in text
    # a student fine-tuned with two settings has both named, not only the first met
    other = {**rec, "det_settings": {"SOLVER.BASE_LR": 0.01}}
    [both] = _footnote({"preset": preset, "counts": {}, "runs": [rec, other, rec]})
    assert "the R34 students' SOLVER.BASE_LR 0.005 or SOLVER.BASE_LR 0.01." in both
