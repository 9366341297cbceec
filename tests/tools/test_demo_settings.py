"""The demo builds its configs from typed values: the configs are those the `KEY VALUE` strings of
a command line gave (the cached runs' results do not depend on how a config was handed over)."""
import os

import pytest

from seed_core.config import load_cfg
from seed_det.config import load_det_config
from seed_det.engines import engine_identity
from tools.pipeline.demo import PRESET_DIR, _settings, load_preset, pretraining_opts


def _as_strings(values: dict) -> list:
    """How the demo used to hand them over: every value a string, to be parsed again."""
    return [x if isinstance(x, str) else repr(x) for kv in values.items() for x in kv]


def test_typed_detection_settings_give_the_config_strings_gave(tmp_path):
    settings = {
        "MODEL.WEIGHTS": str(tmp_path / "seed.pkl"),
        "DATASETS.COCO_JSON": [["scenes_train", str(tmp_path / "train.json"), str(tmp_path / "images")],
                               ["scenes_test", str(tmp_path / "test.json"), str(tmp_path / "images")]],
        "DATASETS.TRAIN": ("scenes_train",), "DATASETS.TEST": ("scenes_test",),
        "INPUT.MIN_SIZE_TRAIN": (128,), "INPUT.MAX_SIZE_TRAIN": 128, "SOLVER.BASE_LR": 0.02, "SOLVER.MAX_ITER": 40,
        "SOLVER.STEPS": (32,), "SOLVER.WARMUP_ITERS": 13, "SEED": 1, "OUTPUT_DIR": str(tmp_path / "det"),
        "MODEL.MASK_ON": True, "MODEL.ROI_HEADS.NAME": "StandardROIHeads",
    }
    path = os.path.join(PRESET_DIR, "digits_r18_fpn.yaml")
    typed = load_det_config(path, _settings(settings))
    assert typed.dump() == load_det_config(path, _as_strings(settings)).dump()
    assert typed.SOLVER.BASE_LR == 0.02 and typed.MODEL.MASK_ON is True and typed.SEED == 1


def test_typed_pretraining_settings_give_the_config_strings_gave(tmp_path):
    p = load_preset("tiny")
    opts = {**pretraining_opts(p, {"pretrain": str(tmp_path / "crops")}, workers=0), "LOSS.NAME": "seed",
            "MODEL.STUDENT.ARCH": p["student_arch"], "SOLVER.EPOCHS": p["student_epochs"],
            "OUTPUT_DIR": str(tmp_path / "run")}
    assert load_cfg(None, _settings(opts)).dump() == load_cfg(None, _as_strings(opts)).dump()


def test_a_fine_tunings_engine_identity_is_readable():
    """The cache key of a fine-tuning's engine: names and versions, nothing to recompute from files."""
    identity = engine_identity("torchvision")
    assert set(identity) == {"engine", "library", "seed-transfer"}
    assert all(isinstance(v, str) and v for v in identity.values())


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_the_presets_precision_holds_for_the_teacher_too(tmp_path, precision):
    """A preset's fp32 must mean fp32 for the frozen teacher as well: the teacher's own `auto` is
    bf16 on CPUs with native bf16, which would make the students differ between machines."""
    from seed_core.teacher_precision import resolve_teacher_precision
    p = {**load_preset("tiny"), "precision": precision}
    opts = pretraining_opts(p, {"pretrain": str(tmp_path / "crops")}, workers=0)
    cfg = load_cfg(None, _settings({**opts, "LOSS.NAME": "seed", "OUTPUT_DIR": str(tmp_path / "run")}))
    assert cfg.TRAIN.PRECISION == cfg.TRAIN.TEACHER_PRECISION == precision
    if precision == "fp32":
        assert resolve_teacher_precision(cfg.TRAIN.TEACHER_PRECISION, "cpu") == "fp32"
