"""benchmarks/paper_claim.py end to end in its tiny mode: files written, expected rows present."""
import json
import os
import tempfile

import pytest
import torch

from conftest import load_script


def _load_cli():
    return load_script("benchmarks/paper_claim.py")


@pytest.fixture(autouse=True)
def temporary_folders_inside_tmp_path(tmp_path, monkeypatch):
    # --tiny makes its temporary folder when the arguments are parsed; keep it in the test's folder.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture
def restore_threads():
    # The CLI sets the torch thread count for the whole process.
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_tiny_run_writes_tables_plots_and_json(tmp_path, restore_threads):
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--tiny", "--out-dir", str(out), "--work-dir", str(work), "--ablations", "teacher_temp", "queue_size",
            "teacher_epochs", "small_patches"]
    assert _load_cli().main(argv) == 0

    for stem in ("paper_claim", "paper_claim_teacher_temp", "paper_claim_queue_size", "paper_claim_teacher_epochs"):
        for ext in ("md", "png", "json"):
            assert (out / f"{stem}.{ext}").stat().st_size > 0, f"{stem}.{ext} missing or empty"

    result = json.loads((out / "paper_claim.json").read_text())
    archs = result["settings"]["student_archs"]
    assert set(result["rows"]) == {f"{a}/{v}" for a in archs for v in ("random", "moco", "seed", "l2")}
    assert {"top1", "clearly_beats_random"} <= set(result["teacher"])
    table = (out / "paper_claim.md").read_text()
    assert table.startswith("| student | random init | MoCo-v2 alone | SEED | L2 distillation | SEED − MoCo |")
    assert all(any(line.startswith(f"| {a} |") for line in table.splitlines()) for a in archs)

    ablation = json.loads((out / "paper_claim_teacher_temp.json").read_text())
    assert [p["value"] for p in ablation["points"]] == [1e-3, 1e-2]
    assert len((out / "paper_claim_queue_size.md").read_text().splitlines()) >= 4
    teachers = json.loads((out / "paper_claim_teacher_epochs.json").read_text())["points"]
    assert [p["value"] for p in teachers] == [1, 2] and all(0 <= p["teacher_top1"] <= 100 for p in teachers)
    patches = json.loads((out / "paper_claim_small_patches.json").read_text())["points"]
    assert [p["value"] for p in patches] == [0, 2]


def test_tiny_mode_never_writes_over_the_committed_results(tmp_path):
    cli = _load_cli()
    args = cli.parse_args(["--tiny"])
    for folder in (args.out_dir, args.work_dir):
        assert not os.path.realpath(folder).startswith(cli.ROOT + os.sep), folder
    with pytest.raises(SystemExit, match="committed results"):
        cli.parse_args(["--tiny", "--out-dir", cli.RESULTS])
    assert cli.parse_args(["--tiny", "--out-dir", str(tmp_path)]).out_dir == str(tmp_path)
    assert cli.parse_args([]).out_dir == cli.RESULTS


@pytest.mark.slow
def test_rerun_reuses_cached_runs(tmp_path, restore_threads):
    from tools.pipeline.run_cache import MARKER as RUN_SUMMARY
    argv = ["--tiny", "--out-dir", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work"),
            "--archs", "resnet18", "--teacher-arch", "resnet18"]
    cli = _load_cli()
    assert cli.main(argv) == 0
    runs = sorted((tmp_path / "work" / "runs").glob(f"*/{RUN_SUMMARY}"))
    stamps = [p.stat().st_mtime_ns for p in runs]
    assert cli.main(argv) == 0
    assert [p.stat().st_mtime_ns for p in runs] == stamps
    assert len(sorted((tmp_path / "work" / "runs").glob(f"*/{RUN_SUMMARY}"))) == len(runs)


