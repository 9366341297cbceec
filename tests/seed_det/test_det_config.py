"""Detection configs: shipped YAML files, _BASE_/overrides/unknown keys, engine dispatch and pre-flight.

Runs without Detectron2; the Detectron2-equivalence tests skip when it is absent.
"""
import dataclasses
import glob
import json
import os
import subprocess
import sys
import types

import pytest
import torch
import torchvision
from PIL import Image

from seed_core.errors import SeedError
from seed_det import engines
from seed_core.yaml_config import flatten_cfg
from seed_det.config import BASIC_BLOCK_ROI_HEAD, ConfigError, get_det_cfg, load_det_config
from seed_det.convert import CheckpointError, convert_to_d2

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "voc_r*.yaml")) +  # the ResNet transfer-protocol configs
                 glob.glob(os.path.join(ROOT, "configs", "coco_r*.yaml")))
NAMES = [os.path.basename(c) for c in CONFIGS]
TORCHVISION_MEAN, TORCHVISION_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
NO_D2 = "import sys; sys.modules['detectron2'] = None\n"  # makes `import detectron2` fail


def _cfg(name, *opts):
    return load_det_config(os.path.join(ROOT, "configs", name), list(opts))


# ----------------------------------------------------------------------------------------------
# Shipped configs
# ----------------------------------------------------------------------------------------------

def test_config_matrix_is_complete():
    for data, sched in (("voc", [""]), ("coco", ["_1x", "_2x"])):
        for depth in (18, 34):
            for arch in ("", "_fpn"):
                for s in sched:
                    for variant in ("seed", "mocov2", "random"):
                        assert f"{data}_r{depth}{arch}{s}_{variant}.yaml" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_config_loads_and_follows_protocol(name):
    cfg = _cfg(name)
    depth = int(name.split("_r")[1][:2])
    m = cfg.MODEL
    assert m.RESNETS.DEPTH == depth and m.RESNETS.RES2_OUT_CHANNELS == 64
    assert m.RESNETS.NORM == "SyncBN" and m.BACKBONE.FREEZE_AT == 0 and not m.RESNETS.STRIDE_IN_1X1
    assert cfg.INPUT.FORMAT == "RGB" and list(m.PIXEL_MEAN) == TORCHVISION_MEAN and list(m.PIXEL_STD) == TORCHVISION_STD
    assert cfg.SOLVER.IMS_PER_BATCH == 16
    if "_fpn" in name:
        assert m.BACKBONE.NAME == "build_resnet_fpn_backbone" and m.FPN.NORM == "SyncBN"
        assert m.ROI_BOX_HEAD.NORM == "SyncBN"
    else:
        assert m.ROI_HEADS.NAME == BASIC_BLOCK_ROI_HEAD and m.ROI_HEADS.RES5_EXTRA_NORM
    if name.startswith("voc"):
        assert tuple(cfg.DATASETS.TRAIN) == ("voc_2007_trainval", "voc_2012_trainval")
        assert tuple(cfg.DATASETS.TEST) == ("voc_2007_test",)
        assert m.ROI_HEADS.NUM_CLASSES == 20 and not m.MASK_ON and cfg.SOLVER.MAX_ITER == 24000
    else:
        assert tuple(cfg.DATASETS.TRAIN) == ("coco_2017_train",) and m.MASK_ON
        assert m.ROI_HEADS.NUM_CLASSES == 80
        assert cfg.SOLVER.MAX_ITER == (90000 if "_1x" in name else 180000)
    variant = name[:-5].rsplit("_", 1)[1]
    assert m.WEIGHTS == {"seed": f"pretrained/seed_r{depth}.pkl", "mocov2": f"pretrained/mocov2_r{depth}.pkl",
                         "random": ""}[variant]
    assert cfg.OUTPUT_DIR == f"output/{name[:-5]}"


# ----------------------------------------------------------------------------------------------
# Loading rules
# ----------------------------------------------------------------------------------------------

def test_base_is_relative_and_overrides_apply(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yaml").write_text("MODEL:\n  RESNETS:\n    DEPTH: 34\nSOLVER:\n  MAX_ITER: 7\n")
    (tmp_path / "child.yaml").write_text('_BASE_: "sub/base.yaml"\nSOLVER:\n  BASE_LR: 0.5\n'
                                         'DATASETS:\n  TEST: ("x",)\nMODEL:\n  ROI_HEADS:\n'
                                         f'    NAME: "{BASIC_BLOCK_ROI_HEAD}"\n  RESNETS:\n'
                                         '    RES2_OUT_CHANNELS: 64\n')
    cfg = load_det_config(tmp_path / "child.yaml", ["SOLVER.MAX_ITER", "9",
                                                    "DATASETS.COCO_JSON", "[['a', 'b.json', 'img']]"])
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.BASE_LR) == (34, 9, 0.5)
    assert cfg.DATASETS.COCO_JSON == [["a", "b.json", "img"]]


