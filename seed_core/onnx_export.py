"""ONNX export, checked against onnxruntime: the generic steps every export takes (trace, name the
operator ONNX lacks, metadata, atomic write) and the distilled backbone (`export_backbone_onnx`).
seed_det.onnx_export does the same for detectors of the torchvision engine.

torch.onnx's TorchScript-based exporter (dynamo=False) is used for both: it traces torchvision's
R-CNN with its data-dependent shapes (torchvision tests its detectors with it), and a trace is
checked here by running onnxruntime on other batch and image sizes than the traced ones, so a size
that was frozen into the graph is found before the file is written.
"""
from __future__ import annotations

import io
import logging
import os
import re
import warnings
from typing import Dict, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint_io import atomic_write
from .constants import IMAGENET_MEAN, IMAGENET_STD
from .errors import ExportError
from .evaluation.backbone_io import load_backbone
from .run_dir import claim_output_file

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
INSTALL_HINT = "pip install 'seed-transfer[export]' (onnx and onnxruntime)"
BACKBONE_INPUT, BACKBONE_OUTPUT = "images", "features"
BACKBONE_TOLERANCE = 1e-4  # largest |onnxruntime - torch| accepted for a feature
DEFAULT_IMAGE_SIZE = 224  # the backbone's traced image side: its training resolution


