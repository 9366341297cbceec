"""Convert ResNet checkpoints (SEED student, distillation run, MoCo, torchvision) to Detectron2 `.pkl`.

Output: `{"model": {d2_name: numpy array}, "__author__": "SEED", "matching_heuristics": True}`.
Name mapping (torchvision -> Detectron2):
    conv1 -> stem.conv1            bn1 -> stem.conv1.norm
    layer{L}.{i}.conv{k} -> res{L+1}.{i}.conv{k}     layer{L}.{i}.bn{k} -> res{L+1}.{i}.conv{k}.norm
    layer{L}.{i}.downsample.0 -> res{L+1}.{i}.shortcut   downsample.1 -> res{L+1}.{i}.shortcut.norm
`fc.*` (classifier) and BatchNorm `num_batches_tracked` counters are dropped; every other value is
copied bit for bit. Matching heuristics let Detectron2 place res5 in the backbone (FPN) or in the
res5 ROI head (C4).

A timm student (MobileNetV3, EfficientNet, ...: meta.json names a timm architecture) is converted
by seed_det.convert_timm instead, under its own names `backbone.bottom_up.<timm name>`.

Every user file is read with `torch.load(weights_only=True)`; a Detectron2 `.pkl` is read only by
`read_d2_pkl`, whose unpickler accepts plain containers and numpy arrays and nothing else.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np
import torch

from seed_core.checkpoint_io import (atomic_write, load_untrusted, require_checkpoint_file, require_finite,
                                    unwrap_state_dict)
from seed_core.constants import META_FILE
from seed_core.errors import CheckpointError
from seed_core.resnet_spec import ResNetSpec, depth_of, stage_block_counts
from seed_core.run_dir import claim_output_file
from seed_det.timm_backbone import is_timm_arch

logger = logging.getLogger(__name__)

__all__ = ["CheckpointError", "ResNetSpec", "convert_to_d2", "torchvision_to_d2_state", "read_d2_pkl",
           "write_d2_pkl", "load_user_checkpoint", "extract_backbone_state", "infer_torchvision_spec",
           "infer_d2_spec", "weights_spec", "check_weights_depth", "d2_to_torchvision_name",
           "d2_to_torchvision_state", "is_d2_detector", "to_numpy", "has_d2_resnet", "WeightsFile", "read_weights_file",
           "TV_CHECKPOINT_TAG", "DETECTOR_KINDS"]

SUPPORTED = ("resnet18/34/50/101/152 and their wide / ResNeXt / timm variants (torchvision key names: "
             "conv1, bn1, layer1..layer4)")
_ANCHOR = "layer1.0.conv1.weight"  # present in every torchvision-style ResNet, used to find the prefix
# Prefixes tried first when a checkpoint holds several ResNets (MoCo: encoder_q is the one to keep).
_PREFERRED = ("module.encoder_q.", "encoder_q.", "module.base_encoder.", "base_encoder.",
              "backbone.", "module.backbone.", "student.", "module.", "")

_TV_PATTERNS = [
    (re.compile(r"^conv1\.weight$"), "stem.conv1.weight"),
    (re.compile(r"^bn1\.(\w+)$"), r"stem.conv1.norm.\1"),
    (re.compile(r"^layer([1-4])\.(\d+)\.conv(\d)\.weight$"), "res{L}.\\2.conv\\3.weight"),
    (re.compile(r"^layer([1-4])\.(\d+)\.bn(\d)\.(\w+)$"), "res{L}.\\2.conv\\3.norm.\\4"),
    (re.compile(r"^layer([1-4])\.(\d+)\.downsample\.0\.weight$"), "res{L}.\\2.shortcut.weight"),
    (re.compile(r"^layer([1-4])\.(\d+)\.downsample\.1\.(\w+)$"), "res{L}.\\2.shortcut.norm.\\3"),
]

# Detectron2 -> torchvision, the inverse of _TV_PATTERNS. Order matters: the norm patterns must be
# tried before the conv patterns they extend.
_D2_PATTERNS = [
    (re.compile(r"^stem\.conv1\.norm\.(\w+)$"), r"bn1.\1"),
    (re.compile(r"^stem\.conv1\.weight$"), "conv1.weight"),
    (re.compile(r"^res([2-5])\.(\d+)\.shortcut\.norm\.(\w+)$"), r"layer{L}.\2.downsample.1.\3"),
    (re.compile(r"^res([2-5])\.(\d+)\.shortcut\.weight$"), r"layer{L}.\2.downsample.0.weight"),
    (re.compile(r"^res([2-5])\.(\d+)\.conv(\d)\.norm\.(\w+)$"), r"layer{L}.\2.bn\3.\4"),
    (re.compile(r"^res([2-5])\.(\d+)\.conv(\d)\.weight$"), r"layer{L}.\2.conv\3.weight"),
]
# Where a Detectron2 model keeps its ResNet: FPN bottom-up, C4 backbone, C4 res5 ROI head.
D2_RESNET_PREFIXES = ("backbone.bottom_up.", "backbone.", "roi_heads.")
# A torchvision-engine checkpoint says so in its "engine" entry (seed_det.engines.tv.checkpoint).
TV_CHECKPOINT_TAG = "seed_det.torchvision"


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

class _D2PklUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists/str/numbers and numpy arrays only; any other class is refused."""

    _ALLOWED = {
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how Python-2 pickles (old model zoo files) store bytes
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a Detectron2 checkpoint holds "
                                     "only containers and numpy arrays")


