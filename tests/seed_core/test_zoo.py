"""The teacher zoo: catalogue, cache under TORCH_HOME, resumable verified downloads. Files come from
a local HTTP server (conftest.FileServer), never the internet."""
import hashlib
import json
import os

import pytest
import timm

from seed_core import zoo
from seed_core.config import _CHOICES, load_cfg, validate_cfg
from seed_core.download import parse_checksum
from seed_core.encoders import SWAV_WIDE_RESNETS, TORCHVISION_RESNETS
from seed_core.errors import ChecksumError, ConfigError, DownloadError

PAYLOAD = bytes(range(256)) * 40  # 10 KiB


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def _entry(monkeypatch, server, name="toy", data=PAYLOAD, checksum="md5", path=None):
    """A zoo entry served by `server`; checksum: 'md5' / 'sha256' (the right one, as published),
    a literal string, or None (none published)."""
    path = path or f"/files/{name}.pth"
    server.files[path] = data
    if checksum in ("md5", "sha256"):
        checksum = f"{checksum}:{hashlib.new(checksum, data).hexdigest()[:8]}"
    entry = zoo.ZooEntry(name, server.url(path), "resnet18", "torchvision", checksum, "a test file")
    monkeypatch.setitem(zoo.CATALOGUE, name, entry)
    return entry