def test_run_key_ignores_paths_and_logging_but_not_settings():
    from seed_core.config import load_cfg
    from tools.pipeline.run_cache import run_key
    ids = {"DATA.ROOT": "digits"}
    a = load_cfg(None, ["DATA.ROOT", "/a", "OUTPUT_DIR", "/x", "TRAIN.PROGRESS", "False"])
    b = load_cfg(None, ["DATA.ROOT", "/b", "OUTPUT_DIR", "/y", "DATA.NUM_WORKERS", "0"])
    c = load_cfg(None, ["DATA.ROOT", "/a", "LOSS.TEACHER_TEMP", "0.1"])
    assert run_key(a, ids) == run_key(b, ids)
    assert run_key(a, ids) != run_key(c, ids)
    assert run_key(a, ids) != run_key(a, {"DATA.ROOT": "other digits"})
    with pytest.raises(ValueError, match="DATA.ROOT"):
        run_key(a, {})


def test_a_setting_added_later_keeps_earlier_keys_at_its_default():
    import hashlib
    import json
    from seed_core.config import flatten_cfg, load_cfg
    from tools.pipeline.run_cache import NOT_IN_KEY, OMITTED_AT, run_key
    ids = {"DATA.ROOT": "digits"}
    cfg = load_cfg(None, ["DATA.ROOT", "/a"])
    # the key as it was computed before the setting existed
    before = {k: v for k, v in flatten_cfg(cfg).items() if k not in NOT_IN_KEY and k not in OMITTED_AT}
    before.update(ids)
    assert run_key(cfg, ids) == hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert run_key(load_cfg(None, ["DATA.ROOT", "/a", "MODEL.STUDENT.HEAD_BATCH_NORM", "True"]), ids) != run_key(cfg, ids)


def test_mean_std():
    from tools.pipeline.report import mean_std, mean_std_text
    assert mean_std([5.0]) == (5.0, None)  # one value has no spread
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and abs(std - 1.0) < 1e-12
    assert mean_std_text(mean, std) == "2.0 ± 1.0" and mean_std_text(*mean_std([5.0])) == "5.0"
    assert mean_std_text(2.0, 0.25, digits=2) == "2.00 ± 0.25"
    with pytest.raises(ValueError, match="no values"):
        mean_std([])


def test_one_seed_tables_print_the_value_alone():
    """paper_claim and lr_sweep rows of one seed: the k-NN top-1 without a '± 0.0'."""
    from tools.benchmarking.lr_sweep import sweep_table
    from tools.benchmarking.paper_claim import _cell, _summarise
    row = _summarise([{"seed": 0, "top1": 91.25}])
    assert row["top1_std"] is None and _cell(row) == "91.2"
    assert _cell(_summarise([{"seed": 0, "top1": 90.0}, {"seed": 1, "top1": 92.0}])) == "91.0 ± 1.4"
    point = {"point": "seed0.03", "file": "f", "method": "seed", "overrides": {"SOLVER.BASE_LR": 0.03}, **row}
    table = sweep_table({"arch": "resnet18", "sweep_seeds": [0], "final_seeds": [0], "sweep": [point],
                         "best": {"seed": "seed0.03"}, "final": {"seed": point}})
    assert "91.2 |" in table and "± 0.0" not in table and "±" not in table


def test_bad_settings_fail_before_anything_is_written(tmp_path, capsys, restore_threads):
    work = tmp_path / "work"
    assert _load_cli().main(["--queue-size", "16", "--work-dir", str(work), "--out-dir", str(tmp_path / "out")]) == 2
    assert "QUEUE.SIZE = 16 is smaller than the global batch" in capsys.readouterr().err
    assert not work.exists()


def test_the_recipe_is_the_config_file_and_flags_override_its_keys():
    from tools.benchmarking.paper_claim import RECIPE, recipe_value
    cli = _load_cli()
    s = cli.settings_from_args(cli.parse_args(["--lr", "0.06"]))
    assert s.recipe == RECIPE and s.overrides == {"SOLVER.BASE_LR": 0.06}
    assert recipe_value(s, "SOLVER.BASE_LR") == 0.06 and recipe_value(s, "DATA.AUGMENTATION") == "glyphs"
    tiny = cli.settings_from_args(cli.parse_args(["--tiny"]))
    assert recipe_value(tiny, "SOLVER.BATCH_SIZE") == 8 and recipe_value(tiny, "QUEUE.SIZE") == 32