def test_unknown_key_in_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text('_BASE_: "%s"\nSOLVER:\n  MAX_ITERS: 10\n' % os.path.join(ROOT, "configs", "voc_r18_seed.yaml"))
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'SOLVER.MAX_ITERS'.*SOLVER.MAX_ITER"):
        load_det_config(bad)


def test_unknown_key_and_odd_pairs_on_command_line():
    with pytest.raises(ConfigError, match="command line: unknown config key 'MODEL.RESNET.DEPTH'"):
        _cfg("voc_r18_seed.yaml", "MODEL.RESNET.DEPTH", "34")
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        _cfg("voc_r18_seed.yaml", "SOLVER.MAX_ITER")
    with pytest.raises(ConfigError, match="config file not found"):
        load_det_config("configs/nope.yaml")


def test_missing_base_file_and_bad_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text('_BASE_: "missing.yaml"\n')
    with pytest.raises(ConfigError, match="missing.yaml|_BASE_"):
        load_det_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("MODEL:\n  WEIGHTS: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_det_config(tmp_path / "d.yaml")


def test_validation_catches_silent_mistakes():
    with pytest.raises(ConfigError, match="BasicBlockRes5ROIHeads"):
        _cfg("voc_r18_seed.yaml", "MODEL.ROI_HEADS.NAME", "Res5ROIHeads")
    with pytest.raises(ConfigError, match="RES2_OUT_CHANNELS 64"):
        _cfg("voc_r34_seed.yaml", "MODEL.RESNETS.RES2_OUT_CHANNELS", "256")
    with pytest.raises(ConfigError, match="not a ResNet depth"):
        _cfg("voc_r18_seed.yaml", "MODEL.RESNETS.DEPTH", "20")
    with pytest.raises(ConfigError, match="COCO_JSON entries"):
        _cfg("voc_r18_seed.yaml", "DATASETS.COCO_JSON", "[['only_a_name']]")
    with pytest.raises(ConfigError, match="INPUT.MASK_FORMAT"):
        _cfg("voc_r18_seed.yaml", "INPUT.MASK_FORMAT", "rle")
    with pytest.raises(ConfigError, match="DATALOADER.REPEAT_THRESHOLD .* RepeatFactorTrainingSampler"):
        _cfg("voc_r18_seed.yaml", "DATALOADER.REPEAT_THRESHOLD", "0.001")
    assert _cfg("voc_r18_seed.yaml", "INPUT.MASK_FORMAT", "bitmask").INPUT.MASK_FORMAT == "bitmask"
    assert _cfg("voc_r18_seed.yaml", "DATALOADER.REPEAT_THRESHOLD", "0.001", "DATALOADER.SAMPLER_TRAIN",
                "RepeatFactorTrainingSampler").DATALOADER.REPEAT_THRESHOLD == 0.001
    # Bottleneck depths keep the stock head.
    assert _cfg("voc_r18_seed.yaml", "MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.RES2_OUT_CHANNELS", "256",
                "MODEL.ROI_HEADS.NAME", "Res5ROIHeads").MODEL.RESNETS.DEPTH == 50


@pytest.mark.slow
def test_no_detectron2_needed():
    code = NO_D2 + (
        "import glob\n"
        "from seed_det.config import load_det_config\n"
        "import seed_det.convert, seed_det.results, seed_det.engines as e\n"
        "assert not e.detectron2_available() and e.resolve_engine('auto') == 'torchvision'\n"
        "[load_det_config(p) for p in glob.glob('configs/*.yaml')]\n"
        "assert 'detectron2' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


@pytest.mark.slow
def test_train_net_without_detectron2_says_so():
    code = NO_D2 + ("import runpy; sys.argv = ['train_net.py', '--config', 'configs/voc_r18_seed.yaml', "
                    "'--engine', 'detectron2']\nrunpy.run_path('tools/train_net.py', run_name='__main__')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert "Detectron2 is not installed" in res.stderr and "--engine torchvision" in res.stderr
    assert "Traceback" not in res.stderr


# ----------------------------------------------------------------------------------------------
# Detectron2 equivalence (skipped without Detectron2)
# ----------------------------------------------------------------------------------------------

def _same(a, b):
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731  (yacs mixes both)
    return norm(a) == norm(b)


def _get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_defaults_mirror_detectron2():
    pytest.importorskip("detectron2", reason="Detectron2 not installed: nothing to compare against")
    from seed_det.engines.d2.config import get_d2_cfg

    d2 = get_d2_cfg()
    for key in flatten_cfg(get_det_cfg()):
        assert _same(_get(get_det_cfg(), key), _get(d2, key)), key


@pytest.mark.parametrize("name", NAMES)
def test_detectron2_config_equals_portable(name):
    pytest.importorskip("detectron2", reason="Detectron2 not installed: nothing to compare against")
    from seed_det.engines.d2.config import load_d2_config

    path = os.path.join(ROOT, "configs", name)
    portable, d2 = load_det_config(path), load_d2_config(path)
    for key in flatten_cfg(portable):
        assert _same(_get(portable, key), _get(d2, key)), key


# ----------------------------------------------------------------------------------------------
# Engine dispatch and pre-flight (fake torchvision engine: the real one is tested on its own)
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def fake_tv_engine(monkeypatch):
    calls = []

    def run(cfg, args):
        calls.append((cfg, args))
        return {"AP": 12.5, "AP50": 30.0, "AP75": 10.0}

    module = types.ModuleType("seed_det.engines.tv.engine")
    module.run = run
    monkeypatch.setitem(sys.modules, "seed_det.engines.tv.engine", module)
    return calls


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory):
    """ResNet-18/34 backbones, unconverted (.pth) and converted (.pkl), built once per worker."""
    folder = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    for arch in ("resnet18", "resnet34"):
        torch.save(getattr(torchvision.models, arch)().state_dict(), folder / f"{arch}.pth")
        convert_to_d2(folder / f"{arch}.pth", folder / f"{arch}.pkl")
    return folder


@pytest.fixture
def tiny_setup(tmp_path, tiny_backbones):
    for name in os.listdir(tiny_backbones):  # read-only links: 260 MB per test otherwise
        os.symlink(tiny_backbones / name, tmp_path / name)
    (tmp_path / "images").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "images" / "0.png")  # preflight validates the dataset
    (tmp_path / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "0.png", "width": 16, "height": 16}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}]}))
    return tmp_path


