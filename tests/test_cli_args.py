"""Flags may follow the `KEY VALUE` overrides, as Detectron2 users type them."""
import pytest

from conftest import load_script


@pytest.mark.parametrize("tool,flag", [("tools/train_net.py", "eval_only"), ("tools/distill.py", "resume")])
def test_flags_after_overrides_are_flags(tool, flag):
    parse_args = load_script(tool).parse_args
    option = "--" + flag.replace("_", "-")
    args = parse_args(["--config", "c.yaml", "MODEL.WEIGHTS", "m.pth", option, "SOLVER.BASE_LR", "0.1"])
    assert getattr(args, flag) is True
    assert args.opts == ["MODEL.WEIGHTS", "m.pth", "SOLVER.BASE_LR", "0.1"]
    with pytest.raises(SystemExit):  # a misspelt flag is refused, not taken for an override
        parse_args(["--config", "c.yaml", "MODEL.WEIGHTS", "m.pth", option + "x"])
