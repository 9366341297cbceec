"""The teacher zoo: public self-supervised checkpoints by name (`MODEL.TEACHER.WEIGHTS zoo:NAME`).

Each name gives the publisher's URL, the architecture to build (a name `build_backbone` accepts),
the checkpoint layout (`MODEL.TEACHER.FORMAT`) and the checksum the publisher prints, when it
prints one. A file is downloaded once into torch's cache folder (`torch.hub.get_dir()/checkpoints`,
which follows TORCH_HOME), resumably, and verified; where no checksum is published, the sha256 of
the first download is recorded and later downloads must match it.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass

from .checkpoint_io import atomic_write_text, folder_lock
from .download import Progress, download, file_digests, matches
from .errors import ChecksumError, ConfigError

logger = logging.getLogger(__name__)

ZOO_PREFIX = "zoo:"
RECORDS_FILE = "seed_zoo_checksums.json"  # in the cache folder: sha256 of each first download


@dataclass(frozen=True)
class ZooEntry:
    name: str
    url: str
    arch: str              # MODEL.TEACHER.ARCH
    format: str            # MODEL.TEACHER.FORMAT of the file
    checksum: str | None   # as published: md5:<hex> / sha256:<hex> (a prefix); None: none published
    what: str              # method, training, where it is published

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_FB = "https://dl.fbaipublicfiles.com"
_MMSELFSUP = "https://download.openmmlab.com/mmselfsup/1.x"


def _entries():
    moco = f"{_FB}/moco/moco_checkpoints"
    yield ZooEntry("mocov1_r50_200ep", f"{moco}/moco_v1_200ep/moco_v1_200ep_pretrain.pth.tar", "resnet50", "moco",
                   "md5:b251726a", "MoCo v1, 200 epochs (github.com/facebookresearch/moco)")
    yield ZooEntry("mocov2_r50_200ep", f"{moco}/moco_v2_200ep/moco_v2_200ep_pretrain.pth.tar", "resnet50", "moco",
                   "md5:59fd9945", "MoCo v2, 200 epochs (github.com/facebookresearch/moco)")
    yield ZooEntry("mocov2_r50_800ep", f"{moco}/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar", "resnet50", "moco",
                   "md5:a04e12f8", "MoCo v2, 800 epochs: SEED's ResNet-50 teacher (github.com/facebookresearch/moco)")
    swav = "github.com/facebookresearch/swav"
    for epochs in (800, 400):
        yield ZooEntry(f"swav_r50_{epochs}ep", f"{_FB}/deepcluster/swav_{epochs}ep_pretrain.pth.tar", "resnet50",
                       "swav", None, f"SwAV, {epochs} epochs, multi-crop ({swav})")
    for width in (2, 4, 5):
        yield ZooEntry(f"swav_r50w{width}_400ep", f"{_FB}/deepcluster/swav_RN50w{width}_400ep_pretrain.pth.tar",
                       f"resnet50w{width}", "swav", None, f"SwAV ResNet-50 x{width}, 400 epochs ({swav})")
    # SimCLR and BYOL were published in TensorFlow / JAX; MMSelfSup's PyTorch re-trainings carry the
    # first 8 digits of their sha256 in the file name.
    for method, digest in (("simclr", "4d9cce50"), ("byol", "de817331")):
        run = f"{method}_resnet50_16xb256-coslr-200e_in1k"
        yield ZooEntry(f"{method}_r50_200ep", f"{_MMSELFSUP}/{method}/{run}/{run}_20220825-{digest}.pth", "resnet50",
                       "mmselfsup", f"sha256:{digest}",
                       f"{method.upper() if method == 'byol' else 'SimCLR'}, 200 epochs, batch 4096, "
                       f"MMSelfSup's training (github.com/open-mmlab/mmselfsup)")
    for name, arch, file in (("dino_vits16", "vit_small_patch16_224", "dino_deitsmall16_pretrain"),
                             ("dino_vits8", "vit_small_patch8_224", "dino_deitsmall8_pretrain"),
                             ("dino_vitb16", "vit_base_patch16_224", "dino_vitbase16_pretrain"),
                             ("dino_vitb8", "vit_base_patch8_224", "dino_vitbase8_pretrain"),
                             ("dino_r50", "resnet50", "dino_resnet50_pretrain")):
        yield ZooEntry(name, f"{_FB}/dino/{file}/{file}.pth", arch, "dino" if arch != "resnet50" else "torchvision",
                       None, "DINO backbone (github.com/facebookresearch/dino)")
    for size, timm_size in (("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant")):
        for reg in ("", "_reg4"):
            yield ZooEntry(f"dinov2_vit{size}14{reg}",
                           f"{_FB}/dinov2/dinov2_vit{size}14/dinov2_vit{size}14{reg}_pretrain.pth",
                           f"vit_{timm_size}_patch14{reg}_dinov2", "dinov2", None,
                           f"DINOv2 backbone{' with 4 registers' if reg else ''} (github.com/facebookresearch/dinov2)")
    for size in ("tiny", "small", "base"):
        yield ZooEntry(f"convnext_{size}_1k", f"{_FB}/convnext/convnext_{size}_1k_224_ema.pth", f"convnext_{size}",
                       "convnext", None, "ConvNeXt, supervised on ImageNet-1k labels: not self-supervised "
                       "(github.com/facebookresearch/ConvNeXt)")


CATALOGUE: dict[str, ZooEntry] = {e.name: e for e in _entries()}


def zoo_name(weights: str) -> str | None:
    """The zoo name in a MODEL.TEACHER.WEIGHTS value (`zoo:NAME`), or None for a file path."""
    return weights[len(ZOO_PREFIX):] if weights.startswith(ZOO_PREFIX) else None


def get_entry(name: str) -> ZooEntry:
    if name not in CATALOGUE:
        raise ConfigError(f"unknown teacher zoo name '{name}'; known names: {', '.join(CATALOGUE)} "
                          f"(tools/zoo.py list describes them)")
    return CATALOGUE[name]


def cfg_problems(weights: str, arch: str, fmt: str) -> list[str]:
    """What is wrong with a `zoo:` teacher in a config (nothing for a file path)."""
    name = zoo_name(weights)
    if name is None:
        return []
    try:
        entry = get_entry(name)
    except ConfigError as e:
        return [f"MODEL.TEACHER.WEIGHTS: {e}"]
    problems = []
    if arch != entry.arch:
        problems.append(f"MODEL.TEACHER.ARCH = {arch!r} but {weights} is a {entry.arch}: "
                        f"set MODEL.TEACHER.ARCH {entry.arch}")
    if fmt not in ("auto", entry.format):
        problems.append(f"MODEL.TEACHER.FORMAT = {fmt!r} but {weights} is in the {entry.format} layout: "
                        f"set MODEL.TEACHER.FORMAT auto")
    return problems


def cache_dir() -> str:
    import torch.hub  # the cache follows TORCH_HOME, as torchvision's and timm's downloads do
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def cache_path(name: str) -> str:
    return os.path.join(cache_dir(), get_entry(name).filename)


def fetch(name: str, progress: Progress | None = None, timeout: float = 60.0) -> str:
    """The local path of zoo checkpoint `name`, downloaded and verified first if it is not cached.
    Processes fetching at once (the ranks of a run) take turns: the first downloads, the others
    find the file."""
    entry = get_entry(name)
    folder = cache_dir()
    dest = os.path.join(folder, entry.filename)
    with folder_lock(folder):
        records = _read_records(folder)
        recorded = records.get(entry.filename)
        expected = entry.checksum or (f"sha256:{recorded['sha256']}" if recorded else None)
        if os.path.exists(dest):
            if recorded and recorded.get("size") == os.path.getsize(dest):
                return dest
            digests = file_digests(dest)  # placed by hand: verify it once
            if expected and not matches(digests, expected):
                raise ChecksumError(f"{dest} does not match {expected} (the checksum of {name}); it was placed "
                                    f"there by hand or damaged: delete it and fetch {name} again")
        else:
            logger.info("downloading %s from %s to %s", name, entry.url, dest)
            digests = download(entry.url, dest, expected, progress, timeout)
        if not recorded:
            records[entry.filename] = {"sha256": digests["sha256"], "size": os.path.getsize(dest), "url": entry.url,
                                       "recorded": time.strftime("%Y-%m-%dT%H:%M:%S")}
            atomic_write_text(json.dumps(records, indent=1, sort_keys=True) + "\n", os.path.join(folder, RECORDS_FILE))
    return dest


def resolve(weights: str, progress: Progress | None = None) -> str:
    """A MODEL.TEACHER.WEIGHTS value as a local file: a path unchanged, `zoo:NAME` fetched."""
    name = zoo_name(weights)
    return weights if name is None else fetch(name, progress)


def _read_records(folder: str) -> dict:
    path = os.path.join(folder, RECORDS_FILE)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            records = json.load(f)
    except (OSError, ValueError) as e:  # damaged: files are verified again and the records rewritten
        logger.warning("%s is unreadable (%s); cached files will be verified again", path, e)
        return {}
    if not isinstance(records, dict):
        logger.warning("%s does not hold checksum records; cached files will be verified again", path)
        return {}
    # An entry of another shape (edited by hand) is dropped: its file is verified again and re-recorded.
    return {name: r for name, r in records.items()
            if isinstance(r, dict) and isinstance(r.get("size"), int)
            and re.fullmatch(r"[0-9a-f]{64}", str(r.get("sha256")))}