def require_onnx():
    """The onnx and onnxruntime modules, or an ExportError saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ExportError(f"ONNX export needs the 'export' extra ({e.name} is not installed): {INSTALL_HINT}") from None
    return onnx, onnxruntime


def check_onnx_path(path: str, overwrite: bool = False) -> None:
    """Refuse, before any work, an output that is a folder, does not end in .onnx, or exists
    (unless `overwrite`: it is moved aside when the new file is written)."""
    if os.path.isdir(path):
        raise ExportError(f"output {path} is a folder; give a file name ending in .onnx, "
                          f"e.g. {os.path.join(path, 'model.onnx')}")
    if not path.endswith(".onnx"):
        raise ExportError(f"output {path} must end in .onnx")
    if os.path.lexists(path) and not overwrite:
        raise ExportError(f"output {path} exists already; pass --overwrite to replace it (the old file is moved "
                          "to previous-<time>/ beside it), or choose another name")


def unsupported_operator(message: str) -> str | None:
    """The operator an exporter error names ('aten::special_bessel_j0'), if any."""
    m = re.search(r"operator '([^']+)'", message) or re.search(r"export of operator (\S+?)[,.]?(?:\s|$)", message)
    return m.group(1) if m else None


def trace_to_onnx(module: nn.Module, args: tuple, input_names: Sequence[str], output_names: Sequence[str],
                  dynamic_axes: Mapping[str, Mapping[int, str]]) -> bytes:
    """The ONNX model (serialised) of `module` in eval mode traced on `args`; an operator without
    an ONNX counterpart is an ExportError naming it."""
    require_onnx()
    buffer = io.BytesIO()
    module.eval()
    try:
        # The exporter's deprecation and tracer warnings are not the user's to act on: the result
        # is checked against onnxruntime instead.
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, buffer, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()})
    except torch.onnx.OnnxExporterError as e:
        op = unsupported_operator(str(e))
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if op:
            raise ExportError(f"cannot export {type(module).__name__} to ONNX: the operator {op} has no ONNX "
                              f"counterpart at opset {ONNX_OPSET} ({detail}). Replace the layer that uses it, "
                              "or export another architecture.") from None
        raise ExportError(f"cannot export {type(module).__name__} to ONNX: {detail}") from None
    return buffer.getvalue()


def with_metadata(model_bytes: bytes, metadata: Mapping[str, object]) -> bytes:
    """The model with `metadata` in its metadata_props (what the file holds and how to feed it)."""
    onnx, _ = require_onnx()
    model = onnx.load_from_string(model_bytes)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    return model.SerializeToString()


def onnx_session(model: bytes | str):
    """An onnxruntime CPU session over a serialised model or a file, using torch's thread count."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only: onnxruntime's warnings would go straight to stderr
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run_session(session, output_names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list:
    """onnxruntime's outputs; a graph that fails on these inputs (a size frozen into it by the
    trace) is an ExportError."""
    try:
        return session.run(list(output_names), dict(feeds))
    except Exception as e:  # onnxruntime's own exception types are not importable by a stable name
        shapes = {k: tuple(v.shape) for k, v in feeds.items()}
        raise ExportError(f"the exported graph fails on inputs of shape {shapes} ({str(e).splitlines()[0]}): the "
                          "trace froze a size that varies; the file was not written") from None


def write_onnx(model_bytes: bytes, path: str, overwrite: bool = False) -> None:
    """Write atomically; an existing file is moved to previous-<time>/ beside it (with `overwrite`)."""
    with claim_output_file(path, overwrite):
        atomic_write(path, "wb", lambda f: f.write(model_bytes))


def backbone_check_shapes(image_size: int, batch: int) -> list:
    """Inputs other than the traced one (batch `batch`, square `image_size`): another batch size
    and another, non-square, image size."""
    return [(batch - 1, 3, image_size, image_size), (batch + 1, 3, image_size + 32, image_size + 16)]


def backbone_difference(model: nn.Module, session, shapes: Iterable[tuple], seed: int = 0) -> float:
    """Largest |onnxruntime - torch| over random inputs of `shapes`."""
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for shape in shapes:
        x = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        got = run_session(session, [BACKBONE_OUTPUT], {BACKBONE_INPUT: x.numpy()})[0]
        if got.shape != expected.shape:
            raise ExportError(f"the ONNX backbone gives features of shape {got.shape} for input {shape}, torch "
                              f"{expected.shape}: a size was frozen into the graph")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_backbone_onnx(weights: str, out_path: str, arch: str | None = None, image_size: int = DEFAULT_IMAGE_SIZE,
                         overwrite: bool = False, batch: int = 2) -> Dict[str, object]:
    """Export a distilled backbone (student_backbone.pth + meta.json, or a .pth with `arch`) to
    `out_path`: input `images` (N, 3, H, W), normalised RGB (torchvision's ImageNet statistics),
    output `features` (N, feature_dim); batch, height and width dynamic. Checked on onnxruntime
    within BACKBONE_TOLERANCE before the file is written. Returns a summary."""
    out_path = os.fspath(out_path)
    check_onnx_path(out_path, overwrite)
    require_onnx()
    if image_size < 32 or batch < 2:
        raise ExportError(f"trace with an image size of at least 32 and a batch of at least 2 (got {image_size}, "
                          f"{batch}): smaller inputs vanish in the network's strides")
    try:
        loaded = load_backbone(weights, arch)
    except (ValueError, FileNotFoundError) as e:
        raise ExportError(str(e)) from None
    example = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    model_bytes = trace_to_onnx(loaded.model, (example,), [BACKBONE_INPUT], [BACKBONE_OUTPUT],
                                {BACKBONE_INPUT: {0: "batch", 2: "height", 3: "width"}, BACKBONE_OUTPUT: {0: "batch"}})
    model_bytes = with_metadata(model_bytes, {
        "seed.kind": "backbone", "seed.arch": loaded.arch, "seed.feature_dim": loaded.feature_dim,
        "seed.weights_sha256": loaded.checksum, "seed.input": "RGB, 0..1 scaled, then (x - mean) / std",
        "seed.mean": list(IMAGENET_MEAN), "seed.std": list(IMAGENET_STD)})
    shapes = backbone_check_shapes(image_size, batch)
    difference = backbone_difference(loaded.model, onnx_session(model_bytes), shapes)
    if difference > BACKBONE_TOLERANCE:
        raise ExportError(f"onnxruntime's features differ from torch's by up to {difference:.2e} (> "
                          f"{BACKBONE_TOLERANCE:g}); the file was not written")
    write_onnx(model_bytes, out_path, overwrite)
    logger.info("exported %s (%s) to %s; onnxruntime matches torch within %.1e on inputs %s", loaded.source,
                loaded.arch, out_path, difference, shapes)
    return {"kind": "backbone", "input": loaded.source, "output": out_path, "arch": loaded.arch,
            "feature_dim": loaded.feature_dim, "opset": ONNX_OPSET, "checked_shapes": [list(s) for s in shapes],
            "max_abs_difference": difference, "dynamic": ["batch", "height", "width"]}
