"""A checkpoint with a NaN or inf anywhere (weights, BatchNorm statistics) is refused with the
tensor's name when it is loaded, by every reader: teacher, student backbone, conversion, Detectron2
.pkl, detection weights, resume."""
import math
import pickle

import numpy as np
import pytest
import torch
import torchvision

from seed_core.checkpoint_io import load_untrusted, require_finite
from seed_core.errors import CheckpointError


def _resnet18_state(poison: str, value=math.nan) -> dict:
    state = torchvision.models.resnet18(weights=None).state_dict()
    state[poison] = state[poison].clone()
    state[poison].view(-1)[0] = value
    return state


@pytest.mark.parametrize("poison, value", [("layer1.0.conv1.weight", math.nan), ("bn1.running_var", math.inf),
                                           ("layer4.1.bn2.bias", -math.inf)])
def test_every_reader_refuses_a_non_finite_tensor_by_name(tmp_path, poison, value):
    from seed_core.evaluation import load_backbone
    from seed_core.teachers import load_teacher
    from seed_det.convert import convert_to_d2
    path = tmp_path / "w.pth"
    torch.save({"state_dict": _resnet18_state(poison, value)}, path)
    readers = {
        "load_untrusted": lambda: load_untrusted(str(path)),
        "teacher": lambda: load_teacher(str(path), "resnet18", fmt="torchvision", use_head=False),
        "evaluation": lambda: load_backbone(str(path), arch="resnet18"),
        "conversion": lambda: convert_to_d2(str(path), str(tmp_path / "out.pkl")),
    }
    for name, read in readers.items():
        with pytest.raises(CheckpointError, match=rf"tensor state_dict\.{poison.replace('.', '[.]')} holds 1 "
                                                  r"non-finite value"):
            read()
    assert not (tmp_path / "out.pkl").exists()


def test_a_detectron2_pkl_with_nan_is_refused_by_name(tmp_path):
    from seed_det.convert import read_d2_pkl
    arrays = {"backbone.bottom_up.stem.conv1.weight": np.zeros((2, 2), np.float32),
              "backbone.bottom_up.res2.0.conv1.norm.running_var": np.array([1.0, np.nan], np.float32)}
    path = tmp_path / "model.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "test", "matching_heuristics": True}, f)
    with pytest.raises(CheckpointError, match=r"res2\.0\.conv1\.norm\.running_var holds 1 non-finite"):
        read_d2_pkl(str(path))


def test_the_detection_tools_refuse_nan_weights_before_any_step(tmp_path):
    """MODEL.WEIGHTS with a NaN fails in the preflight of either engine, not at iteration 1."""
    import os
    from seed_det.engines import RunOptions, main
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
    path = tmp_path / "student_backbone.pth"
    torch.save(_resnet18_state("layer2.0.bn1.weight"), path)
    options = RunOptions(os.path.join(root, "configs", "voc_r18_random.yaml"), engine="torchvision",
                         opts=("MODEL.WEIGHTS", str(path), "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out")))
    with pytest.raises(CheckpointError, match=r"layer2\.0\.bn1\.weight holds 1 non-finite"):
        main(options)


def test_integer_and_finite_tensors_pass():
    require_finite({"a": torch.zeros(3), "n": torch.tensor(7), "opt": [{"m": np.ones(2)}], "s": "text"}, "x")
