"""Config keys the torchvision engine cannot honour: refuse them by name instead of ignoring them.

Each rule is (key, test on the config value, what to do). All violations are reported at once so a
user fixes a config in one go.

Keys of Detectron2's that this engine honours in its own way: CUDNN_BENCHMARK (set for the run),
DATALOADER.ASPECT_RATIO_GROUPING (batches of one orientation, seed_det.data.torch_dataset) and
INPUT.MASK_FORMAT: mask targets are always full-image bitmaps cut out by RoIAlign, which is what
Detectron2 does for "bitmask"; for "polygon" Detectron2 rasterises each polygon inside its box
instead, so the engine says so in the log (`mask_format_note`).
"""
from __future__ import annotations

from typing import Callable, List, Tuple

from fvcore.common.config import CfgNode

from seed_core.errors import ConfigError
from seed_core.yaml_config import cfg_value
from seed_det.config import BASIC_BLOCK_ROI_HEAD
from seed_det.timm_backbone import TIMM_FPN_BACKBONE

C4_BACKBONE, FPN_BACKBONE = "build_resnet_backbone", "build_resnet_fpn_backbone"
NORMS = ("FrozenBN", "BN", "SyncBN", "naiveSyncBN", "GN")
HEAD_NORMS = ("",) + NORMS
C4_HEADS = ("Res5ROIHeads", BASIC_BLOCK_ROI_HEAD)


