"""Each concept has one home that every caller uses: the run log, the file names of a run folder
(the kind of a weights file: test_tv_engine; the results schema: test_results)."""
import ast
import logging
import os
import re

from conftest import ROOT
from seed_core import constants
from seed_core.run_dir import RunLog

SOURCES = ("seed_core", "seed_det", "tools")


def _python_files():
    for package in SOURCES:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in names:
                if name.endswith(".py"):
                    yield os.path.join(folder, name)


def _imports(path, module):
    tree = ast.parse(open(path).read())
    return {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
            and (n.module == module or n.level and n.module == module.rsplit(".", 1)[-1]) for a in n.names}


def test_both_engines_and_the_trainer_keep_their_log_with_run_log():
    for module in ("seed_det/engines/tv/engine.py", "seed_det/engines/d2/engine.py", "seed_core/trainer.py"):
        assert "RunLog" in _imports(os.path.join(ROOT, module), "seed_core.run_dir"), module
    for path in _python_files():
        if not path.endswith(os.path.join("seed_core", "run_dir.py")):
            assert "FileHandler" not in open(path).read(), path


def test_run_log_writes_the_main_process_log_and_quiets_the_others(tmp_path):
    ours, theirs = logging.getLogger("seed_det.test_homes"), logging.getLogger("seed_core.test_homes")
    parents = [logging.getLogger("seed_det"), logging.getLogger("seed_core")]
    levels = [lg.level for lg in parents]
    with RunLog(str(tmp_path), ("seed_det", "seed_core")):
        ours.info("from seed_det")
        theirs.info("from seed_core")
    ours.info("after the run")
    text = (tmp_path / constants.LOG_FILE).read_text()
    assert "from seed_det" in text and "from seed_core" in text and "after the run" not in text
    other = tmp_path / "other"
    other.mkdir()
    with RunLog(str(other), ("seed_det", "seed_core"), enabled=False, quiet=True):
        assert all(lg.getEffectiveLevel() == logging.WARNING for lg in parents)
    assert not (other / constants.LOG_FILE).exists()
    assert [lg.level for lg in parents] == levels


def test_run_folder_file_names_are_spelt_once():
    """A run folder's file names are seed_core.constants'; no other module spells them."""
    names = [v for k, v in vars(constants).items() if k.endswith("_FILE") and isinstance(v, str)]
    assert len(names) == len(set(names))
    literal = re.compile("|".join(r"[\"']" + re.escape(n) + r"[\"']" for n in names))
    for path in _python_files():
        if path.endswith(os.path.join("seed_core", "constants.py")):
            continue
        code = [line for line in open(path) if not line.lstrip().startswith("#")]
        found = [line.strip() for line in code if literal.search(line)]
        assert not found, (path, found)


def test_which_process_is_the_main_one_is_decided_in_seed_core_distributed(monkeypatch):
    """The launcher's RANK is read by seed_core.distributed only (launched_rank, is_main_process)."""
    from seed_core.distributed import is_main_process, launched_rank
    reads_rank = re.compile(r"environ(\.get)?[\[(]\s*[\"']RANK[\"']")
    for path in _python_files():
        if not path.endswith(os.path.join("seed_core", "distributed.py")):
            assert not reads_rank.search(open(path).read()), path
    monkeypatch.delenv("RANK", raising=False)
    assert launched_rank() == 0 and is_main_process()
    monkeypatch.setenv("RANK", "3")
    assert launched_rank() == 3 and not is_main_process()
