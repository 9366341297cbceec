"""One detection config for every engine: Detectron2-style YAML with `_BASE_` and `KEY VALUE` overrides.

`get_det_cfg()` mirrors the Detectron2 default keys our configs use (same names, same default values)
plus the SEED additions from `add_seed_config`, so configs load and validate without Detectron2.
The Detectron2 engine builds its config from Detectron2's own `get_cfg()` plus the same additions
(`seed_det.engines.d2.config`), merged from the same YAML.

SEED additions
--------------
MODEL.ROI_HEADS.RES5_EXTRA_NORM  bool. Append a norm layer (type MODEL.RESNETS.NORM) after the res5
                                 ROI head, as in MoCo's detection protocol.
MODEL.TIMM.ARCH                  timm model name of the backbone when MODEL.BACKBONE.NAME is
                                 "build_timm_fpn_backbone" (e.g. mobilenetv3_large_100, efficientnet_b0).
MODEL.TIMM.OUT_INDICES           timm feature levels feeding the FPN (level i: stride 2**(i+1));
                                 MODEL.FPN.IN_FEATURES names them "stage{i}". Default [1, 2, 3, 4].
MODEL.TIMM.NORM                  norm of the timm backbone: SyncBN (default), BN or FrozenBN.
                                 See seed_det.timm_backbone.
DATASETS.COCO_JSON               list of [name, json_file, image_root]: COCO-format datasets to
                                 register under `name`, usable in DATASETS.TRAIN / DATASETS.TEST.
DATASETS.VOC                     list of [name, dirname, split, year]: PASCAL-VOC-layout datasets
                                 (dirname holds Annotations/, JPEGImages/, ImageSets/Main/<split>.txt).
RESULTS_CSV                      detection results file to append to; "" means
                                 OUTPUT_DIR/../results_detection.csv (format: seed_core.results).
DATALOADER.MAX_BAD_FRACTION      fraction of a training set that may be unreadable images (missing,
                                 empty, not an image, truncated, too large): they are skipped and
                                 counted, each once however often it is drawn; above it training
                                 stops naming one (default 0.01, as distillation's
                                 DATA.MAX_BAD_FRACTION). Test sets skip none.
DIST_TIMEOUT                     seconds a process of a multi-process run waits in a collective for
                                 the others before stopping with an error (default 1800, the timeout
                                 of Detectron2's launch).

On the command line, list values are Python literals, e.g.
`DATASETS.COCO_JSON "[['mine_train', 'ann/train.json', 'images']]" DATASETS.TRAIN "('mine_train',)"`.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable, Sequence

from fvcore.common.config import CfgNode

from seed_core.errors import ConfigError
from seed_core.resnet_spec import RESNET_DEPTHS
from seed_core.yaml_config import merge_file, merge_overrides
from seed_det.timm_backbone import validate_timm_config

logger = logging.getLogger(__name__)

__all__ = ["ConfigError", "get_det_cfg", "add_seed_config", "load_det_config", "merge_det_config",
           "validate_det_config", "BASIC_BLOCK_ROI_HEAD", "RESNET_DEPTHS"]

# Name under which seed_det.engines.d2 registers its res5 ROI head (BasicBlocks for R18/R34).
BASIC_BLOCK_ROI_HEAD = "BasicBlockRes5ROIHeads"
SCHEMA = "seed_det/config.py"
MASK_FORMATS = ("polygon", "bitmask")  # Detectron2's; seed_det.engines.tv.checks says what each means there
REPEAT_FACTOR_SAMPLER = "RepeatFactorTrainingSampler"  # the only reader of DATALOADER.REPEAT_THRESHOLD


def _mirror_detectron2_defaults(c: CfgNode) -> None:
    """Detectron2's default values for the keys our configs and engines read."""
    c.VERSION = 2
    c.OUTPUT_DIR = "./output"
    c.SEED = -1
    c.CUDNN_BENCHMARK = False
    c.VIS_PERIOD = 0

    m = c.MODEL = CfgNode()
    m.LOAD_PROPOSALS = False
    m.MASK_ON = False
    m.KEYPOINT_ON = False
    m.DEVICE = "cuda"
    m.META_ARCHITECTURE = "GeneralizedRCNN"
    m.WEIGHTS = ""
    m.PIXEL_MEAN = [103.530, 116.280, 123.675]
    m.PIXEL_STD = [1.0, 1.0, 1.0]

    m.BACKBONE = CfgNode()
    m.BACKBONE.NAME = "build_resnet_backbone"
    m.BACKBONE.FREEZE_AT = 2

    m.RESNETS = CfgNode()
    m.RESNETS.DEPTH = 50
    m.RESNETS.OUT_FEATURES = ["res4"]
    m.RESNETS.NUM_GROUPS = 1
    m.RESNETS.NORM = "FrozenBN"
    m.RESNETS.WIDTH_PER_GROUP = 64
    m.RESNETS.STRIDE_IN_1X1 = True
    m.RESNETS.RES5_DILATION = 1
    m.RESNETS.RES2_OUT_CHANNELS = 256
    m.RESNETS.STEM_OUT_CHANNELS = 64
    m.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, False]
    m.RESNETS.DEFORM_MODULATED = False
    m.RESNETS.DEFORM_NUM_GROUPS = 1

    m.FPN = CfgNode()
    m.FPN.IN_FEATURES = []
    m.FPN.OUT_CHANNELS = 256
    m.FPN.NORM = ""
    m.FPN.FUSE_TYPE = "sum"

    m.PROPOSAL_GENERATOR = CfgNode()
    m.PROPOSAL_GENERATOR.NAME = "RPN"
    m.PROPOSAL_GENERATOR.MIN_SIZE = 0

    m.ANCHOR_GENERATOR = CfgNode()
    m.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"
    m.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]
    m.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    m.ANCHOR_GENERATOR.ANGLES = [[-90, 0, 90]]
    m.ANCHOR_GENERATOR.OFFSET = 0.0

    m.RPN = CfgNode()
    m.RPN.HEAD_NAME = "StandardRPNHead"
    m.RPN.IN_FEATURES = ["res4"]
    m.RPN.BOUNDARY_THRESH = -1
    m.RPN.IOU_THRESHOLDS = [0.3, 0.7]
    m.RPN.IOU_LABELS = [0, -1, 1]
    m.RPN.BATCH_SIZE_PER_IMAGE = 256
    m.RPN.POSITIVE_FRACTION = 0.5
    m.RPN.BBOX_REG_LOSS_TYPE = "smooth_l1"
    m.RPN.BBOX_REG_LOSS_WEIGHT = 1.0
    m.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
    m.RPN.SMOOTH_L1_BETA = 0.0
    m.RPN.LOSS_WEIGHT = 1.0
    m.RPN.PRE_NMS_TOPK_TRAIN = 12000
    m.RPN.PRE_NMS_TOPK_TEST = 6000
    m.RPN.POST_NMS_TOPK_TRAIN = 2000
    m.RPN.POST_NMS_TOPK_TEST = 1000
    m.RPN.NMS_THRESH = 0.7
    m.RPN.CONV_DIMS = [-1]

    m.ROI_HEADS = CfgNode()
    m.ROI_HEADS.NAME = "Res5ROIHeads"
    m.ROI_HEADS.NUM_CLASSES = 80
    m.ROI_HEADS.IN_FEATURES = ["res4"]
    m.ROI_HEADS.IOU_THRESHOLDS = [0.5]
    m.ROI_HEADS.IOU_LABELS = [0, 1]
    m.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
    m.ROI_HEADS.POSITIVE_FRACTION = 0.25
    m.ROI_HEADS.SCORE_THRESH_TEST = 0.05
    m.ROI_HEADS.NMS_THRESH_TEST = 0.5
    m.ROI_HEADS.PROPOSAL_APPEND_GT = True

    m.ROI_BOX_HEAD = CfgNode()
    m.ROI_BOX_HEAD.NAME = ""
    m.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = "smooth_l1"
    m.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT = 1.0
    m.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    m.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.0
    m.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
    m.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
    m.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    m.ROI_BOX_HEAD.NUM_FC = 0
    m.ROI_BOX_HEAD.FC_DIM = 1024
    m.ROI_BOX_HEAD.NUM_CONV = 0
    m.ROI_BOX_HEAD.CONV_DIM = 256
    m.ROI_BOX_HEAD.NORM = ""
    m.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
    m.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES = False

    m.ROI_MASK_HEAD = CfgNode()
    m.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    m.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
    m.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 0
    m.ROI_MASK_HEAD.NUM_CONV = 0
    m.ROI_MASK_HEAD.CONV_DIM = 256
    m.ROI_MASK_HEAD.NORM = ""
    m.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = False
    m.ROI_MASK_HEAD.POOLER_TYPE = "ROIAlignV2"

    i = c.INPUT = CfgNode()
    i.MIN_SIZE_TRAIN = (800,)
    i.MIN_SIZE_TRAIN_SAMPLING = "choice"
    i.MAX_SIZE_TRAIN = 1333
    i.MIN_SIZE_TEST = 800
    i.MAX_SIZE_TEST = 1333
    i.RANDOM_FLIP = "horizontal"
    i.CROP = CfgNode({"ENABLED": False})
    i.CROP.TYPE = "relative_range"
    i.CROP.SIZE = [0.9, 0.9]
    i.FORMAT = "BGR"
    i.MASK_FORMAT = "polygon"

    d = c.DATASETS = CfgNode()
    d.TRAIN = ()
    d.PROPOSAL_FILES_TRAIN = ()
    d.PRECOMPUTED_PROPOSAL_TOPK_TRAIN = 2000
    d.TEST = ()
    d.PROPOSAL_FILES_TEST = ()
    d.PRECOMPUTED_PROPOSAL_TOPK_TEST = 1000

    dl = c.DATALOADER = CfgNode()
    dl.NUM_WORKERS = 4
    dl.ASPECT_RATIO_GROUPING = True
    dl.SAMPLER_TRAIN = "TrainingSampler"
    dl.REPEAT_THRESHOLD = 0.0
    dl.FILTER_EMPTY_ANNOTATIONS = True

    s = c.SOLVER = CfgNode()
    s.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
    s.MAX_ITER = 40000
    s.BASE_LR = 0.001
    s.MOMENTUM = 0.9
    s.NESTEROV = False
    s.WEIGHT_DECAY = 0.0001
    s.WEIGHT_DECAY_NORM = 0.0
    s.GAMMA = 0.1
    s.STEPS = (30000,)
    s.WARMUP_FACTOR = 1.0 / 1000
    s.WARMUP_ITERS = 1000
    s.WARMUP_METHOD = "linear"
    s.CHECKPOINT_PERIOD = 5000
    s.IMS_PER_BATCH = 16
    s.REFERENCE_WORLD_SIZE = 0
    s.BIAS_LR_FACTOR = 1.0
    s.WEIGHT_DECAY_BIAS = None
    s.CLIP_GRADIENTS = CfgNode({"ENABLED": False})
    s.CLIP_GRADIENTS.CLIP_TYPE = "value"
    s.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    s.CLIP_GRADIENTS.NORM_TYPE = 2.0
    s.AMP = CfgNode({"ENABLED": False})

    t = c.TEST = CfgNode()
    t.EXPECTED_RESULTS = []
    t.EVAL_PERIOD = 0
    t.DETECTIONS_PER_IMAGE = 100
    t.AUG = CfgNode({"ENABLED": False})
    t.AUG.MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
    t.AUG.MAX_SIZE = 4000
    t.AUG.FLIP = True
    t.PRECISE_BN = CfgNode({"ENABLED": False})
    t.PRECISE_BN.NUM_ITER = 200


