"""A SeedError raised in a DataLoader worker reaches the user of tools/distill.py as the one line the
main process would print, with the run log (which holds the worker's traceback) for details."""
import os

import pytest
from torch.utils.data import DataLoader, Dataset

from conftest import load_script, tiny_opts, write_images
from seed_core.config import load_cfg
from seed_core.errors import DatasetError, SeedError
from seed_core.trainer import train
from seed_core.worker_errors import original_message, plain_worker_errors


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
