"""The digits ImageFolder writer: real images, stratified deterministic split, idempotent, offline."""
import hashlib
import socket

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.datasets import ImageFolder

from seed_det.data.synthetic.digits import stratified_split, write_digits_imagefolder

from conftest import load_script



def tree_digest(root):
    """{relative path: sha256} of every file below root."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def full_digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("full") / "digits"
    counts = write_digits_imagefolder(root, size=32, seed=0, val_fraction=0.3)
    return root, counts


def test_full_dataset_counts_and_stratification(full_digits):
    root, counts = full_digits
    target = load_digits().target
    per_class = np.bincount(target)
    expected_val = {str(c): int(round(n * 0.3)) for c, n in enumerate(per_class)}
    assert counts["written"] is True
    assert counts["train"] + counts["val"] == 1797
    assert counts["per_class"]["val"] == expected_val
    assert counts["per_class"]["train"] == {str(c): int(n) - expected_val[str(c)] for c, n in enumerate(per_class)}
    for split in ("train", "val"):
        ds = ImageFolder(str(root / split))
        assert ds.classes == [str(c) for c in range(10)]
        assert len(ds) == counts[split]


def test_images_are_the_real_digits_upsampled(full_digits):
    root, _ = full_digits
    digits = load_digits()
    for path in sorted((root / "val" / "7").glob("*.png"))[:5]:
        index = int(path.stem)
        assert digits.target[index] == 7
        img = Image.open(path)
        assert img.mode == "RGB" and img.size == (32, 32)
        back = np.asarray(img.convert("L").resize((8, 8), Image.BOX), dtype=float)
        corr = np.corrcoef(back.ravel(), digits.images[index].ravel())[0, 1]
        assert corr > 0.9


def test_second_call_is_a_no_op(full_digits):
    root, counts = full_digits
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    again = write_digits_imagefolder(root, size=32, seed=0, val_fraction=0.3)
    assert again["written"] is False
    assert {k: again[k] for k in ("train", "val", "per_class")} == {k: counts[k] for k in ("train", "val", "per_class")}
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_split_is_deterministic_and_depends_on_seed(tmp_path):
    a = write_digits_imagefolder(tmp_path / "a", size=16, seed=3, max_per_class=12)
    write_digits_imagefolder(tmp_path / "b", size=16, seed=3, max_per_class=12)
    write_digits_imagefolder(tmp_path / "c", size=16, seed=4, max_per_class=12)
    assert (a["train"], a["val"]) == (80, 40)  # round(12 * 0.3) = 4 val per class
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    val_files = [tree_digest(tmp_path / d / "val").keys() for d in ("a", "c")]
    assert val_files[0] != val_files[1]
    split = stratified_split(load_digits().target, 0.3, seed=0)
    assert not set(split["train"]) & set(split["val"])
    assert len(split["train"]) + len(split["val"]) == 1797


def test_refuses_to_mix_with_other_content(tmp_path):
    write_digits_imagefolder(tmp_path / "d", size=16, max_per_class=5)
    with pytest.raises(ValueError, match="already holds digits"):
        write_digits_imagefolder(tmp_path / "d", size=24, max_per_class=5)
    next((tmp_path / "d" / "train" / "0").glob("*.png")).unlink()
    with pytest.raises(ValueError, match="files differ"):
        write_digits_imagefolder(tmp_path / "d", size=16, max_per_class=5)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a digits dataset"):
        write_digits_imagefolder(tmp_path / "other")
    (tmp_path / "empty").mkdir()
    assert write_digits_imagefolder(tmp_path / "empty", size=16, max_per_class=5)["written"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "empty", "other"]  # no temp dirs left


def test_works_without_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the digits writer tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert write_digits_imagefolder(tmp_path / "offline", size=8, max_per_class=3)["written"]


def test_command_line(tmp_path, capsys):
    tool = load_script("tools/make_digits_dataset.py")
    assert tool.main([str(tmp_path / "cli"), "--size", "16", "--max-per-class", "10"]) == 0
    assert "70 train and 30 val" in capsys.readouterr().out
    assert tool.main([str(tmp_path / "cli"), "--size", "16", "--max-per-class", "10"]) == 0
    assert "already complete" in capsys.readouterr().out
