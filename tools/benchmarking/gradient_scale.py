"""How far one optimiser step moves each stage of a network at initialisation.

For a MoCo-style contrastive loss (InfoNCE between two augmented views of the same digit crops,
the other images of the batch as negatives) on a freshly initialised student, each stage's ratio
|gradient| / |weights| (over its convolution and Linear weights) times the learning rate is the
fraction of its weights one SGD step changes. Deep BatchNorm ResNets back-propagate gradients
that grow toward the input, so a learning rate that suits the last stage can rewrite the first
ones at every step; LARS instead moves every stage by lr x eta of its norm (seed_core/optim.py).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from seed_core.augmentations import build_transform
from seed_core.encoders import build_student

STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4", "head")


def digit_crops(n: int, size: int = 32):
    """`n` of scikit-learn's handwritten digits as `size` px RGB images, ink bright on black
    (the digit scenes' clean crops)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits().images[:n]
    return [Image.fromarray(np.uint8(d / 16 * 255)).resize((size, size), Image.BILINEAR).convert("RGB")
            for d in digits]


def stage_ratios(arch: str, head_batch_norm: bool, images, seed: int, temperature: float = 0.2) -> dict:
    """{stage: |grad| / |weights|} of a fresh `arch` student (seeded) for one contrastive loss."""
    torch.manual_seed(seed)
    transform = build_transform("glyphs", images[0].size[0])
    v1 = torch.stack([transform(im) for im in images])
    v2 = torch.stack([transform(im) for im in images])
    net = build_student(arch, 128, head_batch_norm=head_batch_norm)
    q, k = F.normalize(net(v1), dim=1), F.normalize(net(v2), dim=1)
    F.cross_entropy(q @ k.t() / temperature, torch.arange(len(q))).backward()
    ratios = {}
    for stage in STAGES:
        module = net.head if stage == "head" else getattr(net.backbone, stage)
        weights = [p for p in module.parameters() if p.dim() > 1]
        g = torch.sqrt(sum(p.grad.pow(2).sum() for p in weights))
        w = torch.sqrt(sum(p.detach().pow(2).sum() for p in weights))
        ratios[stage] = float(g / w)
    return ratios


def measure(archs, images, seeds, head_batch_norm: bool = False) -> list[dict]:
    """One row per arch: each stage's ratio, mean and std over `seeds` (fresh networks and views)."""
    rows = []
    for arch in archs:
        per_seed = [stage_ratios(arch, head_batch_norm, images, s) for s in seeds]
        rows.append({"arch": arch, "head_batch_norm": head_batch_norm, "seeds": list(seeds),
                     "ratio_mean": {st: float(np.mean([r[st] for r in per_seed])) for st in STAGES},
                     "ratio_std": {st: float(np.std([r[st] for r in per_seed], ddof=1)) if len(seeds) > 1 else 0.0
                                   for st in STAGES}})
    return rows


def table(rows: list[dict], lr: float) -> str:
    """Markdown: the fraction of each stage's weights one SGD step at `lr` changes."""
    lines = ["| network | head | " + " | ".join(STAGES) + " |", "|---|---|" + "---:|" * len(STAGES)]
    for r in rows:
        cells = [f"{lr * r['ratio_mean'][st]:.1e}" for st in STAGES]
        lines.append(f"| {r['arch']} | {'BN' if r['head_batch_norm'] else 'plain'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