def read_d2_pkl(path: str | os.PathLike) -> dict:
    """Read a Detectron2 `.pkl` checkpoint safely. Returns the dict (`model`: name -> numpy array)."""
    path = os.fspath(path)
    require_checkpoint_file(path)
    try:
        with open(path, "rb") as f:
            data = _D2PklUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError) as err:
        raise CheckpointError(f"cannot read {path} as a Detectron2 .pkl (truncated, corrupt or not a "
                              f"Detectron2 checkpoint): {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a Detectron2 checkpoint (top level is {type(data).__name__}).")
    if "model" not in data:  # Caffe2/Detectron1 zoo files are a bare name -> array dict
        data = {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
    require_finite(data["model"], path)
    return data


def write_d2_pkl(model: Mapping[str, np.ndarray], out_path: str | os.PathLike) -> None:
    """Write a Detectron2 checkpoint atomically (temp file in the same folder + os.replace)."""
    out_path = os.fspath(out_path)
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    payload = {"model": dict(model), "__author__": "SEED", "matching_heuristics": True}
    atomic_write(out_path, "wb", lambda f: pickle.dump(payload, f, protocol=4))


def _looks_like_d2_pkl(path: str) -> bool:
    try:
        data = read_d2_pkl(path)
    except CheckpointError:
        return False
    names = list(data.get("model", {}))
    return any(n.startswith(("stem.", "res2.", "backbone.", "roi_heads.")) for n in names)


def _refuse_d2(path: str) -> CheckpointError:
    rename = "" if path.endswith(".pkl") else " (rename it to end in .pkl: Detectron2 picks the format by suffix)"
    return CheckpointError(f"{path} is a Detectron2 checkpoint, i.e. already converted. Use it directly: "
                           f"tools/train_net.py --config ... MODEL.WEIGHTS {path}{rename}. The converter "
                           "takes PyTorch checkpoints (student_backbone.pth, a distillation checkpoint, "
                           "MoCo or torchvision ResNet weights).")


def load_user_checkpoint(path: str | os.PathLike):
    """A PyTorch checkpoint to convert or fine-tune from (seed_core.checkpoint_io.load_untrusted),
    refusing a Detectron2 .pkl, which is already converted, by name."""
    path = os.fspath(path)
    if path.endswith(".pkl") and os.path.isfile(path):
        raise _refuse_d2(path)
    try:
        return load_untrusted(path)
    except CheckpointError as err:
        if os.path.isfile(path) and _looks_like_d2_pkl(path):
            raise _refuse_d2(path) from err
        raise


# ----------------------------------------------------------------------------------------------
# Finding the ResNet inside a checkpoint
# ----------------------------------------------------------------------------------------------


def _state_dict_of(obj, source: str) -> tuple[Mapping[str, torch.Tensor], str | None]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict checkpoint, got {type(obj).__name__}.")
    return unwrap_state_dict(obj)


def _resnet_prefix(keys, source: str) -> str:
    prefixes = sorted({k[: -len(_ANCHOR)] for k in keys if k.endswith(_ANCHOR)})
    if not prefixes:
        sample = ", ".join(list(keys)[:5])
        raise CheckpointError(f"{source}: no ResNet backbone found (keys start: {sample}). Only ResNet "
                              f"students convert to Detectron2 by their keys alone: {SUPPORTED}. A timm student "
                              "(MobileNetV3, EfficientNet, ...) converts with the meta.json of its export beside it.")
    if len(prefixes) == 1:
        return prefixes[0]
    for p in _PREFERRED:
        if p in prefixes:
            return p
    raise CheckpointError(f"{source}: several ResNets in one checkpoint (prefixes {prefixes}); "
                          "extract the one you want into a plain state dict first.")


def extract_backbone_state(obj, source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], str]:
    """The torchvision-named ResNet state dict inside any supported checkpoint, and its kind.

    Kinds: "seed-distill" (dict with "student": backbone.* + head.*), "moco" (module.encoder_q.*),
    "torchvision" (plain keys, possibly under state_dict/model, possibly with module.).
    """
    sd, container = _state_dict_of(obj, source)
    prefix = _resnet_prefix(list(sd.keys()), source)
    kind = "seed-distill" if container == "student" else "moco" if "encoder_q" in prefix else "torchvision"
    out = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue  # heads, the other MoCo encoder, queues, ...
        name = k[len(prefix):]
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue  # classifier / projection head and BN counters carry nothing Detectron2 uses
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{source}: {k} is a {type(v).__name__}, not a tensor.")
        out[name] = v
    if not any(k.startswith("layer4.") for k in out):
        out.update(_c4_res5(sd))
    logger.info("%s: %s checkpoint, ResNet under prefix %r, %d tensors", source, kind, prefix, len(out))
    return out, kind


