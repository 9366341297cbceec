"""Flags may follow the `KEY VALUE` overrides, as Detectron2 users type them."""
import os

import pytest

from conftest import ROOT, load_script


@pytest.mark.parametrize("tool,flag", [("tools/train_net.py", "eval_only"), ("tools/distill.py", "resume")])
def test_flags_after_overrides_are_flags(tool, flag):
    parse_args = load_script(tool).parse_args
    option = "--" + flag.replace("_", "-")
    args = parse_args(["--config", "c.yaml", "MODEL.WEIGHTS", "m.pth", option, "SOLVER.BASE_LR", "0.1"])
    assert getattr(args, flag) is True
    assert args.opts == ["MODEL.WEIGHTS", "m.pth", "SOLVER.BASE_LR", "0.1"]
    with pytest.raises(SystemExit):  # a misspelt flag is refused, not taken for an override
        parse_args(["--config", "c.yaml", "MODEL.WEIGHTS", "m.pth", option + "x"])


TOOLS = sorted(f for f in os.listdir(os.path.join(ROOT, "tools")) if f.endswith(".py") and f not in
               ("__init__.py", "cli.py", "backbone_eval.py"))


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_refuses_a_bad_flag_in_one_line(tool, capsys):
    """Every tool alike: main(argv) -> int; bad input is one `error: ...` line on stderr and exit code 2."""
    main = load_script(os.path.join("tools", tool)).main
    assert main(["--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--help" in err, err  # (or a missing argument)


@pytest.mark.parametrize("tool", ["tools/train_net.py", "tools/distill.py"])
def test_config_flag_spellings_and_output_dir(tool):
    parse_args = load_script(tool).parse_args
    for flag in ("--config", "--config-file"):
        assert parse_args([flag, "c.yaml"]).config_file == "c.yaml"
    from tools.cli import overrides
    args = parse_args(["--config", "c.yaml", "SEED", "3", "--output-dir", "out/x"])
    assert overrides(args) == ("SEED", "3", "OUTPUT_DIR", "out/x")  # the flag wins over an OUTPUT_DIR override


BENCHMARKS_WITH_RESULTS = ("lr_sweep.py", "mobile_students.py", "paper_claim.py", "teacher_ladder.py", "transfer_claim.py")


def test_benchmarks_name_the_results_folder_output_dir_as_the_tools_do():
    """`--output-dir` in every benchmark that writes results, the earlier `--out-dir` still accepted."""
    import argparse
    from tools.cli import add_results_dir
    parser = argparse.ArgumentParser()
    add_results_dir(parser, help="results", default="r")
    assert parser.parse_args([]).out_dir == "r"
    for flag in ("--output-dir", "--out-dir"):
        assert parser.parse_args([flag, "x"]).out_dir == "x"
    for name in BENCHMARKS_WITH_RESULTS:
        with open(os.path.join(ROOT, "benchmarks", name)) as f:
            text = f.read()
        # the ladder-protocol benchmarks share one command line (tools/benchmarking/ladder_cli.py)
        assert "add_results_dir(p" in text or "return run_cli(" in text, name
    with open(os.path.join(ROOT, "tools", "benchmarking", "ladder_cli.py")) as f:
        assert "add_results_dir(p" in f.read()
    parse_args = load_script("benchmarks/paper_claim.py").parse_args
    for flag in ("--output-dir", "--out-dir"):
        assert parse_args([flag, "elsewhere"]).out_dir == "elsewhere"


def test_console_scripts_are_the_tools_mains():
    """pyproject's `seed-*` scripts run the same main as `python tools/<name>.py`."""
    import importlib
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert {"seed-distill", "seed-convert", "seed-train-net", "seed-demo", "seed-eval-knn",
            "seed-eval-linear"} <= set(scripts)
    targets = set()
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), target
        targets.add(module.split(".", 1)[1] + ".py")
    assert targets == set(TOOLS)  # every tool has its console script


def test_no_path_hacks_in_tools_or_benchmarks():
    """The tools are an installed package: neither they nor the benchmarks edit sys.path."""
    for folder in ("tools", "benchmarks"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(dirpath, name)) as f:
                        assert "sys.path" not in f.read(), os.path.join(dirpath, name)


def test_train_net_hands_the_engines_typed_options():
    from seed_det.engines import RunOptions
    tool = load_script("tools/train_net.py")
    args = tool.parse_args(["--config-file", "c.yaml", "--num-gpus", "2", "MODEL.WEIGHTS", "m.pkl", "--eval-only"])
    assert tool.options(args) == RunOptions(config_file="c.yaml", opts=("MODEL.WEIGHTS", "m.pkl"), eval_only=True,
                                            num_gpus=2)
