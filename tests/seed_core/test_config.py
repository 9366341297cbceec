import glob
import os

import pytest

from conftest import ROOT
from seed_core.config import ConfigError, get_default_cfg, load_cfg, validate_cfg

DISTILL_CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "distill", "*.yaml"))
                         if not os.path.basename(p).startswith("Base-"))


@pytest.mark.parametrize("path", DISTILL_CONFIGS, ids=os.path.basename)
def test_shipped_distill_configs_load_and_validate(path):
    cfg = load_cfg(path)
    validate_cfg(cfg, world_size=8)
    assert cfg.LOSS.STUDENT_TEMP == 0.2 and cfg.LOSS.TEACHER_TEMP == 0.01 and cfg.QUEUE.SIZE == 65536


def test_defaults_are_the_papers():
    cfg = get_default_cfg()
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY) == (0.03, 0.9, 1e-4)
    assert cfg.SOLVER.EPOCHS == 200 and cfg.MODEL.STUDENT.HEAD_DIM == 128


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="SOLVER.LEARNING_RATE"):
        load_cfg(None, ["SOLVER.LEARNING_RATE", "0.1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("LOSS:\n  TEMPERATURE: 0.1\n")
    with pytest.raises(ConfigError, match="TEMPERATURE"):
        load_cfg(str(bad))


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="SOLVER.BASE_LR"):
        load_cfg(None, ["SOLVER.BASE_LR", "fast"])


@pytest.mark.parametrize("key,value,match", [
    ("SOLVER.BASE_LR", "-0.1", "SOLVER.BASE_LR = -0.1 must be > 0"),
    ("LOSS.TEACHER_TEMP", "0.0", "LOSS.TEACHER_TEMP = 0.0 must be > 0"),
    ("LOSS.STUDENT_TEMP", "-1.0", "LOSS.STUDENT_TEMP"),
    ("QUEUE.SIZE", "100", "QUEUE.SIZE = 100 is smaller than the global batch"),
    ("LOSS.NAME", "'simsiam'", "LOSS.NAME = 'simsiam'"),
    ("SOLVER.BATCH_SIZE", "255", "divisible by the number of processes"),
])
def test_impossible_values_refused_naming_the_key(key, value, match):
    cfg = load_cfg(None, [key, value, "MODEL.TEACHER.WEIGHTS", "t.pth"])
    with pytest.raises(ConfigError, match=match):
        validate_cfg(cfg, world_size=2)


def test_missing_teacher_for_distillation():
    with pytest.raises(ConfigError, match="MODEL.TEACHER.WEIGHTS is empty"):
        validate_cfg(load_cfg(None, []))
    validate_cfg(load_cfg(None, ["LOSS.NAME", "moco"]))

