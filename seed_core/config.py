"""Distillation config: one fvcore CfgNode, YAML files with `_BASE_`, `KEY VALUE` overrides.

Everything a run needs is here, so a checkpoint's embedded config reproduces the run.
"""
from __future__ import annotations

from fvcore.common.config import CfgNode as _CfgNode

from .augmentations import CHOICES as AUGMENTATION_CHOICES, PIPELINES
from .constants import TEACHER_PRECISIONS
from .errors import ConfigError
from .optim import OPTIMIZERS
from . import zoo
from .yaml_config import cfg_value, flatten_cfg, merge_file, merge_overrides  # noqa: F401 - flatten_cfg is part of this API

SCHEMA = "seed_core/config.py"


class CfgNode(_CfgNode):
    pass


def get_default_cfg() -> CfgNode:
    C = CfgNode()
    C.OUTPUT_DIR = "output/seed"
    C.SEED = 0

    C.MODEL = CfgNode()
    C.MODEL.STUDENT = CfgNode()
    C.MODEL.STUDENT.ARCH = "resnet18"        # torchvision ResNet or any timm model name
    C.MODEL.STUDENT.HEAD_DIM = 128           # the teacher's embedding width; 0: follow the teacher
    C.MODEL.STUDENT.HEAD_HIDDEN_DIM = 0      # 0: the backbone's feature width (SEED's MLP)
    C.MODEL.STUDENT.HEAD_BATCH_NORM = False  # BatchNorm in the head's hidden layer (SimCLR, MoCo v3); SEED's has none
    C.MODEL.STUDENT.ZERO_INIT_RESIDUAL = False  # residual blocks start as the identity (torchvision ResNets)
    C.MODEL.TEACHER = CfgNode()
    C.MODEL.TEACHER.ARCH = "resnet50"
    C.MODEL.TEACHER.WEIGHTS = ""             # a checkpoint file or zoo:NAME (seed_core/zoo.py); required for seed / l2
    C.MODEL.TEACHER.FORMAT = "auto"          # auto | moco | swav | simclr | mmselfsup | dino | dinov2 | convnext |
                                             # torchvision | timm | seed
    C.MODEL.TEACHER.USE_HEAD = True          # use the checkpoint's projection head when it has one
    C.MODEL.SYNC_BN = False                  # SyncBatchNorm in the student (multi-GPU)

    C.LOSS = CfgNode()
    C.LOSS.NAME = "seed"                     # seed | l2 | moco
    C.LOSS.STUDENT_TEMP = 0.2                # tau_S
    C.LOSS.TEACHER_TEMP = 0.01               # tau_T
    C.LOSS.MOCO_TEMP = 0.2                   # MoCo-v2 InfoNCE temperature
    C.LOSS.MOCO_MOMENTUM = 0.999             # key-encoder EMA
    C.LOSS.MOCO_BN_SPLITS = 0                # shuffled-BN groups per process (0: auto, see seed_core/shuffle_bn.py)
    C.LOSS.MAX_NONFINITE = 0                 # non-finite steps in a row skipped (no update) before stopping

    C.QUEUE = CfgNode()
    C.QUEUE.SIZE = 65536                     # K

    C.DATA = CfgNode()
    C.DATA.ROOT = ""                         # ImageFolder root (class sub-folders) or a flat folder of images
    C.DATA.IMAGE_SIZE = 224
    C.DATA.NUM_WORKERS = 8
    C.DATA.AUGMENTATION = "auto"             # auto: the teacher's own recipe (MoCo-v2, SwAV, SimCLR); or
                                             # mocov2 | swav | simclr | glyphs (digits: no flip) | none
    C.DATA.PIPELINE = "fast"                 # fast (photo recipes: reduced JPEG decoding, same distribution) | torchvision
    C.DATA.SMALL_PATCHES = CfgNode()         # SEED's multi-view variant: extra small views, own queue
    C.DATA.SMALL_PATCHES.NUM = 0             # small views per image (the official SwAV recipe: 6)
    C.DATA.SMALL_PATCHES.SIZE = 96           # px
    C.DATA.SMALL_PATCHES.SCALE = (0.05, 0.14)  # crop area range of a small view
    C.DATA.MAX_BAD_FRACTION = 0.01           # unreadable images tolerated per epoch before failing

    C.SOLVER = CfgNode()
    C.SOLVER.EPOCHS = 200
    C.SOLVER.MAX_ITER = 0                    # > 0: stop after this many iterations in total
    C.SOLVER.BATCH_SIZE = 256                # global batch over all ranks
    C.SOLVER.BASE_LR = 0.03                  # for a batch of 256; scaled linearly
    C.SOLVER.MOMENTUM = 0.9
    C.SOLVER.OPTIMIZER = "sgd"               # sgd (SEED, MoCo-v2) | lars (SimCLR, BYOL, MoCo v3: equal relative steps per layer)
    C.SOLVER.LARS_ETA = 0.001                # LARS trust coefficient: each layer moves by about lr * eta * |w| per step
    C.SOLVER.WEIGHT_DECAY = 1e-4
    C.SOLVER.WARMUP_EPOCHS = -1.0            # -1: as the official code (seed_core/schedule.py warmup_epochs)
    C.SOLVER.MIN_LR = 0.0

    C.TRAIN = CfgNode()
    C.TRAIN.PRECISION = "auto"               # auto | fp32 | bf16 | fp16 (fp16 only on CUDA, with GradScaler)
    C.TRAIN.CHANNELS_LAST = True
    # auto: fp32 whatever PRECISION (seed_core/teacher_precision.py: the only choice keeping SEED's
    # targets within TV 1e-3 of an fp64 teacher's); bf16 / fp16 / *-fp32tail trade that for speed.
    C.TRAIN.TEACHER_PRECISION = "auto"
    C.TRAIN.CHECKPOINT_PERIOD = 1000         # iterations; a checkpoint is also written each epoch
    C.TRAIN.LOG_PERIOD = 10
    C.TRAIN.KEEP_EPOCH_CHECKPOINTS = False
    C.TRAIN.PROGRESS = True
    C.TRAIN.DIST_TIMEOUT = 1800              # seconds before a collective waiting on a dead rank fails
    return C