# A C4 detector of the torchvision engine runs res5 (layer4) inside its box head, not its backbone.
_C4_RES5 = re.compile(r"^roi_heads\.box_head\.res5\.(layer4\..+)$")


def _c4_res5(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    found = {}
    for k, v in sd.items():
        m = _C4_RES5.match(k)
        if m and not k.endswith("num_batches_tracked"):
            found[m.group(1)] = v
    return found


def d2_to_torchvision_name(name: str) -> str | None:
    """'res3.1.conv2.norm.running_mean' -> 'layer2.1.bn2.running_mean' (a D2_RESNET_PREFIXES prefix
    is dropped first); None if not a ResNet name."""
    for prefix in D2_RESNET_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    for rx, template in _D2_PATTERNS:
        m = rx.match(name)
        if m:
            target = template.replace("{L}", str(int(m.group(1)) - 1)) if "{L}" in template else template
            return m.expand(target)
    return None


def d2_to_torchvision_state(model: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The ResNet of a Detectron2 state in torchvision names; anything else (heads, FPN) is left out."""
    out = {}
    for k, v in model.items():
        name = d2_to_torchvision_name(k)
        if name is not None:
            out[name] = torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v
    return out


def is_d2_detector(state: Mapping[str, object]) -> bool:
    """True for the state of a Detectron2 R-CNN (its RPN and box predictor are there)."""
    return any(k.startswith("proposal_generator.rpn_head.") for k in state) and any(
        k.startswith("roi_heads.box_predictor.") for k in state)


def has_d2_resnet(state: Mapping[str, object]) -> bool:
    """True when a state holds a ResNet in Detectron2 names (its stem, under any prefix)."""
    return any(re.search(r"(^|\.)stem\.conv1\.", k) for k in state)


def _spec(block: str, counts: tuple, stem: int, res2: int, source: str) -> ResNetSpec:
    depth = depth_of(block, counts)
    if depth is None:
        raise CheckpointError(f"{source}: {block} ResNet with blocks per stage {counts} is not a standard "
                              f"depth; supported: {SUPPORTED}.")
    return ResNetSpec(depth, block, counts, stem, res2)


def infer_torchvision_spec(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> ResNetSpec:
    counts = stage_block_counts(state)
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    if "conv1.weight" not in state:
        raise CheckpointError(f"{source}: ResNet stem conv1.weight missing; the checkpoint is incomplete.")
    last = "conv3" if block == "bottleneck" else "conv2"
    res2 = state[f"layer1.0.{last}.weight"].shape[0]
    return _spec(block, counts, state["conv1.weight"].shape[0], res2, source)


def infer_d2_spec(model: Mapping[str, np.ndarray], source: str = "checkpoint") -> ResNetSpec:
    """Depth of the ResNet in a Detectron2 state (names may carry backbone./roi_heads. prefixes)."""
    names = {re.sub(r"^.*?(?=(stem|res[2-5])\.)", "", n): n for n in model if re.search(r"(^|\.)(stem|res[2-5])\.", n)}
    counts = {s: 0 for s in range(2, 6)}
    for n in names:
        m = re.match(r"^res([2-5])\.(\d+)\.", n)
        if m:
            counts[int(m.group(1))] = max(counts[int(m.group(1))], int(m.group(2)) + 1)
    if "stem.conv1.weight" not in names or not all(counts.values()):
        raise CheckpointError(f"{source}: not a full Detectron2 ResNet (stem and res2..res5 needed; found "
                              f"blocks per stage {tuple(counts.values())}).")
    block = "bottleneck" if "res2.0.conv3.weight" in names else "basic"
    last = "conv3" if block == "bottleneck" else "conv2"
    stem = model[names["stem.conv1.weight"]].shape[0]
    res2 = model[names[f"res2.0.{last}.weight"]].shape[0]
    return _spec(block, tuple(counts[s] for s in range(2, 6)), stem, res2, source)


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------

def _d2_name(tv_name: str) -> str | None:
    for rx, template in _TV_PATTERNS:
        m = rx.match(tv_name)
        if m:
            target = template.replace("{L}", str(int(m.group(1)) + 1)) if "{L}" in template else template
            return m.expand(target)
    return None


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array for a Detectron2 .pkl, its values copied exactly."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()  # numpy has no bfloat16; float32 holds every bfloat16 value exactly
    return t.numpy().copy()


def torchvision_to_d2_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Rename a torchvision-named ResNet state dict to Detectron2 names; values copied exactly.

    `fc.*` and `num_batches_tracked` are dropped; any other unknown key is an error (it would
    silently not load).
    """
    out, unknown = {}, []
    for k, v in state_dict.items():
        if k.startswith("fc.") or k.endswith("num_batches_tracked"):
            continue
        name = _d2_name(k)
        if name is None:
            unknown.append(k)
            continue
        out[name] = to_numpy(v)
    if unknown:
        raise CheckpointError(f"keys with no Detectron2 ResNet counterpart: {unknown[:8]}"
                              f"{' ...' if len(unknown) > 8 else ''}. Only plain ResNets convert: {SUPPORTED}.")
    return out


def _read_meta(in_path: str) -> dict:
    meta_path = os.path.join(os.path.dirname(os.path.abspath(in_path)), META_FILE)
    if not os.path.isfile(meta_path):
        return {}
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {meta_path}: {err}. Fix or delete it.") from err
    return meta if isinstance(meta, dict) else {}


def _check_arch(arch: str, spec: ResNetSpec | None, source: str) -> None:
    a = arch.lower()
    if not any(s in a for s in ("resnet", "resnext")):
        raise CheckpointError(f"{source}: the student is '{arch}', which has no Detectron2 backbone here. "
                              f"Students convert when they are ResNets ({SUPPORTED}) or timm models.")
    m = re.search(r"(?:resnet|resnext)(\d+)", a)
    if spec is not None and m and int(m.group(1)) != spec.depth:
        raise CheckpointError(f"{source}: meta.json says {arch} but the weights are a ResNet-{spec.depth}; "
                              "the checkpoint and its meta.json do not belong together.")


def check_output_path(out_path: str, overwrite: bool = False) -> None:
    """Refuse, before reading anything, an output that is a folder, lacks .pkl, or exists already
    (unless `overwrite`): a converted checkpoint the user made is not replaced without being asked."""
    if os.path.isdir(out_path):
        raise CheckpointError(f"output {out_path} is a directory; give a file name ending in .pkl, "
                              f"e.g. {os.path.join(out_path, 'backbone.pkl')}")
    if not out_path.endswith(".pkl"):
        raise CheckpointError(f"output {out_path} must end in .pkl (Detectron2 reads numpy checkpoints "
                              "from .pkl files)")
    if os.path.exists(out_path) and not overwrite:
        raise CheckpointError(f"output {out_path} exists already; pass --overwrite to replace it (the old file "
                              "is moved to previous-<time>/ beside it), or choose another name")


def convert_to_d2(in_path: str | os.PathLike, out_path: str | os.PathLike, overwrite: bool = False) -> dict:
    """Convert one checkpoint to a Detectron2 `.pkl`. Returns a summary dict (depth, counts, ...)."""
    in_path, out_path = os.fspath(in_path), os.fspath(out_path)
    check_output_path(out_path, overwrite)
    meta = _read_meta(in_path)
    if meta.get("arch") and is_timm_arch(str(meta["arch"])):  # MobileNetV3, EfficientNet, ...
        from seed_det.convert_timm import convert_timm_student
        obj = load_user_checkpoint(in_path)
        with claim_output_file(out_path, overwrite):
            return convert_timm_student(in_path, out_path, str(meta["arch"]), obj)
    if meta.get("arch"):
        _check_arch(str(meta["arch"]), None, in_path)  # fail before reading a large non-ResNet file
    obj = load_user_checkpoint(in_path)
    state, kind = extract_backbone_state(obj, in_path)
    spec = infer_torchvision_spec(state, in_path)
    if meta.get("arch"):
        _check_arch(str(meta["arch"]), spec, in_path)
    model = torchvision_to_d2_state(state)
    with claim_output_file(out_path, overwrite):  # an existing output is moved aside, not deleted
        write_d2_pkl(model, out_path)
    summary = {"input": in_path, "output": out_path, "source": kind, "arch": meta.get("arch", ""),
               "num_tensors": len(model), "config_overrides": spec.config_hint(), **asdict(spec)}
    logger.info("converted %s (%s, ResNet-%d) -> %s (%d tensors)", in_path, kind, spec.depth, out_path,
                len(model))
    return summary


# ----------------------------------------------------------------------------------------------
# Checking weights against a config (both engines, before any training)
# ----------------------------------------------------------------------------------------------

DETECTOR_KINDS = ("d2_detector", "tv_detector")


@dataclass(frozen=True)
class WeightsFile:
    """A weights file (MODEL.WEIGHTS, or a file to convert) read once, and what it holds. `kind`:

    d2_detector  a Detectron2 R-CNN (RPN and box predictor); `state` in Detectron2 names
    tv_detector  a checkpoint of the torchvision engine; `state` is its model's state dict
    d2_backbone  a ResNet in Detectron2 names: a converted .pkl, or a Detectron2 training checkpoint
                 without detection heads; `state` in Detectron2 names
    backbone     any other PyTorch checkpoint: a ResNet in torchvision names is looked for in it
    `checkpoint` is the loaded PyTorch object (None for a .pkl).
    """

    path: str
    kind: str
    state: Mapping | None = None
    checkpoint: object = None

    @property
    def is_detector(self) -> bool:
        return self.kind in DETECTOR_KINDS

    def resnet_state(self) -> dict[str, torch.Tensor]:
        """The ResNet it holds, in torchvision names."""
        if self.kind.startswith("d2_"):
            return d2_to_torchvision_state(self.state)
        return extract_backbone_state(self.checkpoint, self.path)[0]

    def resnet_spec(self) -> ResNetSpec:
        """Depth and widths of the ResNet it holds."""
        if self.kind.startswith("d2_"):
            return infer_d2_spec(self.state, self.path)
        return infer_torchvision_spec(self.resnet_state(), self.path)


def read_weights_file(path: str | os.PathLike) -> WeightsFile:
    """Read a weights file and say what kind it is (see WeightsFile): the one place that decides,
    for both engines and the checks before them."""
    path = os.fspath(path)
    if path.endswith(".pkl"):
        model = read_d2_pkl(path)["model"]
        return WeightsFile(path, "d2_detector" if is_d2_detector(model) else "d2_backbone", model)
    obj = load_user_checkpoint(path)
    if isinstance(obj, Mapping) and obj.get("engine") == TV_CHECKPOINT_TAG:
        return WeightsFile(path, "tv_detector", obj["model"], obj)
    # a Detectron2 training checkpoint (model_final.pth): a whole detector, or a backbone in its names
    model = obj.get("model") if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) else None
    if model is not None and is_d2_detector(model):
        return WeightsFile(path, "d2_detector", model, obj)
    if model is not None and has_d2_resnet(model):
        return WeightsFile(path, "d2_backbone", model, obj)
    return WeightsFile(path, "backbone", None, obj)


def weights_spec(path: str | os.PathLike) -> ResNetSpec:
    """ResNet depth/widths of a weights file: a Detectron2 .pkl or any convertible PyTorch checkpoint."""
    return read_weights_file(path).resnet_spec()


def require_local_weights(path: str | os.PathLike) -> str:
    """MODEL.WEIGHTS must be a file on this machine: nothing is fetched at run time."""
    path = os.fspath(path)
    if "://" in path:
        raise CheckpointError(f"MODEL.WEIGHTS {path}: remote weights are not checked or fetched here; "
                              "download the file and pass its local path.")
    if not os.path.isfile(path):
        raise CheckpointError(f"MODEL.WEIGHTS {path} does not exist. Convert the student first: "
                              f"python tools/convert_to_d2.py student_backbone.pth {path}")
    return path


def check_weights_depth(path: str | os.PathLike, depth: int, res2_out_channels: int | None = None) -> ResNetSpec:
    """Raise before training when MODEL.WEIGHTS does not fit MODEL.RESNETS (e.g. R34 weights, R18 config)."""
    path = require_local_weights(path)
    spec = weights_spec(path)
    if spec.depth != depth:
        raise CheckpointError(f"MODEL.WEIGHTS {path} is a ResNet-{spec.depth} but the config builds "
                              f"ResNet-{depth} (MODEL.RESNETS.DEPTH). Use the R{spec.depth} config or the "
                              f"R{depth} weights.")
    if res2_out_channels is not None and spec.res2_out_channels != res2_out_channels:
        raise CheckpointError(f"MODEL.WEIGHTS {path} has res2 width {spec.res2_out_channels} but "
                              f"MODEL.RESNETS.RES2_OUT_CHANNELS is {res2_out_channels}; set it to match.")
    return spec
