"""benchmarks/distill_step.py: the device-agnostic step (what --device cuda runs) on the CPU, the
end-to-end figure on photo JPEGs, and the refusals."""
import json

import pytest
import torch

from conftest import load_script

TINY = ["--student", "resnet18", "--teacher", "resnet18", "--queue-size", "256", "--batch", "4",
        "--image-size", "32", "--repeats", "1", "--warmup", "1", "--precision", "fp32"]


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_the_device_agnostic_step_runs_on_cpu_and_matches_the_reference(tmp_path, restore_threads):
    out = tmp_path / "step.json"
    # fp32 teacher on both sides: the two steps compute the same loss (the default teacher precision
    # is bf16 on a CPU with native bf16, which moves the loss by ~1e-3).
    res = load_script("benchmarks/distill_step.py").main(
        TINY + ["--device", "cpu", "--teacher-precision", "fp32", "--json", str(out)])
    assert res["machine"]["device"] == "cpu" and res["setup"]["compiled"] is False
    assert res["setup"]["teacher_precision"] == "fp32"
    assert res["loss"]["abs_diff"] < 1e-4          # ours and the reference agree on the same batch
    assert all(v > 0 for v in res["seconds_per_step"].values())
    assert json.loads(out.read_text())["setup"]["K"] == 256


def test_ours_step_keeps_everything_on_its_device_and_learns():
    script = load_script("benchmarks/distill_step.py")
    from seed_core.encoders import build_student
    torch.manual_seed(0)
    queue = torch.nn.functional.normalize(torch.randn(64, 128), dim=1)
    step = script.OursStep(build_student("resnet18", 128), script.make_teacher("resnet18", 128), queue, "fp32",
                           device=torch.device("cpu"))
    x = torch.randn(4, 3, 32, 32)
    before = step.loss_only(x)
    for _ in range(3):
        step(x)
    assert step.loss_only(x) < before
    assert step.queue.embeddings.device.type == "cpu" and int(step.queue.ptr) == 12
    assert not step.scaler.is_enabled()            # loss scaling only for fp16


@pytest.mark.slow
def test_with_data_reports_the_input_pipelines_share_on_photo_jpegs(restore_threads):
    res = load_script("benchmarks/distill_step.py").main(
        TINY + ["--with-data", "--workers", "0", "--photo-sizes", "400x300"])
    e = res["end_to_end"]
    assert e["pipeline"] == "fast" and e["workers"] == 0 and "400x300" in e["photos"]
    assert e["seconds_per_step"] > 0 and e["input_pipeline_share"] < 1
    assert abs((1 + e["input_pipeline_cost"]) * (1 - e["input_pipeline_share"]) - 1) < 1e-9


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_and_fp16_on_cpu_are_refused(capsys):
    script = load_script("benchmarks/distill_step.py")
    with pytest.raises(SystemExit) as e:
        script.main(TINY[:-2] + ["--device", "cuda"])
    assert e.value.code == 2 and "no CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        script.main(TINY[:-2] + ["--precision", "fp16"])
    assert e.value.code == 2 and "fp16 needs a CUDA device" in capsys.readouterr().err