def _args(tmp_path, config="voc_r18_seed.yaml", weights="resnet18.pkl", eval_only=False, extra=()):
    data = ["DATASETS.COCO_JSON", f"[['tiny', '{tmp_path / 'ann.json'}', '{tmp_path / 'images'}']]",
            "DATASETS.TRAIN", "('tiny',)", "DATASETS.TEST", "('tiny',)", "MODEL.DEVICE", "cpu",
            "OUTPUT_DIR", str(tmp_path / "out" / "run")]
    weights = str(tmp_path / weights) if weights else ""
    return engines.RunOptions(config_file=os.path.join(ROOT, "configs", config), engine="torchvision",
                              num_gpus=1, num_machines=1, machine_rank=0, dist_url="auto", resume=False,
                              eval_only=eval_only, opts=data + ["MODEL.WEIGHTS", weights] + list(extra))


def test_dispatch_runs_torchvision_engine(tiny_setup, fake_tv_engine):
    metrics = engines.main(_args(tiny_setup, extra=["SOLVER.MAX_ITER", "3"]))
    assert metrics["AP"] == 12.5 and len(fake_tv_engine) == 1
    cfg, args = fake_tv_engine[0]
    assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.MODEL.WEIGHTS.endswith("resnet18.pkl")
    assert cfg.SOLVER.MAX_ITER == 3 and args.config_file.endswith("voc_r18_seed.yaml")


@pytest.mark.parametrize("config,weights,match", [
    ("voc_r18_seed.yaml", "resnet34.pkl", "ResNet-34 but the config builds ResNet-18"),
    ("voc_r34_seed.yaml", "resnet18.pkl", "ResNet-18 but the config builds ResNet-34"),
    ("voc_r34_seed.yaml", "resnet34.pth", "ResNet-34"),  # unconverted weights are checked too (and fit)
])
def test_depth_mismatch_fails_before_engine(tiny_setup, fake_tv_engine, config, weights, match):
    if weights.endswith(".pth"):
        assert engines.main(_args(tiny_setup, config, weights))["AP"] == 12.5
        return
    with pytest.raises(CheckpointError, match=match):
        engines.main(_args(tiny_setup, config, weights))
    assert fake_tv_engine == []


def test_truncated_weights_fail_before_engine(tiny_setup, fake_tv_engine):
    data = (tiny_setup / "resnet18.pkl").read_bytes()
    (tiny_setup / "cut.pkl").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        engines.main(_args(tiny_setup, weights="cut.pkl"))
    assert fake_tv_engine == []


def test_missing_dataset_root_names_env_var(tmp_path, monkeypatch, fake_tv_engine):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    args = engines.RunOptions(config_file=os.path.join(ROOT, "configs", "voc_r18_random.yaml"),
                              engine="torchvision", eval_only=False, opts=["MODEL.DEVICE", "cpu"])
    with pytest.raises(SeedError, match=r"voc_2007_trainval.*DETECTRON2_DATASETS.*nowhere"):
        engines.main(args)
    assert fake_tv_engine == []


