"""Checkpoint conversion to Detectron2: golden names, exact values, every input format, bad input."""
import hashlib
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

from seed_det.convert import (CheckpointError, check_weights_depth, convert_to_d2, extract_backbone_state,
                              infer_d2_spec, read_d2_pkl, torchvision_to_d2_state, weights_spec,
                              write_d2_pkl)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository

# sha256 of the sorted state names (BN counters excluded) of Detectron2's own build_resnet_backbone
# at each depth, taken from Detectron2 itself; test_d2_engine.py re-checks against a live build.
GOLDEN = {
    18: (100, "8786f29d4c99bc248f4cb442d181a0387145ac5a3a1927474c1256227c69c2e7"),
    34: (180, "688e74daf0e1c35a175b8f91a9b6542dda865be0cc1ea8ce827b1a6b5e596c8b"),
    50: (265, "75cb8e64f1831fe97b13befc03033c7e47c551b768b2ebefb83f357e85f94d05"),
}
BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
BN = ("weight", "bias", "running_mean", "running_var")


def expected_d2_names(depth):
    """Detectron2 ResNet names written out from the naming rules (readable diff on failure)."""
    names = ["stem.conv1.weight"] + [f"stem.conv1.norm.{p}" for p in BN]
    convs = 3 if depth >= 50 else 2
    for stage, n in zip(range(2, 6), BLOCKS[depth]):
        for i in range(n):
            for k in range(1, convs + 1):
                names += [f"res{stage}.{i}.conv{k}.weight"] + [f"res{stage}.{i}.conv{k}.norm.{p}" for p in BN]
            if i == 0 and (stage > 2 or depth >= 50):  # projection shortcut where the shape changes
                names += [f"res{stage}.0.shortcut.weight"] + [f"res{stage}.0.shortcut.norm.{p}" for p in BN]
    return sorted(names)


def tv_state(arch="resnet18", seed=0):
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # make every BN tensor distinct from its init
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-1, 1)
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(7)
    return model.state_dict()


def student_dir(tmp_path, arch="resnet18", meta=True):
    """The distillation export: student_backbone.pth (no fc) + meta.json."""
    sd = {k: v for k, v in tv_state(arch).items() if not k.startswith("fc.")}
    d = tmp_path / f"student_{arch}"
    d.mkdir()
    torch.save(sd, d / "student_backbone.pth")
    if meta:
        (d / "meta.json").write_text(json.dumps({"arch": arch, "epochs": 1}))
    return d / "student_backbone.pth", sd


def tv_to_d2_name(k):
    """The torchvision -> Detectron2 renaming, written independently of seed_det.convert."""
    if k == "conv1.weight":
        return "stem.conv1.weight"
    if k.startswith("bn1."):
        return "stem.conv1.norm." + k[4:]
    layer, i, module, *rest = k.split(".")
    block = f"res{int(layer[len('layer'):]) + 1}.{i}"
    if module == "downsample":
        return f"{block}.shortcut.weight" if rest[0] == "0" else f"{block}.shortcut.norm.{rest[1]}"
    if module.startswith("bn"):
        return f"{block}.conv{module[2:]}.norm.{rest[0]}"
    return f"{block}.{module}.{rest[0]}"


def assert_exact(d2_model, tv_sd):
    for k, v in tv_sd.items():
        if k.startswith("fc.") or k.endswith("num_batches_tracked"):
            continue
        got, ref = d2_model[tv_to_d2_name(k)], v.numpy()
        assert got.dtype == ref.dtype and got.shape == ref.shape, k
        assert got.tobytes() == ref.tobytes(), f"{k} not bit-equal"


# ----------------------------------------------------------------------------------------------
# Golden names and exact values
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,depth", [("resnet18", 18), ("resnet34", 34), ("resnet50", 50)])
def test_golden_names_and_bit_equal_values(tmp_path, arch, depth):
    src, sd = student_dir(tmp_path, arch)
    out = tmp_path / f"{arch}.pkl"
    summary = convert_to_d2(src, out)
    data = read_d2_pkl(out)
    assert data["__author__"] == "SEED" and data["matching_heuristics"] is True
    names = sorted(data["model"])
    assert names == expected_d2_names(depth)
    count, digest = GOLDEN[depth]
    assert len(names) == count
    assert hashlib.sha256("\n".join(names).encode()).hexdigest() == digest
    assert all(isinstance(v, np.ndarray) for v in data["model"].values())
    assert_exact(data["model"], sd)
    assert summary["depth"] == depth and summary["source"] == "torchvision" and summary["arch"] == arch
    assert summary["num_tensors"] == count