def _rules(cfg: CfgNode) -> List[Tuple[str, Callable, str]]:
    timm = cfg.MODEL.BACKBONE.NAME == TIMM_FPN_BACKBONE
    fpn = cfg.MODEL.BACKBONE.NAME in (FPN_BACKBONE, TIMM_FPN_BACKBONE)
    rules = [
        ("MODEL.META_ARCHITECTURE", lambda v: v == "GeneralizedRCNN", "only GeneralizedRCNN (Faster/Mask R-CNN)"),
        ("MODEL.BACKBONE.NAME", lambda v: v in (C4_BACKBONE, FPN_BACKBONE, TIMM_FPN_BACKBONE),
         f"only {C4_BACKBONE} (C4) and {FPN_BACKBONE} (FPN) ResNets, and {TIMM_FPN_BACKBONE} (timm networks)"),
        ("MODEL.KEYPOINT_ON", lambda v: not v, "no keypoint head"),
        ("MODEL.LOAD_PROPOSALS", lambda v: not v, "proposals come from the RPN; precomputed ones are not read"),
        ("MODEL.RESNETS.DEFORM_ON_PER_STAGE", lambda v: not any(v), "torchvision ResNets have no deformable conv"),
        ("MODEL.RESNETS.NUM_GROUPS", lambda v: v == 1, "no ResNeXt groups"),
        ("MODEL.RESNETS.WIDTH_PER_GROUP", lambda v: v == 64, "standard ResNet widths only"),
        ("MODEL.RESNETS.RES5_DILATION", lambda v: v == 1, "no dilated res5"),
        ("MODEL.RESNETS.STEM_OUT_CHANNELS", lambda v: v == 64, "standard ResNet stem (64 channels) only"),
        ("MODEL.RESNETS.NORM", lambda v: v in NORMS, f"norms {NORMS}"),
        ("MODEL.RESNETS.STRIDE_IN_1X1",
         lambda v: not v or cfg.MODEL.RESNETS.DEPTH in (18, 34),
         "torchvision Bottlenecks stride in the 3x3 conv: set STRIDE_IN_1X1 False (right for self-supervised "
         "torchvision-style weights)"),
        ("MODEL.RESNETS.RES2_OUT_CHANNELS",
         lambda v: v == (64 if cfg.MODEL.RESNETS.DEPTH in (18, 34) else 256), "the standard res2 width of the depth"),
        ("MODEL.RPN.IOU_LABELS", lambda v: list(v) == [0, -1, 1], "background / ignore / foreground labels [0, -1, 1]"),
        ("MODEL.ROI_HEADS.IOU_LABELS", lambda v: list(v) == [0, 1], "labels [0, 1]"),
        ("SOLVER.REFERENCE_WORLD_SIZE", lambda v: v in (0, 1), "no automatic rescaling for another world size"),
        ("MODEL.PROPOSAL_GENERATOR.NAME", lambda v: v == "RPN", "only the RPN"),
        ("MODEL.RPN.HEAD_NAME", lambda v: v == "StandardRPNHead", "only StandardRPNHead"),
        ("MODEL.RPN.CONV_DIMS", lambda v: list(v) == [-1], "one 3x3 conv with the input width"),
        ("MODEL.RPN.BOUNDARY_THRESH", lambda v: v == -1, "anchors crossing the image border are always kept"),
        ("MODEL.RPN.BBOX_REG_LOSS_TYPE", lambda v: v == "smooth_l1", "smooth_l1 only"),
        ("MODEL.ANCHOR_GENERATOR.NAME", lambda v: v == "DefaultAnchorGenerator", "axis-aligned anchors only"),
        ("MODEL.ANCHOR_GENERATOR.OFFSET", lambda v: v == 0.0, "anchor offset 0.0 only"),
        ("MODEL.ROI_HEADS.IOU_THRESHOLDS", lambda v: len(v) == 1, "one foreground IoU threshold"),
        ("MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", lambda v: v, "ground-truth boxes are always added to proposals"),
        ("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", lambda v: not v, "class-specific box regression only"),
        ("MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES", lambda v: not v, "not supported"),
        ("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", lambda v: v == "smooth_l1", "smooth_l1 only"),
        ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", lambda v: v in ("ROIAlignV2", "ROIAlign"), "RoIAlign only"),
        ("MODEL.ROI_MASK_HEAD.NAME", lambda v: v == "MaskRCNNConvUpsampleHead", "MaskRCNNConvUpsampleHead only"),
        ("MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", lambda v: not v, "class-specific masks only"),
        ("MODEL.ROI_MASK_HEAD.NORM", lambda v: v in HEAD_NORMS, f"mask head norms {HEAD_NORMS}"),
        ("MODEL.ROI_MASK_HEAD.POOLER_TYPE", lambda v: v in ("ROIAlignV2", "ROIAlign"), "RoIAlign only"),
        ("INPUT.FORMAT", lambda v: v in ("RGB", "BGR"), "RGB or BGR images"),
        ("INPUT.MIN_SIZE_TRAIN_SAMPLING", lambda v: v == "choice", "'choice' among MIN_SIZE_TRAIN only"),
        ("INPUT.RANDOM_FLIP", lambda v: v in ("horizontal", "none"), "'horizontal' or 'none'"),
        ("INPUT.CROP.ENABLED", lambda v: not v, "no random crop augmentation"),
        ("DATASETS.PROPOSAL_FILES_TRAIN", lambda v: not v, "precomputed proposals are not read"),
        ("DATASETS.PROPOSAL_FILES_TEST", lambda v: not v, "precomputed proposals are not read"),
        ("DATALOADER.SAMPLER_TRAIN", lambda v: v == "TrainingSampler", "TrainingSampler (shuffled, infinite) only"),
        ("SOLVER.LR_SCHEDULER_NAME", lambda v: v in ("WarmupMultiStepLR", "WarmupCosineLR"),
         "WarmupMultiStepLR or WarmupCosineLR"),
        ("SOLVER.WARMUP_METHOD", lambda v: v in ("linear", "constant"), "linear or constant warmup"),
        ("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", lambda v: v in ("value", "norm"), "'value' or 'norm' clipping"),
        ("TEST.AUG.ENABLED", lambda v: not v, "no test-time augmentation"),
        ("TEST.EXPECTED_RESULTS", lambda v: not v, "no check of expected results (Detectron2's "
         "verify_results); leave it empty"),
        ("VIS_PERIOD", lambda v: v == 0, "no visualisation of training images; leave it 0"),
    ]
    if fpn:
        rules += [
            ("MODEL.RESNETS.OUT_FEATURES", lambda v: list(v) == ["res2", "res3", "res4", "res5"],
             "FPN on res2..res5"),
            ("MODEL.FPN.IN_FEATURES", lambda v: list(v) == ["res2", "res3", "res4", "res5"], "FPN on res2..res5"),
            ("MODEL.FPN.NORM", lambda v: v in HEAD_NORMS, f"FPN norms {HEAD_NORMS}"),
            ("MODEL.FPN.FUSE_TYPE", lambda v: v == "sum", "sum fusion only"),
            ("MODEL.ROI_HEADS.NAME", lambda v: v == "StandardROIHeads", "StandardROIHeads with FPN"),
            ("MODEL.ROI_HEADS.RES5_EXTRA_NORM", lambda v: not v, "the res5 extra norm only with a C4 res5 head"),
            ("MODEL.ROI_BOX_HEAD.NAME", lambda v: v == "FastRCNNConvFCHead", "FastRCNNConvFCHead"),
            ("MODEL.ROI_BOX_HEAD.NUM_FC", lambda v: v >= 1, "at least one fc layer"),
            ("MODEL.ROI_BOX_HEAD.NORM", lambda v: v in HEAD_NORMS, f"box head norms {HEAD_NORMS}"),
        ]
    else:
        rules += [
            ("MODEL.RESNETS.OUT_FEATURES", lambda v: list(v) == ["res4"], "C4: backbone ends at res4"),
            ("MODEL.RPN.IN_FEATURES", lambda v: list(v) == ["res4"], "C4: RPN on res4"),
            ("MODEL.ROI_HEADS.IN_FEATURES", lambda v: list(v) == ["res4"], "C4: RoI pooling on res4"),
            ("MODEL.ROI_HEADS.NAME", lambda v: v in C4_HEADS, f"C4 uses res5 as the box head: {C4_HEADS}"),
            ("MODEL.ROI_MASK_HEAD.NUM_CONV", lambda v: v == 0, "C4 mask head is a deconv on res5 features"),
        ]
    if timm:  # no ResNet: its keys are unread (seed_det.config refuses them), the FPN takes timm levels
        # (four levels at strides 4..32, P2..P5, are checked against timm's feature_info at build time)
        rules = [r for r in rules if not r[0].startswith("MODEL.RESNETS.") and r[0] != "MODEL.FPN.IN_FEATURES"]
        rules.append(("MODEL.TIMM.OUT_INDICES", lambda v: len(v) == 4, "four timm levels (the FPN's P2..P5)"))
    return rules


