"""Representation quality of a frozen backbone: cached features, weighted k-NN and a linear probe."""
from .backbone_io import LoadedBackbone, load_backbone
from .features import FeatureSet, build_eval_transform, extract_features, load_or_compute_features
from .knn import knn_class_scores, knn_evaluate
from .linear import LinearProbeResult, train_linear_probe
from .metrics import topk_accuracy

__all__ = [
    "LoadedBackbone", "load_backbone",
    "FeatureSet", "build_eval_transform", "extract_features", "load_or_compute_features",
    "knn_class_scores", "knn_evaluate",
    "LinearProbeResult", "train_linear_probe",
    "topk_accuracy",
]
