"""benchmarks/loader_speed.py: its quick run, the photo set it times on, and its refusals."""
import json

import pytest
from PIL import Image

from conftest import load_script
from tools.benchmarking.photos import parse_sizes, write_photo_jpegs


@pytest.fixture
def restore_threads():
    import torch
    n = torch.get_num_threads()  # the benchmark times one view per size on one thread
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_quick_run_times_both_pipelines_and_writes_its_json(tmp_path, capsys, restore_threads):
    assert load_script("benchmarks/loader_speed.py").main(
        ["--quick", "--workers", "0", "--output-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "loader_speed.json").read_text())
    row = result["loader"][0]
    assert row["workers"] == 0 and row["official_images_per_s"] > 0 and row["ours_images_per_s"] > 0
    assert [r["size"] for r in result["one_thread_per_size"]] == ["500x375", "375x500"]
    assert "speed-up of ours over official: " in capsys.readouterr().out


def test_quick_run_refuses_the_committed_results_folder_and_bad_sizes(capsys):
    script = load_script("benchmarks/loader_speed.py")
    assert script.main(["--quick", "--output-dir", script.RESULTS]) == 2
    assert script.main(["--quick", "--sizes", "500by375"]) == 2
    assert "500by375" in capsys.readouterr().err


def test_photos_are_real_jpegs_of_the_requested_sizes(tmp_path):
    files = write_photo_jpegs(str(tmp_path), parse_sizes(["500x375", "375x500"]), per_size=2)
    assert len(files) == 4
    for path in files:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.size == ((500, 375) if "500x375" in path else (375, 500))
            assert sum(c > 0 for c in im.convert("L").histogram()) > 100  # a photograph, not a flat fill


def test_profile_times_every_stage_of_both_pipelines_and_undoes_its_wrapping(capsys, restore_threads):
    import cv2
    import torch

    import seed_core.data as data
    from seed_core import photo_ops
    torch.manual_seed(0)  # the official pipeline draws from the global generator: the same stages each run
    originals = (data.decode_rgb, photo_ops.to_grey, cv2.transform)
    script = load_script("benchmarks/loader_speed.py")
    assert script.main(["--profile", "--quick"]) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in out.splitlines()
            if line.startswith("| ") and " | " in line}
    for stage in ("decode", "crop+resize", "hue", "to tensor+normalise"):  # drawn in every view, or 80 %
        official_ms, ours_ms = float(rows[stage][0]), float(rows[stage][2])
        assert official_ms > 0 and ours_ms > 0, stage
    assert "speed-up of ours over official per view on one thread: " in out
    assert (data.decode_rgb, photo_ops.to_grey, cv2.transform) == originals
    assert script.main(["--profile", "-1"]) == 2
