"""One YAML loading layer for the distillation and the detection configs: every broken file is one
line naming the file (and line), integers are accepted where the default is a float."""
import pytest

from seed_core.config import load_cfg
from seed_core.errors import ConfigError
from seed_det.config import get_det_cfg, merge_det_config


def load_det_unvalidated(path, opts=()):
    return merge_det_config(get_det_cfg(), path, opts)


LOADERS = {"distill": load_cfg, "detection": load_det_unvalidated}
FLOAT_KEYS = {"distill": "SOLVER.WARMUP_EPOCHS", "detection": "SOLVER.BASE_LR"}


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize("files,match", [
    ({"c.yaml": "SOLVER:\n  BASE_LR: [0.1\n"}, r"c\.yaml, line \d+: not valid YAML"),
    ({"c.yaml": "_BASE_: b.yaml\n", "b.yaml": "_BASE_: c.yaml\n"}, r"_BASE_ cycle \(c\.yaml -> b\.yaml -> c\.yaml\)"),
    ({"c.yaml": "_BASE_: gone.yaml\n"}, r"c\.yaml: its _BASE_ file .*gone\.yaml does not exist"),
    ({"c.yaml": "# nothing here\n"}, r"c\.yaml is empty"),
    ({"c.yaml": "- SOLVER\n- MODEL\n"}, r"c\.yaml: the top level must be a mapping .* not a list"),
    ({"c.yaml": "OUTPUT_DIR: !!python/object/apply:os.system [echo hi]\n"},
     r"c\.yaml, line 1: unsupported YAML tag"),
], ids=["syntax", "base-cycle", "missing-base", "empty", "top-level-list", "unsafe-tag"])
def test_broken_yaml_is_one_line_naming_the_file(tmp_path, kind, files, match):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        LOADERS[kind](str(tmp_path / "c.yaml"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", LOADERS)
def test_integers_are_accepted_for_float_keys(tmp_path, kind):
    section, key = FLOAT_KEYS[kind].split(".")
    path = tmp_path / "c.yaml"
    path.write_text(f"{section}:\n  {key}: 1\n")
    from_file = LOADERS[kind](str(path))
    from_line = LOADERS[kind](str(path), [FLOAT_KEYS[kind], "2"])
    assert from_file[section][key] == 1.0 and type(from_file[section][key]) is float
    assert from_line[section][key] == 2.0 and type(from_line[section][key]) is float
    with pytest.raises(ConfigError, match=f"{FLOAT_KEYS[kind]} must be a number"):
        LOADERS[kind](str(path), [FLOAT_KEYS[kind], "'fast'"])