def check_supported(cfg: CfgNode) -> None:
    """Raise ConfigError naming every key whose value the torchvision engine would not honour."""
    problems = []
    for key, ok, what in _rules(cfg):
        value = cfg_value(cfg, key)
        if not ok(value):
            problems.append(f"  {key} = {value!r}: the torchvision engine supports {what}")
    if problems:
        raise ConfigError("config asks for things the torchvision engine cannot do:\n" + "\n".join(problems)
                          + "\nChange these keys, or run with --engine detectron2.")


def check_run(cfg: CfgNode, world_size: int, device_type: str, training: bool) -> None:
    """What the config asks of this run's processes and device: the global batch must split evenly
    over the processes; mixed precision (fp16 autocast + GradScaler, as Detectron2's AMPTrainer)
    needs CUDA, and like Detectron2 the engine refuses it elsewhere rather than silently train in fp32."""
    problems = []
    if training and cfg.SOLVER.IMS_PER_BATCH % world_size:
        problems.append(f"  SOLVER.IMS_PER_BATCH = {cfg.SOLVER.IMS_PER_BATCH} is the global batch and must split evenly "
                        f"over the {world_size} processes (--num-gpus x --num-machines): use a multiple of "
                        f"{world_size}")
    if training and cfg.SOLVER.AMP.ENABLED and device_type != "cuda":
        problems.append("  SOLVER.AMP.ENABLED = True: mixed precision (fp16) needs a CUDA GPU; on the CPU set "
                        "SOLVER.AMP.ENABLED False to train in fp32")
    if problems:
        raise ConfigError("config does not fit this run:\n" + "\n".join(problems))


def mask_format_note(cfg: CfgNode) -> str | None:
    """What INPUT.MASK_FORMAT means on this engine, when it differs from Detectron2 (None otherwise)."""
    if cfg.MODEL.MASK_ON and cfg.INPUT.MASK_FORMAT == "polygon":
        return ("INPUT.MASK_FORMAT polygon: the torchvision engine cuts mask targets out of full-image "
                "bitmaps with RoIAlign (Detectron2's 'bitmask'), where Detectron2 rasterises each polygon "
                "inside its box; set INPUT.MASK_FORMAT bitmask to name what this engine does")
    return None