def add_seed_config(cfg: CfgNode) -> CfgNode:
    """Add the SEED keys (see module docstring) to a Detectron2-style config, in place."""
    cfg.MODEL.ROI_HEADS.RES5_EXTRA_NORM = False
    cfg.MODEL.TIMM = type(cfg.MODEL)()
    cfg.MODEL.TIMM.ARCH = ""
    cfg.MODEL.TIMM.OUT_INDICES = [1, 2, 3, 4]
    cfg.MODEL.TIMM.NORM = "SyncBN"
    cfg.DATASETS.COCO_JSON = []
    cfg.DATASETS.VOC = []
    cfg.DATALOADER.MAX_BAD_FRACTION = 0.01
    cfg.RESULTS_CSV = ""
    cfg.DIST_TIMEOUT = 1800
    return cfg


def get_det_cfg() -> CfgNode:
    """Default detection config (Detectron2 defaults for the keys we use + SEED additions)."""
    cfg = CfgNode()
    _mirror_detectron2_defaults(cfg)
    return add_seed_config(cfg)


def merge_det_config(cfg: CfgNode, path: str | os.PathLike, opts: Sequence[str] = ()) -> CfgNode:
    """Merge a YAML file (with `_BASE_` chain) and `KEY VALUE` overrides into `cfg`, in place.

    Works for our portable CfgNode and for Detectron2's. Errors name the file (and line) or the
    offending key (seed_core.yaml_config, shared with the distillation config).
    """
    merge_file(cfg, path, schema=SCHEMA)
    merge_overrides(cfg, opts, schema=SCHEMA)
    return cfg


