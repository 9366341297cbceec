"""The student backbone as detection and evaluation code expect it: torchvision key names, no
projection head, no `module.` prefix, plus meta.json describing where it came from."""
from __future__ import annotations

import os
import time


from .checkpoint_io import CheckpointError, atomic_save, load_untrusted
from .config import cfg_from_string
from .constants import BACKBONE_FILE, META_FILE
from .results import write_json



def backbone_state(student_state: dict) -> dict:
    """`backbone.<name>` entries of a student state dict, renamed to `<name>`."""
    out = {k[len("backbone."):]: v.detach().cpu().clone() for k, v in student_state.items()
           if k.startswith("backbone.")}
    if not out:
        raise CheckpointError("the state dict has no 'backbone.*' entries: is it a student checkpoint?")
    return out


def write_backbone(student_state: dict, out_dir: str, meta: dict) -> str:
    """Write student_backbone.pth and meta.json into `out_dir`; return the .pth path."""
    path = os.path.join(out_dir, BACKBONE_FILE)
    atomic_save(backbone_state(student_state), path)
    meta = {"format": "torchvision-state-dict", "written": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta}
    write_json(os.path.join(out_dir, META_FILE), meta)  # a damaged meta.json is moved aside, not overwritten
    return path


def meta_from_cfg(cfg, feature_dim: int, iterations: int, epochs: float, augmentation: str | None = None,
                  head_dim: int | None = None) -> dict:
    """What a backbone is: architecture, how it was trained (with the resolved augmentation
    recipe, when DATA.AUGMENTATION is auto, and head width, when it followed the teacher's) and
    the full config."""
    return {
        "arch": cfg.MODEL.STUDENT.ARCH,
        "feature_dim": feature_dim,
        "head_dim": head_dim or cfg.MODEL.STUDENT.HEAD_DIM,
        "loss": cfg.LOSS.NAME,
        "teacher": ({"arch": cfg.MODEL.TEACHER.ARCH, "weights": cfg.MODEL.TEACHER.WEIGHTS,
                     "format": cfg.MODEL.TEACHER.FORMAT} if cfg.LOSS.NAME != "moco" else None),
        "iterations": iterations,
        "epochs": round(epochs, 3),
        "image_size": cfg.DATA.IMAGE_SIZE,
        "augmentation": augmentation or cfg.DATA.AUGMENTATION,
        "small_patches": cfg.DATA.SMALL_PATCHES.NUM,
        "config": cfg.dump(),
    }


def export_from_checkpoint(checkpoint_path: str, out_dir: str) -> str:
    """Export the backbone of a training checkpoint (e.g. an intermediate one)."""
    ckpt = load_untrusted(checkpoint_path)
    if not isinstance(ckpt, dict) or "student" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{checkpoint_path} is not a distillation checkpoint (no 'student'/'config')")
    cfg = cfg_from_string(ckpt["config"])
    state = backbone_state(ckpt["student"])
    from .encoders import build_backbone, head_output_dim
    net, dim = build_backbone(cfg.MODEL.STUDENT.ARCH)
    net.load_state_dict(state, strict=True)
    it = int(ckpt.get("iteration", 0))
    spe = max(1, int(ckpt.get("steps_per_epoch", 1)))
    meta = meta_from_cfg(cfg, dim, it, it / spe, ckpt.get("augmentation"), head_output_dim(ckpt["student"]))
    return write_backbone(ckpt["student"], out_dir, meta)
