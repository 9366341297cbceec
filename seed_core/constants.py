"""Names and numbers every layer must agree on: the files a run writes, and the input
normalisation self-supervised checkpoints are trained with."""

# The files of a run folder (OUTPUT_DIR), whichever tool wrote it.
LOG_FILE = "log.txt"                        # the run's log (seed_core.run_dir.RunLog)
CONFIG_FILE = "config.yaml"                 # the full config the run used

# A distillation run (seed_core.trainer).
CHECKPOINT_FILE = "checkpoint.pth"          # everything to resume a distillation run
BACKBONE_FILE = "student_backbone.pth"      # the exported student: torchvision key names, no head
META_FILE = "meta.json"                     # beside BACKBONE_FILE: architecture, feature width, origin
METRICS_LOG_FILE = "metrics.jsonl"          # one JSON line per logged step (seed_core.monitoring)

# A linear evaluation (seed_core.evaluation.lincls): CHECKPOINT_FILE to resume, METRICS_FILE per epoch.
BEST_CLASSIFIER_FILE = "model_best.pth"     # the classifier of the epoch with the best val top-1

# A detection fine-tuning, on either engine (seed_det.engines).
METRICS_FILE = "metrics.json"               # the run's results (seed_det.results)
EVAL_METRICS_FILE = "eval_metrics.json"     # an --eval-only run's results; metrics.json stays
TRAIN_LOG_FILE = "train_log.jsonl"          # one JSON line per logged iteration, for loss curves
FINAL_MODEL_FILE = "model_final.pth"        # the trained detector
LAST_CHECKPOINT_FILE = "last_checkpoint"    # names the checkpoint --resume continues from
TIMING_FILE = "timing.json"                 # step times of the torchvision engine

# torchvision's ImageNet statistics (RGB, 0..1 scale); Detectron2 configs use them x 255.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# TRAIN.TEACHER_PRECISION (seed_core/teacher_precision.py): whole teacher in one dtype, or a
# reduced-precision body with its last stage and projection head in fp32.
TEACHER_PRECISIONS = ("auto", "fp32", "bf16", "fp16", "bf16-fp32tail", "fp16-fp32tail")
