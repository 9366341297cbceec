"""tools/zoo.py: list the zoo, fetch by name (from a local HTTP server), refuse unknown names."""
import hashlib

from conftest import load_script
from seed_core import zoo


def test_list_names_every_entry_and_the_cache_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert load_script("tools/zoo.py").main(["list"]) == 0
    out = capsys.readouterr().out
    for name, entry in zoo.CATALOGUE.items():
        assert name in out and entry.arch in out
    assert "md5:a04e12f8" in out and "recorded at first download" in out and str(tmp_path) in out


def test_fetch_prints_the_cached_path_and_refuses_unknown_names_before_downloading(
        tmp_path, monkeypatch, capsys, file_server):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    data = b"weights" * 1000
    file_server.files["/t.pth"] = data
    monkeypatch.setitem(zoo.CATALOGUE, "toy", zoo.ZooEntry(
        "toy", file_server.url("/t.pth"), "resnet18", "torchvision", "sha256:" + hashlib.sha256(data).hexdigest()[:8], "test"))
    main = load_script("tools/zoo.py").main
    assert main(["fetch", "toy", "no_such_teacher"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown teacher zoo name 'no_such_teacher'") and "mocov2_r50_800ep" in err
    assert file_server.requests == []  # every name is checked before anything is downloaded
    assert main(["fetch", "toy"]) == 0
    path = capsys.readouterr().out.strip()
    assert path == zoo.cache_path("toy") and open(path, "rb").read() == data