def test_output_is_plain_pickle_readable_by_detectron2_style_loader(tmp_path):
    src, _ = student_dir(tmp_path)
    out = tmp_path / "r18.pkl"
    convert_to_d2(src, out)
    with open(out, "rb") as f:  # how Detectron2 reads it
        data = pickle.load(f, encoding="latin1")
    assert "model" in data and "__author__" in data
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]  # atomic write left no temp


def test_bfloat16_converts_exactly():
    sd = {k: v.to(torch.bfloat16) for k, v in tv_state().items() if v.is_floating_point()}
    out = torchvision_to_d2_state(sd)
    assert out["stem.conv1.weight"].dtype == np.float32
    assert torch.equal(torch.from_numpy(out["stem.conv1.weight"]).to(torch.bfloat16), sd["conv1.weight"])


# ----------------------------------------------------------------------------------------------
# Input formats
# ----------------------------------------------------------------------------------------------

def _convert_obj(tmp_path, obj, name="in.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    convert_to_d2(path, tmp_path / (name + ".pkl"))
    return read_d2_pkl(tmp_path / (name + ".pkl"))["model"]


def test_distillation_checkpoint_keeps_backbone_drops_head(tmp_path):
    sd = {k: v for k, v in tv_state().items() if not k.startswith("fc.")}
    student = {f"backbone.{k}": v for k, v in sd.items()}
    student.update({"head.0.weight": torch.randn(512, 512), "head.2.weight": torch.randn(128, 512)})
    model = _convert_obj(tmp_path, {"student": student, "config": "student:\n  arch: resnet18\n", "epoch": 3})
    assert sorted(model) == expected_d2_names(18)
    assert_exact(model, sd)


def test_moco_checkpoint_uses_encoder_q(tmp_path):
    q, k = tv_state(seed=1), tv_state(seed=2)
    state = {f"module.encoder_q.{n}": v for n, v in q.items() if not n.startswith("fc.")}
    state.update({"module.encoder_q.fc.0.weight": torch.randn(512, 512),
                  "module.encoder_q.fc.2.weight": torch.randn(128, 512)})
    state.update({f"module.encoder_k.{n}": v for n, v in k.items()})
    state["module.queue"] = torch.randn(128, 16)
    model = _convert_obj(tmp_path, {"arch": "resnet18", "epoch": 200, "state_dict": state})
    assert sorted(model) == expected_d2_names(18)
    assert_exact(model, q)
    assert extract_backbone_state({"state_dict": state})[1] == "moco"


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module"])
def test_torchvision_state_dict_variants(tmp_path, wrap):
    sd = tv_state()  # with fc
    obj = {"plain": sd, "state_dict": {"state_dict": sd, "epoch": 1}, "model": {"model": sd},
           "module": {f"module.{k}": v for k, v in sd.items()}}[wrap]
    model = _convert_obj(tmp_path, obj)
    assert sorted(model) == expected_d2_names(18)
    assert_exact(model, sd)


def test_depth_inference_from_d2_names(tmp_path):
    src, _ = student_dir(tmp_path, "resnet34")
    convert_to_d2(src, tmp_path / "r34.pkl")
    model = read_d2_pkl(tmp_path / "r34.pkl")["model"]
    assert infer_d2_spec(model).depth == 34
    prefixed = {("roi_heads." if k.startswith("res5") else "backbone.") + k: v for k, v in model.items()}
    assert infer_d2_spec(prefixed).depth == 34
    assert weights_spec(tmp_path / "r34.pkl").depth == 34
    assert weights_spec(src).depth == 34


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------

def test_detectron2_pkl_is_refused(tmp_path):
    src, _ = student_dir(tmp_path)
    convert_to_d2(src, tmp_path / "r18.pkl")
    with pytest.raises(CheckpointError, match="already converted"):
        convert_to_d2(tmp_path / "r18.pkl", tmp_path / "again.pkl")
    os.replace(tmp_path / "r18.pkl", tmp_path / "renamed.pth")  # same file, misleading suffix
    with pytest.raises(CheckpointError, match="already converted"):
        convert_to_d2(tmp_path / "renamed.pth", tmp_path / "again.pkl")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_unreadable_checkpoint(tmp_path, damage):
    src, _ = student_dir(tmp_path)
    blob = src.read_bytes()
    bad = tmp_path / "bad.pth"
    bad.write_bytes({"truncated": blob[: len(blob) // 2], "garbage": b"not a checkpoint" * 10, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="cannot read"):
        convert_to_d2(bad, tmp_path / "out.pkl")
    assert not (tmp_path / "out.pkl").exists()


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        convert_to_d2(tmp_path / "nope.pth", tmp_path / "out.pkl")


def test_non_resnet_student_is_refused(tmp_path):
    sd = torchvision.models.mobilenet_v3_small().state_dict()
    path = tmp_path / "mbv3.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="Only ResNet"):
        convert_to_d2(path, tmp_path / "out.pkl")
    d = tmp_path / "effnet"
    d.mkdir()
    torch.save(sd, d / "student_backbone.pth")
    (d / "meta.json").write_text(json.dumps({"arch": "efficientnet_b0"}))
    with pytest.raises(CheckpointError, match="no efficientnet_b0 tensors.*do not belong together"):
        convert_to_d2(d / "student_backbone.pth", tmp_path / "out.pkl")


def test_meta_json_disagreeing_with_weights(tmp_path):
    src, _ = student_dir(tmp_path, "resnet18", meta=False)
    (src.parent / "meta.json").write_text(json.dumps({"arch": "resnet34"}))
    with pytest.raises(CheckpointError, match="meta.json says resnet34 but the weights are a ResNet-18"):
        convert_to_d2(src, tmp_path / "out.pkl")


def test_unknown_resnet_keys_are_not_dropped_silently():
    sd = dict(tv_state())
    sd["layer1.0.se.fc1.weight"] = torch.zeros(4, 64, 1, 1)  # e.g. an SE-ResNet
    with pytest.raises(CheckpointError, match="no Detectron2 ResNet counterpart"):
        torchvision_to_d2_state(sd)


def test_object_pickle_is_refused(tmp_path):
    """read_d2_pkl never constructs arbitrary classes or calls functions from the file."""
    marker = tmp_path / "created_by_pickle"

    class Evil:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"stem.conv1.weight": Evil()}}, f)
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_d2_pkl(path)
    disguised = tmp_path / "evil.pth"  # the converter must not run it either
    os.replace(path, disguised)
    with pytest.raises(CheckpointError, match="refusing to load"):
        convert_to_d2(disguised, tmp_path / "out.pkl")
    assert not marker.exists()


def test_weights_depth_check(tmp_path):
    for arch in ("resnet18", "resnet34"):
        src, _ = student_dir(tmp_path, arch)
        convert_to_d2(src, tmp_path / f"{arch}.pkl")
    assert check_weights_depth(tmp_path / "resnet18.pkl", 18).depth == 18
    with pytest.raises(CheckpointError, match="ResNet-34 but the config builds ResNet-18"):
        check_weights_depth(tmp_path / "resnet34.pkl", 18)
    with pytest.raises(CheckpointError, match="ResNet-18 but the config builds ResNet-34"):
        check_weights_depth(tmp_path / "resnet18.pkl", 34)
    with pytest.raises(CheckpointError, match="does not exist.*convert_to_d2"):
        check_weights_depth(tmp_path / "missing.pkl", 18)
    truncated = tmp_path / "trunc.pkl"
    truncated.write_bytes((tmp_path / "resnet18.pkl").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated"):
        check_weights_depth(truncated, 18)


def test_write_is_atomic_on_failure(tmp_path):
    out = tmp_path / "keep.pkl"
    write_d2_pkl({"a": np.zeros(2)}, out)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        write_d2_pkl({"a": lambda: 0}, out)  # unpicklable: the old file must survive intact
    assert read_d2_pkl(out)["model"]["a"].shape == (2,)
    assert sorted(os.listdir(tmp_path)) == ["keep.pkl"]


def test_cli(tmp_path):
    src, _ = student_dir(tmp_path)
    tool = os.path.join(ROOT, "tools", "convert_to_d2.py")
    ok = subprocess.run([sys.executable, tool, str(src), str(tmp_path / "r18.pkl")], capture_output=True,
                        text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ok.returncode == 0, ok.stderr
    assert '"depth": 18' in ok.stdout and (tmp_path / "r18.pkl").is_file()
    bad = subprocess.run([sys.executable, tool, str(tmp_path / "r18.pkl"), str(tmp_path / "x.pkl")],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert bad.returncode == 2 and "already converted" in bad.stderr and "Traceback" not in bad.stderr