def test_missing_registered_dataset_files(tiny_setup, fake_tv_engine):
    os.remove(tiny_setup / "ann.json")
    with pytest.raises(SeedError, match="dataset 'tiny'.*missing"):
        engines.main(_args(tiny_setup))


def test_cuda_device_without_cuda(tiny_setup, fake_tv_engine, monkeypatch):
    """Detectron2 cannot run a cuda config without CUDA: say so before building anything."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(engines, "detectron2_available", lambda: True)
    args = dataclasses.replace(_args(tiny_setup, extra=["MODEL.DEVICE", "cuda"]), engine="detectron2")
    with pytest.raises(SeedError, match="MODEL.DEVICE cpu"):
        engines.main(args)
    args = dataclasses.replace(args, engine="torchvision")  # the portable engine falls back to CPU by itself
    assert engines.main(args)["AP"] == 12.5


def test_unknown_engine():
    with pytest.raises(SeedError, match="unknown engine"):
        engines.resolve_engine("mmdet")


def test_detectron2_engine_takes_detectron2_names_only(tmp_path):
    """What the Detectron2 engine accepts as MODEL.WEIGHTS follows the one kind of the file
    (seed_det.convert.read_weights_file): Detectron2 names yes, torchvision names no."""
    from seed_det.convert import TV_CHECKPOINT_TAG, read_d2_pkl
    from seed_det.engines.preflight import check_for_detectron2
    r18 = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    torch.save(r18, tmp_path / "r18.pth")
    convert_to_d2(tmp_path / "r18.pth", tmp_path / "r18.pkl")
    torch.save({"model": {k: torch.as_tensor(v) for k, v in read_d2_pkl(tmp_path / "r18.pkl")["model"].items()}},
               tmp_path / "d2.pth")
    torch.save({"engine": TV_CHECKPOINT_TAG, "model": {"backbone.body." + k: v for k, v in r18.items()}},
               tmp_path / "tv.pth")
    cfg = _cfg("voc_r18_seed.yaml", "MODEL.DEVICE", "cpu")
    for name in ("r18.pkl", "d2.pth"):
        cfg.MODEL.WEIGHTS = str(tmp_path / name)
        check_for_detectron2(cfg, eval_only=False)
    cfg.MODEL.WEIGHTS = str(tmp_path / "r18.pth")
    with pytest.raises(SeedError, match="not a Detectron2 checkpoint. Convert it first"):
        check_for_detectron2(cfg, eval_only=False)
    cfg.MODEL.WEIGHTS = str(tmp_path / "tv.pth")
    with pytest.raises(SeedError, match="checkpoint of the torchvision engine.*--engine torchvision"):
        check_for_detectron2(cfg, eval_only=False)


def test_detectron2_engine_refuses_what_several_cpu_processes_cannot_run(monkeypatch):
    """Checked before Detectron2's launcher starts the processes, which would fail only later."""
    from seed_det.engines.preflight import check_for_detectron2
    cfg = _cfg("voc_r18_seed.yaml", "MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "3")
    check_for_detectron2(cfg, eval_only=False, world_size=1)
    with pytest.raises(ConfigError, match="SOLVER.IMS_PER_BATCH = 3 .* over the 2 processes"):
        check_for_detectron2(cfg, eval_only=False, world_size=2)
    check_for_detectron2(cfg, eval_only=True, world_size=2)  # the batch is a training key
    cfg.SOLVER.IMS_PER_BATCH = 4
    check_for_detectron2(cfg, eval_only=False, world_size=2)  # gloo on the CPU: runs
    with pytest.raises(ConfigError, match="SOLVER.AMP.ENABLED = True: .* set SOLVER.AMP.ENABLED False"):
        check_for_detectron2(_cfg("voc_r18_seed.yaml", "MODEL.DEVICE", "cpu", "SOLVER.AMP.ENABLED", "True"),
                             eval_only=False)
    timm = _cfg("voc_mnv3l_fpn_seed.yaml", "MODEL.DEVICE", "cpu")
    with pytest.raises(ConfigError, match="MODEL.TIMM.NORM SyncBN over several CPU processes"):
        check_for_detectron2(timm, eval_only=False, world_size=2)
    timm.MODEL.TIMM.NORM = "BN"
    check_for_detectron2(timm, eval_only=False, world_size=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # Detectron2's launcher would pick NCCL
    with pytest.raises(SeedError, match="MODEL.DEVICE cpu with 2 processes on a machine with CUDA.*CUDA_VISIBLE_DEVICES"):
        check_for_detectron2(cfg, eval_only=False, world_size=2)
