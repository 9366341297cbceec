"""The ResNet family by structure: depth <-> (block type, blocks per stage), read from torchvision
key names (conv1, bn1, layer1..layer4). Teacher loading, conversion to Detectron2 and both detection
engines ask this one table."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

# depth -> (block type, blocks per stage), as in the ResNet paper.
RESNET_BLOCKS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
RESNET_DEPTHS = tuple(RESNET_BLOCKS)
_BY_STRUCTURE = {structure: depth for depth, structure in RESNET_BLOCKS.items()}
_STAGE_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


@dataclass(frozen=True)
class ResNetSpec:
    depth: int
    block: str                       # "basic" (R18/R34) or "bottleneck" (R50+)
    blocks_per_stage: tuple
    stem_out_channels: int
    res2_out_channels: int

    def config_hint(self) -> str:
        return (f"MODEL.RESNETS.DEPTH {self.depth} MODEL.RESNETS.RES2_OUT_CHANNELS {self.res2_out_channels} "
                f"MODEL.RESNETS.STEM_OUT_CHANNELS {self.stem_out_channels}")


def depth_of(block: str, blocks_per_stage: Iterable[int]) -> int | None:
    """The standard depth with this structure, or None."""
    return _BY_STRUCTURE.get((block, tuple(blocks_per_stage)))


def stage_block_counts(keys: Iterable[str]) -> tuple:
    """Blocks in layer1..layer4 of a torchvision-named state dict (0 for a missing stage)."""
    counts = [0, 0, 0, 0]
    for k in keys:
        m = _STAGE_KEY.match(k)
        if m:
            stage = int(m.group(1)) - 1
            counts[stage] = max(counts[stage], int(m.group(2)) + 1)
    return tuple(counts)


def block_type(keys: Iterable[str]) -> str:
    return "bottleneck" if any(k.endswith("conv3.weight") for k in keys) else "basic"


def torchvision_depth(state: Mapping) -> int | None:
    """Depth of the torchvision-named ResNet in `state`, or None when it is not a standard one."""
    return depth_of(block_type(state), stage_block_counts(state))
