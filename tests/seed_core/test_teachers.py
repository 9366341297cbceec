import os
import pickle

import pytest
import torch
import torchvision

from conftest import moco_state
from seed_core.checkpoint_io import CheckpointError, load_untrusted
from seed_core.encoders import build_backbone, build_student
from seed_core.teachers import detect_format, embedding_dim, guess_resnet_arch, load_teacher


def _save(tmp_path, obj, name="ckpt.pth"):
    path = os.path.join(tmp_path, name)
    torch.save(obj, path)
    return path


def _check_backbone_equal(teacher, state, prefix=""):
    own = teacher.backbone.state_dict()
    for k, v in own.items():
        assert torch.equal(v, state[prefix + k]), k


@pytest.mark.parametrize("v2", [True, False])
def test_moco_v1_v2(tmp_path, v2):
    ckpt = moco_state("resnet18", v2=v2)
    t = load_teacher(_save(tmp_path, ckpt), "resnet18")
    _check_backbone_equal(t, ckpt["state_dict"], "module.encoder_q.")
    assert embedding_dim(t) == 128
    head_key = "module.encoder_q.fc.2.weight" if v2 else "module.encoder_q.fc.weight"
    last = t.head[2] if v2 else t.head
    assert torch.equal(last.weight, ckpt["state_dict"][head_key])


def test_swav_backbone_projection_head_and_prototypes_ignored(tmp_path):
    net, dim = build_backbone("resnet18")
    sd = {"module." + k: v for k, v in net.state_dict().items()}
    sd.update({"module.projection_head.0.weight": torch.randn(64, dim), "module.projection_head.0.bias": torch.zeros(64),
               "module.projection_head.1.weight": torch.ones(64), "module.projection_head.1.bias": torch.zeros(64),
               "module.projection_head.1.running_mean": torch.randn(64), "module.projection_head.1.running_var": torch.rand(64) + 0.5,
               "module.projection_head.1.num_batches_tracked": torch.tensor(5),
               "module.projection_head.3.weight": torch.randn(32, 64), "module.projection_head.3.bias": torch.zeros(32),
               "module.prototypes.weight": torch.randn(300, 32)})
    path = _save(tmp_path, sd)
    assert detect_format(sd) == "swav"
    t = load_teacher(path, "resnet18")
    assert isinstance(t.head[1], torch.nn.BatchNorm1d) and isinstance(t.head[2], torch.nn.ReLU)
    assert torch.equal(t.head[1].running_mean, sd["module.projection_head.1.running_mean"])
    assert embedding_dim(t) == 32
    _check_backbone_equal(t, sd, "module.")


def test_swav_wide_resnet_width(tmp_path):
    net, dim = build_backbone("resnet50w2")
    assert dim == 4096 and net.conv1.weight.shape[0] == 128
    assert guess_resnet_arch(net.state_dict()) == "resnet50w2"


@pytest.mark.parametrize("wrapped", [False, True])
def test_simclr_and_torchvision_classifier_dropped(tmp_path, wrapped):
    sd = torchvision.models.resnet18().state_dict()  # includes the 1000-class fc of linear eval
    path = _save(tmp_path, {"state_dict": sd} if wrapped else sd)
    assert detect_format(sd) == "torchvision"
    t = load_teacher(path, "resnet18", fmt="simclr" if wrapped else "auto")
    assert embedding_dim(t) == 512  # backbone features: the classifier is not the representation
    _check_backbone_equal(t, sd)


def test_timm_state_dict(tmp_path):
    import timm
    m = timm.create_model("mobilenetv3_small_050", pretrained=False)
    path = _save(tmp_path, m.state_dict())
    t = load_teacher(path, "mobilenetv3_small_050", fmt="timm")
    for k, v in t.backbone.state_dict().items():
        assert torch.equal(v, m.state_dict()[k])
    m.reset_classifier(0)
    m.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(t(x), m(x))  # pooled features, classifier dropped


def test_own_training_checkpoint_as_teacher(tmp_path):
    student = build_student("resnet18", head_dim=24)
    path = _save(tmp_path, {"student": student.state_dict(), "config": "", "iteration": 3})
    t = load_teacher(path, "resnet18")
    assert embedding_dim(t) == 24
    assert torch.equal(t.head[2].weight, student.head[2].weight)


def test_own_checkpoint_with_a_batch_norm_head_as_teacher(tmp_path):
    student = build_student("resnet18", head_dim=24, head_batch_norm=True)
    x = torch.randn(4, 3, 32, 32)
    student(x)  # one training step's worth of BatchNorm statistics, so that they are not the defaults
    path = _save(tmp_path, {"student": student.state_dict(), "config": "", "iteration": 3})
    t = load_teacher(path, "resnet18")
    assert embedding_dim(t) == 24 and isinstance(t.head[1], torch.nn.BatchNorm1d)
    with torch.no_grad():
        assert torch.allclose(t(x), student.eval()(x), atol=1e-5)


def test_wrong_architecture_is_refused_with_keys_named(tmp_path):
    path = _save(tmp_path, moco_state("resnet18"))
    with pytest.raises(CheckpointError) as e:
        load_teacher(path, "resnet50")
    msg = str(e.value)
    assert "missing keys" in msg and "layer1.0.conv3.weight" in msg
    assert "looks like a resnet18" in msg and "MODEL.TEACHER.ARCH" in msg


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/seed_pwned",))


# torch warns about the pickle protocol before refusing the file; the refusal is what is tested.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_crafted_pickle_is_refused_without_running_code(tmp_path):
    target = "/tmp/seed_pwned"
    if os.path.exists(target):
        os.unlink(target)
    path = os.path.join(tmp_path, "evil.pth")
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_untrusted(path)
    with pytest.raises(CheckpointError):
        load_teacher(path, "resnet18")
    assert not os.path.exists(target)


def test_empty_and_truncated_checkpoints(tmp_path):
    empty = os.path.join(tmp_path, "empty.pth")
    open(empty, "wb").close()
    with pytest.raises(CheckpointError, match="empty"):
        load_untrusted(empty)
    good = _save(tmp_path, moco_state("resnet18"))
    data = open(good, "rb").read()
    trunc = os.path.join(tmp_path, "trunc.pth")
    with open(trunc, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_untrusted(trunc)
    with pytest.raises(CheckpointError, match="not found"):
        load_untrusted(os.path.join(tmp_path, "nope.pth"))
