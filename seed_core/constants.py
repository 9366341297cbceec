"""Names and numbers every layer must agree on: the files a run writes, and the input
normalisation self-supervised checkpoints are trained with."""

CHECKPOINT_FILE = "checkpoint.pth"          # everything to resume a distillation run
BACKBONE_FILE = "student_backbone.pth"      # the exported student: torchvision key names, no head
META_FILE = "meta.json"                     # beside BACKBONE_FILE: architecture, feature width, origin

# torchvision's ImageNet statistics (RGB, 0..1 scale); Detectron2 configs use them x 255.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# TRAIN.TEACHER_PRECISION (seed_core/teacher_precision.py): whole teacher in one dtype, or a
# reduced-precision body with its last stage and projection head in fp32.
TEACHER_PRECISIONS = ("auto", "fp32", "bf16", "fp16", "bf16-fp32tail", "fp16-fp32tail")