def test_fetch_downloads_once_into_torch_home_verified_with_progress(cache, file_server, monkeypatch):
    _entry(monkeypatch, file_server)
    seen = []
    path = zoo.fetch("toy", progress=lambda done, total: seen.append((done, total)))
    assert path == str(cache / "toy.pth")
    assert open(path, "rb").read() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD)) and seen[0][0] == 0
    assert not os.path.exists(path + ".partial")
    records = json.loads((cache / zoo.RECORDS_FILE).read_text())
    assert records["toy.pth"]["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert zoo.resolve("zoo:toy") == path and len(file_server.requests) == 1  # cached: no second request
    assert zoo.resolve("some/file.pth") == "some/file.pth"


def test_an_interrupted_download_resumes_with_a_range_request(cache, file_server, monkeypatch):
    _entry(monkeypatch, file_server, checksum="sha256")
    file_server.cut_after = 3000
    with pytest.raises(DownloadError) as err:
        zoo.fetch("toy")
    partial = str(cache / "toy.pth.partial")
    assert "run again to resume" in str(err.value) and partial in str(err.value)
    assert os.path.getsize(partial) == 3000 and not os.path.exists(cache / "toy.pth")
    assert open(zoo.fetch("toy"), "rb").read() == PAYLOAD
    assert file_server.requests[-1] == ("/files/toy.pth", "bytes=3000-")


def test_a_server_that_ignores_range_restarts_from_the_first_byte(cache, file_server, monkeypatch):
    _entry(monkeypatch, file_server)
    cache.mkdir(parents=True)
    (cache / "toy.pth.partial").write_bytes(b"stale bytes from elsewhere")
    file_server.honour_range = False
    assert open(zoo.fetch("toy"), "rb").read() == PAYLOAD


def test_a_checksum_mismatch_deletes_the_partial_file_and_says_so(cache, file_server, monkeypatch):
    _entry(monkeypatch, file_server, checksum="md5:0123456789abcdef")
    with pytest.raises(ChecksumError) as err:
        zoo.fetch("toy")
    assert "was deleted" in str(err.value) and "md5:0123456789abcdef" in str(err.value)
    assert os.listdir(cache) == [] or set(os.listdir(cache)) <= {zoo.RECORDS_FILE}


def test_without_a_published_checksum_the_first_download_is_recorded_and_enforced(cache, file_server, monkeypatch):
    _entry(monkeypatch, file_server, checksum=None)
    path = zoo.fetch("toy")
    os.unlink(path)
    file_server.files["/files/toy.pth"] = PAYLOAD[:-1] + b"\x00"  # the file on the server changed
    with pytest.raises(ChecksumError) as err:
        zoo.fetch("toy")
    assert "sha256:" + hashlib.sha256(PAYLOAD).hexdigest() in str(err.value)
    assert not os.path.exists(path) and not os.path.exists(path + ".partial")


def test_a_file_placed_by_hand_is_verified_once(cache, file_server, monkeypatch):
    _entry(monkeypatch, file_server)
    cache.mkdir(parents=True)
    (cache / "toy.pth").write_bytes(b"not the checkpoint")
    with pytest.raises(ChecksumError, match="delete it"):
        zoo.fetch("toy")
    (cache / "toy.pth").write_bytes(PAYLOAD)
    assert zoo.fetch("toy") == str(cache / "toy.pth")
    assert file_server.requests == []


@pytest.mark.parametrize("records", ["{not json", "[1, 2]", '{"toy.pth": "abc"}', '{"toy.pth": {"size": 1}}',
                                     '{"toy.pth": {"sha256": "xyz", "size": 10240}}'])
def test_damaged_checksum_records_are_set_aside_and_the_file_verified_again(cache, file_server, monkeypatch,
                                                                            records):
    _entry(monkeypatch, file_server, checksum=None)
    cache.mkdir(parents=True)
    (cache / zoo.RECORDS_FILE).write_text(records)
    path = zoo.fetch("toy")
    assert open(path, "rb").read() == PAYLOAD
    recorded = json.loads((cache / zoo.RECORDS_FILE).read_text())["toy.pth"]  # rewritten, a good record
    assert recorded["sha256"] == hashlib.sha256(PAYLOAD).hexdigest() and recorded["size"] == len(PAYLOAD)


def test_offline_the_error_gives_the_url_and_where_to_place_the_file(cache, file_server, monkeypatch):
    entry = _entry(monkeypatch, file_server)
    file_server.close()  # nothing listens there any more
    with pytest.raises(DownloadError) as err:
        zoo.fetch("toy", timeout=5)
    assert entry.url in str(err.value) and str(cache / "toy.pth") in str(err.value)


def test_unknown_names_list_the_known_ones_and_configs_are_checked_before_work():
    with pytest.raises(ConfigError, match="mocov2_r50_800ep"):
        zoo.get_entry("mocov3_r50")
    cfg = load_cfg(None, ["MODEL.TEACHER.WEIGHTS", "zoo:mocov3_r50"])
    with pytest.raises(ConfigError, match="unknown teacher zoo name 'mocov3_r50'; known names: mocov1_r50_200ep"):
        validate_cfg(cfg)
    cfg = load_cfg(None, ["MODEL.TEACHER.WEIGHTS", "zoo:dinov2_vits14"])
    with pytest.raises(ConfigError, match="set MODEL.TEACHER.ARCH vit_small_patch14_dinov2"):
        validate_cfg(cfg)
    validate_cfg(load_cfg(None, ["MODEL.TEACHER.WEIGHTS", "zoo:dinov2_vits14", "MODEL.TEACHER.ARCH",
                                 "vit_small_patch14_dinov2", "MODEL.STUDENT.HEAD_DIM", "0"]))


def test_the_catalogue_is_consistent():
    names = list(zoo.CATALOGUE)
    assert {"mocov1_r50_200ep", "mocov2_r50_800ep", "swav_r50_800ep", "simclr_r50_200ep", "byol_r50_200ep",
            "dino_vits16", "dinov2_vits14"} <= set(names)
    filenames = [e.filename for e in zoo.CATALOGUE.values()]
    assert len(set(filenames)) == len(filenames)  # one cache file per name
    for e in zoo.CATALOGUE.values():
        assert e.url.startswith("https://") and e.format in _CHOICES["MODEL.TEACHER.FORMAT"], e
        assert e.arch in TORCHVISION_RESNETS or e.arch in SWAV_WIDE_RESNETS or timm.is_model(e.arch), e
        if e.checksum:
            parse_checksum(e.checksum)
    assert zoo.CATALOGUE["mocov2_r50_800ep"].checksum == "md5:a04e12f8"  # as MoCo's README prints it


def test_processes_fetching_at_once_download_once(cache, file_server, monkeypatch):
    """The ranks of a run all ask for the teacher: the cache folder's lock lets the first download
    while the others wait, then find the file (threads stand in for processes: flock locks each
    open of the folder separately)."""
    import threading
    _entry(monkeypatch, file_server, data=PAYLOAD * 50)
    paths, errors = [], []

    def fetch():
        try:
            paths.append(zoo.fetch("toy"))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)
    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(paths)) == 1 and len(paths) == 3
    assert len(file_server.requests) == 1