def load_det_config(path: str | os.PathLike, opts: Iterable[str] = (), needs_test_set: bool = True) -> CfgNode:
    """Portable config: defaults + YAML (with `_BASE_`) + overrides, validated. Needs no Detectron2.
    `needs_test_set=False` for what reads no data (an export of the model)."""
    cfg = merge_det_config(get_det_cfg(), path, tuple(opts))
    validate_det_config(cfg, needs_test_set)
    return cfg


def _check_entries(entries, fields: tuple[str, ...], key: str) -> None:
    for entry in entries:
        if not isinstance(entry, (list, tuple)) or len(entry) != len(fields):
            raise ConfigError(f"{key} entries must be [{', '.join(fields)}]; got {entry!r}")


def validate_det_config(cfg: CfgNode, needs_test_set: bool = True) -> None:
    """Engine-independent checks that catch silent mistakes before any model is built."""
    validate_timm_config(cfg, get_det_cfg())
    r = cfg.MODEL.RESNETS
    if r.DEPTH not in RESNET_DEPTHS:
        raise ConfigError(f"MODEL.RESNETS.DEPTH={r.DEPTH} is not a ResNet depth; use one of {RESNET_DEPTHS}.")
    if r.DEPTH in (18, 34):
        if r.RES2_OUT_CHANNELS != 64:
            raise ConfigError(f"R{r.DEPTH} needs MODEL.RESNETS.RES2_OUT_CHANNELS 64 (got {r.RES2_OUT_CHANNELS}).")
        if any(r.DEFORM_ON_PER_STAGE) or r.RES5_DILATION != 1 or r.NUM_GROUPS != 1:
            raise ConfigError(f"R{r.DEPTH} (BasicBlock) supports no deformable conv, RES5_DILATION 1, "
                              "NUM_GROUPS 1; fix MODEL.RESNETS.")
        if cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads":
            # The stock head builds a Bottleneck res5 whatever the depth: the student's res5 would
            # never load and a random head would be trained instead.
            raise ConfigError(f"MODEL.ROI_HEADS.NAME Res5ROIHeads builds a Bottleneck res5 that cannot hold "
                              f"R{r.DEPTH} weights; use MODEL.ROI_HEADS.NAME {BASIC_BLOCK_ROI_HEAD}.")
    if cfg.INPUT.MASK_FORMAT not in MASK_FORMATS:
        raise ConfigError(f"INPUT.MASK_FORMAT is {cfg.INPUT.MASK_FORMAT!r}; use one of {MASK_FORMATS} "
                          "('bitmask' for RLE masks).")
    if cfg.DATALOADER.REPEAT_THRESHOLD != 0.0 and cfg.DATALOADER.SAMPLER_TRAIN != REPEAT_FACTOR_SAMPLER:
        raise ConfigError(f"DATALOADER.REPEAT_THRESHOLD is {cfg.DATALOADER.REPEAT_THRESHOLD} but only "
                          f"DATALOADER.SAMPLER_TRAIN {REPEAT_FACTOR_SAMPLER} reads it (the sampler is "
                          f"{cfg.DATALOADER.SAMPLER_TRAIN}); set that sampler or leave the threshold 0.0.")
    if not 0 <= cfg.DATALOADER.MAX_BAD_FRACTION <= 1:
        raise ConfigError(f"DATALOADER.MAX_BAD_FRACTION is {cfg.DATALOADER.MAX_BAD_FRACTION}; it is a fraction "
                          "of the training images: use a value in [0, 1].")
    _check_entries(cfg.DATASETS.COCO_JSON, ("name", "json_file", "image_root"), "DATASETS.COCO_JSON")
    _check_entries(cfg.DATASETS.VOC, ("name", "dirname", "split", "year"), "DATASETS.VOC")
    if needs_test_set and not cfg.DATASETS.TEST:
        raise ConfigError("DATASETS.TEST is empty: name at least one dataset to evaluate on.")