_CHOICES = {
    "LOSS.NAME": ("seed", "l2", "moco"),
    "MODEL.TEACHER.FORMAT": ("auto", "moco", "swav", "simclr", "mmselfsup", "dino", "dinov2", "convnext",
                             "torchvision", "timm", "seed"),
    "DATA.AUGMENTATION": AUGMENTATION_CHOICES,
    "SOLVER.OPTIMIZER": OPTIMIZERS,
    "DATA.PIPELINE": PIPELINES,
    "TRAIN.PRECISION": ("auto", "fp32", "bf16", "fp16"),
    "TRAIN.TEACHER_PRECISION": TEACHER_PRECISIONS,
}


def validate_cfg(cfg: CfgNode, world_size: int = 1) -> None:
    """Refuse impossible values before anything runs, naming the key and what to do."""
    problems = []
    for key, choices in _CHOICES.items():
        if cfg_value(cfg, key) not in choices:
            problems.append(f"{key} = {cfg_value(cfg, key)!r}: choose one of {', '.join(choices)}")
    positive = ["LOSS.STUDENT_TEMP", "LOSS.TEACHER_TEMP", "LOSS.MOCO_TEMP", "SOLVER.BASE_LR", "SOLVER.LARS_ETA",
                "SOLVER.BATCH_SIZE", "QUEUE.SIZE", "DATA.IMAGE_SIZE",
                "TRAIN.CHECKPOINT_PERIOD", "TRAIN.LOG_PERIOD", "TRAIN.DIST_TIMEOUT"]
    for key in positive:
        if not cfg_value(cfg, key) > 0:
            problems.append(f"{key} = {cfg_value(cfg, key)} must be > 0")
    for key in ["SOLVER.WEIGHT_DECAY", "SOLVER.MOMENTUM", "SOLVER.MIN_LR", "LOSS.MOCO_BN_SPLITS",
                "SOLVER.MAX_ITER", "DATA.NUM_WORKERS", "MODEL.STUDENT.HEAD_HIDDEN_DIM", "LOSS.MAX_NONFINITE"]:
        if cfg_value(cfg, key) < 0:
            problems.append(f"{key} = {cfg_value(cfg, key)} must be >= 0")
    if cfg.SOLVER.WARMUP_EPOCHS < 0 and cfg.SOLVER.WARMUP_EPOCHS != -1:
        problems.append(f"SOLVER.WARMUP_EPOCHS = {cfg.SOLVER.WARMUP_EPOCHS} must be >= 0 (or -1: automatic)")
    if not 0 <= cfg.LOSS.MOCO_MOMENTUM < 1:
        problems.append(f"LOSS.MOCO_MOMENTUM = {cfg.LOSS.MOCO_MOMENTUM} must be in [0, 1)")
    if not 0 <= cfg.DATA.MAX_BAD_FRACTION <= 1:
        problems.append(f"DATA.MAX_BAD_FRACTION = {cfg.DATA.MAX_BAD_FRACTION} must be in [0, 1]")
    if cfg.SOLVER.EPOCHS < 1 and cfg.SOLVER.MAX_ITER < 1:
        problems.append("SOLVER.EPOCHS must be >= 1 (or set SOLVER.MAX_ITER)")
    if cfg.SOLVER.BATCH_SIZE % world_size:
        problems.append(f"SOLVER.BATCH_SIZE = {cfg.SOLVER.BATCH_SIZE} must be divisible by the "
                        f"number of processes ({world_size})")
    if cfg.QUEUE.SIZE < cfg.SOLVER.BATCH_SIZE:
        problems.append(f"QUEUE.SIZE = {cfg.QUEUE.SIZE} is smaller than the global batch "
                        f"SOLVER.BATCH_SIZE = {cfg.SOLVER.BATCH_SIZE}: a batch would overwrite itself "
                        f"in the queue; raise QUEUE.SIZE or lower the batch")
    problems += _small_patch_problems(cfg)
    if cfg.MODEL.STUDENT.HEAD_DIM < 0 or (cfg.MODEL.STUDENT.HEAD_DIM == 0 and cfg.LOSS.NAME == "moco"):
        problems.append(f"MODEL.STUDENT.HEAD_DIM = {cfg.MODEL.STUDENT.HEAD_DIM} must be > 0 "
                        f"(0, the teacher's width, only with a teacher: LOSS.NAME seed or l2)")
    if cfg.LOSS.NAME in ("seed", "l2"):
        problems += zoo.cfg_problems(cfg.MODEL.TEACHER.WEIGHTS, cfg.MODEL.TEACHER.ARCH, cfg.MODEL.TEACHER.FORMAT)
    if cfg.LOSS.NAME in ("seed", "l2") and not cfg.MODEL.TEACHER.WEIGHTS:
        problems.append(f"MODEL.TEACHER.WEIGHTS is empty but LOSS.NAME = {cfg.LOSS.NAME} needs a "
                        f"teacher checkpoint (or use LOSS.NAME moco to train without a teacher)")
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def _small_patch_problems(cfg: CfgNode) -> list[str]:
    sp = cfg.DATA.SMALL_PATCHES
    problems = []
    if sp.NUM < 0:
        problems.append(f"DATA.SMALL_PATCHES.NUM = {sp.NUM} must be >= 0 (0: no small patches)")
    if sp.NUM <= 0:
        return problems  # SIZE and SCALE are unused
    if not 0 < sp.SIZE <= cfg.DATA.IMAGE_SIZE:
        problems.append(f"DATA.SMALL_PATCHES.SIZE = {sp.SIZE} must be in (0, DATA.IMAGE_SIZE = "
                        f"{cfg.DATA.IMAGE_SIZE}]: a small patch larger than the main view is not small")
    scale = tuple(sp.SCALE)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        problems.append(f"DATA.SMALL_PATCHES.SCALE = {scale} must be two numbers (lo, hi) with "
                        f"0 < lo <= hi <= 1 (fractions of the image area)")
    if cfg.LOSS.NAME != "seed":
        problems.append(f"DATA.SMALL_PATCHES.NUM = {sp.NUM} needs LOSS.NAME seed (small patches are "
                        f"SEED's multi-view variant), not {cfg.LOSS.NAME}")
    return problems


def load_cfg(path: str | None = None, opts: list[str] | tuple = ()) -> CfgNode:
    """Defaults <- YAML file (with `_BASE_`) <- `KEY VALUE` overrides; unknown keys are refused."""
    cfg = get_default_cfg()
    if path:
        merge_file(cfg, path, schema=SCHEMA)
    merge_overrides(cfg, opts, schema=SCHEMA)
    return cfg


def cfg_from_string(text: str) -> CfgNode:
    """Rebuild a config saved in a checkpoint (YAML text)."""
    cfg = get_default_cfg()
    cfg.merge_from_other_cfg(CfgNode.load_cfg(text))
    return cfg
