import json
import os

import pytest
import yaml

from conftest import load_script
from seed_core.encoders import backbone_size
from tools.pipeline.demo import BASE_PRESET, INITS, load_preset, plan_pretraining, preset_names, run_demo
from tools.pipeline.report import read_loss_curve


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_and_cached_rerun(tmp_path, capsys):
    out = str(tmp_path / "demo")
    results = run_demo(out, "tiny", engine="torchvision", workers=0)
    assert set(results) == set(INITS)
    for summary in results.values():
        assert len(summary["runs"]) == len(load_preset("tiny")["det_seeds"])
        for k in ("AP", "AP50", "AP75"):  # the tiny preset fine-tunes one seed: a mean, no spread
            assert 0.0 <= summary[k] <= 100.0 and k + "_std" not in summary
    table = open(os.path.join(out, "results.md")).read()
    assert "SEED resnet18" in table and "random init" in table and " ± " not in table and "k-NN" in table
    for png in ("results.png", "loss_curves.png"):
        assert open(os.path.join(out, png), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    for stage in ("teacher_moco", "student_seed"):
        its, losses = read_loss_curve(os.path.join(out, stage))
        assert its and len(its) == len(losses)
    # tiny's MoCo-v2 student has the teacher's architecture, recipe and budget: it is the teacher
    assert not os.path.exists(os.path.join(out, "student_moco"))
    assert json.load(open(os.path.join(out, "results.json")))["knn"]["moco"] == \
        json.load(open(os.path.join(out, "results.json")))["knn"]["teacher"]
    preset = load_preset("tiny")
    lrs = {s: yaml.safe_load(open(os.path.join(out, s, "config.yaml")))["SOLVER"]["BASE_LR"]
           for s in ("teacher_moco", "student_seed")}
    assert lrs == {"teacher_moco": preset["distill_base_lr"], "student_seed": preset["seed_student_lr"]}
    meta = json.load(open(os.path.join(out, "student_seed", "meta.json")))
    assert meta["loss"] == "seed" and meta["teacher"]["arch"] == "resnet18"
    assert os.path.isfile(os.path.join(out, "data", "scenes", "annotations", "instances_test.json"))

    markers = {s: os.path.getmtime(os.path.join(out, s, "run.json"))
               for s in ("data", "teacher_moco", "student_seed", "knn", "det_seed_s0", "det_moco_s0", "det_random_s0")}
    capsys.readouterr()
    again = run_demo(out, "tiny", engine="torchvision", workers=0)
    assert json.dumps(again, sort_keys=True) == json.dumps(results, sort_keys=True)  # NaN (no large objects) != NaN
    assert "running" not in capsys.readouterr().out
    for s, t in markers.items():
        assert os.path.getmtime(os.path.join(out, s, "run.json")) == t

    # A changed teacher: it trains again (its old files moved aside), and so does everything it feeds.
    changed = tmp_path / "changed.yaml"
    changed.write_text(f"_BASE_: {os.path.join(os.path.dirname(BASE_PRESET), 'tiny.yaml')}\ndistill_base_lr: 0.06\n")
    run_demo(out, str(changed), engine="torchvision", workers=0)
    for s in ("teacher_moco", "student_seed", "det_seed_s0", "knn"):  # the k-NN of the new backbones, not the old
        assert os.path.getmtime(os.path.join(out, s, "run.json")) > markers[s], s
    assert [d for d in os.listdir(os.path.join(out, "teacher_moco")) if d.startswith("previous-")]
    assert os.path.isdir(os.path.join(out, "student_moco"))  # its lr is no longer the teacher's
    # ... but it is the old teacher's recipe, so training reproduces the old weights bit for bit:
    # fine-tunings are keyed by their weights, so its fine-tuning (like random init's) is reused
    for s in ("det_moco_s0", "det_random_s0"):
        assert os.path.getmtime(os.path.join(out, s, "run.json")) == markers[s], s


def test_a_moco_student_unlike_the_teacher_is_its_own_step_and_fine_tunings_wait_for_their_backbone(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(f"_BASE_: {os.path.join(os.path.dirname(BASE_PRESET), 'tiny.yaml')}\nmoco_student_lr: 0.06\n")
    steps, pre = plan_pretraining(str(tmp_path / "demo"), load_preset(str(preset)), workers=0)
    after = {s.name: s.after for s in steps}
    assert after["student_moco"] == () and after["student_seed"] == ("teacher_moco",)
    assert set(after["knn"]) == {"teacher_moco", "student_seed", "student_moco"}
    assert pre.curves["student MoCo-v2"].endswith(os.path.join("student_moco", "metrics.jsonl"))
    assert pre.weights["random"] == "" and pre.weights["seed"].endswith(os.path.join("convert_seed", "seed.pkl"))


def test_every_shipped_preset_loads():
    """A typo in a shipped preset (configs/demo/*.yaml inheriting Base-Demo.yaml) fails here, not
    an hour into a benchmark."""
    presets = preset_names()
    assert {"default", "tiny", "transfer"} <= set(presets)
    for name in presets:
        assert load_preset(name)["det_config"].endswith(".yaml")
    # the benchmark pretrains longer than the 15-minute demo
    assert load_preset("transfer")["teacher_epochs"] > load_preset("default")["teacher_epochs"]


def test_the_demo_distils_from_a_teacher_larger_than_its_student():
    demo = load_preset("default")
    assert backbone_size(demo["teacher_arch"]) > backbone_size(demo["student_arch"])


def test_presets_layer_over_the_base_and_refuse_unknown_keys(tmp_path):
    tiny, default = load_preset("tiny"), load_preset("default")
    assert tiny["teacher_epochs"] == 1 and default["teacher_epochs"] > 1
    assert tiny["det_lr"] == default["det_lr"]          # inherited from Base-Demo.yaml
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_BASE_: {BASE_PRESET}\nteacher_epoch: 3\n")
    with pytest.raises(ValueError, match="teacher_epoch"):
        load_preset(str(bad))
    with pytest.raises(ValueError, match="not found"):
        load_preset("no_such_preset")
    bad.write_text(f"_BASE_: {BASE_PRESET}\nmoco_student_lr: 0.0\n")
    with pytest.raises(ValueError, match="moco_student_lr = 0.0"):
        load_preset(str(bad))
    for key, value in (("processes", -1), ("threads", 0), ("precision", "fp16")):
        bad.write_text(f"_BASE_: {BASE_PRESET}\n{key}: {value}\n")
        with pytest.raises(ValueError, match=f"{key} = {value}"):
            load_preset(str(bad))
    bad.write_text(f"_BASE_: {BASE_PRESET}\nteacher_arch: resnet18\nstudent_arch: resnet34\n")
    with pytest.raises(ValueError, match="teacher_arch resnet18 .* is smaller than student_arch resnet34"):
        load_preset(str(bad))
    bad.write_text(f"_BASE_: {BASE_PRESET}\nstudent_arch: resnet_17\n")
    with pytest.raises(ValueError, match="unknown backbone 'resnet_17'"):
        load_preset(str(bad))
    bad.write_text("_BASE_: Base-Demo.yaml\n")  # relative: read from the preset's own folder, not configs/demo
    with pytest.raises(ValueError, match="_BASE_"):
        load_preset(str(bad))


def test_the_demo_refuses_a_bad_preset_before_any_stage(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_BASE_: {BASE_PRESET}\nseed_student_lr: -1.0\n")
    out = tmp_path / "demo"
    assert load_script("tools/demo.py").main(["--preset", str(bad), "--out", str(out)]) == 2
    assert "seed_student_lr = -1.0" in capsys.readouterr().err and not out.exists()


def test_a_fine_tunings_key_follows_the_detection_configs_content_not_its_name(tmp_path):
    from tools.pipeline.demo import PRESET_DIR, _config_digest
    base = os.path.join(PRESET_DIR, "digits_r18_fpn.yaml")
    cfg = tmp_path / "det.yaml"
    cfg.write_text(f"_BASE_: {base}\n")
    same = _config_digest(str(cfg))
    assert same == _config_digest("digits_r18_fpn.yaml")   # the merged config, whatever file holds it
    cfg.write_text(f"_BASE_: {base}\nMODEL:\n  RPN:\n    POST_NMS_TOPK_TRAIN: 100\n")
    assert _config_digest(str(cfg)) != same                 # an edited file is another fine-tuning


def test_a_diverged_fine_tuning_is_recorded_counted_and_left_out_of_the_mean(tmp_path, monkeypatch):
    import tools.pipeline.demo as dp
    from seed_core.errors import NonFiniteLossError
    from tools.pipeline.report import results_markdown

    calls = []

    def detect(stage, weights, data, p, seed, engine, extra=None):
        calls.append(seed)
        if seed == 1:
            raise NonFiniteLossError("the detection loss is not finite at iteration 54")
        return {"metrics": {"AP": 10.0 + seed, "AP50": 20.0 + seed}}

    monkeypatch.setattr(dp, "_detect", detect)
    pre = dp.Pretrained(load_preset("tiny"), data={}, weights={"random": ""}, knn={}, curves={})
    runs = [dp.finetune(str(tmp_path), pre, "random", seed, engine="torchvision") for seed in (0, 1, 2)]
    assert "iteration 54" in runs[1]["diverged"] and "AP" not in runs[1]
    assert dp.finetune(str(tmp_path), pre, "random", 1, engine="torchvision") == runs[1]  # a recorded outcome
    assert calls == [0, 1, 2]
    summary = dp.summarise(runs)
    assert summary["diverged"] == 1 and summary["AP50"] == 21.0 and summary["AP50_std"] == pytest.approx(2 ** 0.5)
    assert "random init (1 of 3 runs diverged) | 11.0 ± 1.4 | 21.0 ± 1.4 |" in results_markdown({"random init": summary})
    assert dp.summarise([runs[1]]) == {"runs": [runs[1]], "diverged": 1}
    # one finished run is a value without a spread, not "± 0.0"
    assert dp.summarise(runs[:2]) == {"runs": runs[:2], "diverged": 1, "AP": 10.0, "AP50": 20.0}
    assert "| random init (1 of 2 runs diverged) | 10.0 | 20.0 |" in results_markdown({"random init": dp.summarise(runs[:2])})
