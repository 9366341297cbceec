"""Building blocks of the torchvision detection engine (seed_det.engines.tv.engine).

checks      config keys the engine cannot honour -> ConfigError naming them
model       Faster/Mask R-CNN (C4 or FPN) from a Detectron2-style config
timm_fpn    a timm network (MobileNetV3, EfficientNet, ...) with an FPN, and its weights
layers      Detectron2 behaviour torchvision lacks: aligned RoIAlign, RPN loss, initialisation
weights     Detectron2 names -> torchvision names; verified backbone loading
solver      SGD parameter groups, warmup + multi-step / cosine schedule, gradient clipping
trainer     the iteration loop, checkpoints, train_log.jsonl, timing.json
precise_bn  TEST.PRECISE_BN
evaluate    inference over a test set into VOC / COCO evaluators
datasets    datasets named by a config
checkpoint  atomic checkpoints and last_checkpoint resume
"""
