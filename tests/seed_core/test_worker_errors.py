"""A SeedError raised in a DataLoader worker reaches the user of tools/distill.py as the one line the
main process would print, with the run log (which holds the worker's traceback) for details."""
import os
import socket
import subprocess
import sys

import pytest
from torch.utils.data import DataLoader, Dataset

from conftest import ROOT, load_script, tiny_opts, write_images
from seed_core.config import load_cfg
from seed_core.errors import DatasetError, ProcessFailedError, SeedError
from seed_core.trainer import train
from seed_core.worker_errors import (original_message, plain_process_errors, plain_worker_errors,
                                     raised_in_spawned_process)


class Broken(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise DatasetError("image 7.png cannot be read:\nreplace it")


def test_a_workers_seed_error_gets_its_own_type_and_message_back(tmp_path):
    log = str(tmp_path / "log.txt")
    with pytest.raises(DatasetError) as caught:
        with plain_worker_errors(log):
            list(DataLoader(Broken(), num_workers=1))
    assert str(caught.value) == f"image 7.png cannot be read: replace it (details: {log})"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert "Original Traceback" in open(log).read() and "__getitem__" in open(log).read()
    with pytest.raises(DatasetError, match="^image 7.png cannot be read:\nreplace it$"):
        with plain_worker_errors(log):  # raised in this process: unchanged
            list(DataLoader(Broken(), num_workers=0))
    assert original_message(SeedError("Caught nothing")) is None


def _unreadable_images(root, n=24):
    write_images(root, n)
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(b"not an image")


def test_distillation_reports_a_workers_error_in_one_line(tmp_path, capsys):
    root, out = str(tmp_path / "images"), str(tmp_path / "run")
    _unreadable_images(root)
    opts = tiny_opts(root, None, out, **{"LOSS.NAME": "moco", "DATA.NUM_WORKERS": 1})
    with pytest.raises(DatasetError) as caught:
        train(load_cfg(None, opts))
    log = os.path.join(out, "log.txt")
    assert str(caught.value) == f"no image in the dataset could be read (details: {log})"
    assert "Original Traceback" in open(log).read()

    distill = load_script("tools/distill.py")
    capsys.readouterr()
    assert distill.main(opts + ["--restart"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: no image in the dataset could be read (details: {log})"
    assert not any("Traceback" in line or "Caught" in line for line in err)


def test_an_unexpected_error_of_a_rank_is_one_line_naming_it_and_the_log(tmp_path):
    log = str(tmp_path / "log.txt")
    open(log, "w").close()
    with pytest.raises(ProcessFailedError) as caught:
        with plain_process_errors(1, 2, log):
            {}["missing key"]
    assert str(caught.value) == f"the process of rank 1 failed: KeyError: 'missing key' (details: {log})"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    text = open(log).read()
    assert "the process of rank 1 failed:" in text and "Traceback" in text and "KeyError" in text
    with pytest.raises(ProcessFailedError, match=r"^the process of rank 0 failed: RuntimeError: out of memory$"):
        with plain_process_errors(0, 2, str(tmp_path / "absent" / "log.txt")):  # no log: no details
            raise RuntimeError("out of memory\ntried to allocate ...")
    with pytest.raises(DatasetError, match="^as it was$"):  # the user's errors keep their own line
        with plain_process_errors(1, 2, log):
            raise DatasetError("as it was")
    with pytest.raises(KeyError):  # one process: its traceback is not mixed with others, keep it
        with plain_process_errors(0, 1, log):
            {}["missing key"]


BROKEN_RANK = """
import sys
sys.path.insert(0, {root!r})
from seed_core.trainer import Trainer

step = Trainer._step


def broken(self, images, it, new_bad):
    if self.ctx.rank == 1 and it == 1:
        {{}}["a key that is not there"]  # a bug, not the user's fault: not a SeedError
    return step(self, images, it, new_bad)


Trainer._step = broken
from tools import distill
sys.exit(distill.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_an_unexpected_error_on_a_ddp_rank_reaches_the_user_as_one_line(images, moco_teacher, tmp_path):
    runner = tmp_path / "broken_rank.py"
    runner.write_text(BROKEN_RANK.format(root=ROOT))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp")
    opts = tiny_opts(images, moco_teacher, out, **{"TRAIN.DIST_TIMEOUT": 30})
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(runner), *opts], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    err = [p.communicate(timeout=180)[1] for p in procs]  # a hang guard, not a speed check
    log = os.path.join(out, "log.txt")
    assert procs[1].returncode == 2, err[1][-2000:]
    assert err[1].strip().splitlines()[-1] == (f"error: the process of rank 1 failed: KeyError: "
                                               f"'a key that is not there' (details: {log})")
    assert procs[0].returncode == 2 and "lost contact with the other processes" in err[0].strip().splitlines()[-1]
    assert not any("Traceback" in e for e in err), err
    assert "Traceback" in open(log).read() and "a key that is not there" in open(log).read()


def _raise_in_process(index):
    raise ProcessFailedError("the process of rank 1 failed: KeyError: 'k' (details: out/log.txt)")


def _fail_in_process(index):
    {}["not ours"]


@pytest.mark.slow  # starts two processes (torch.multiprocessing spawn)
def test_a_seed_error_of_a_spawned_process_gets_its_one_line_back():
    """Detectron2's launcher (torch.multiprocessing) puts the process's whole traceback in its message."""
    from torch.multiprocessing import ProcessRaisedException, start_processes
    with pytest.raises(ProcessRaisedException) as caught:
        start_processes(_raise_in_process, nprocs=1, start_method="spawn")
    assert "Traceback" in str(caught.value)
    plain = raised_in_spawned_process(caught.value)
    assert type(plain) is ProcessFailedError
    assert str(plain) == "the process of rank 1 failed: KeyError: 'k' (details: out/log.txt)"
    with pytest.raises(ProcessRaisedException) as caught:
        start_processes(_fail_in_process, nprocs=1, start_method="spawn")
    assert raised_in_spawned_process(caught.value) is None  # not ours: left as it is
