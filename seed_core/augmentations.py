"""Augmentation recipes for distillation, by name, and the recipe that follows the teacher.

The official SEED code augments with the recipe of the teacher's own training: MoCo-v2's for MoCo
teachers, SwAV's (a wider crop range, plus small patches) for SwAV teachers, SimCLR's for SimCLR
teachers. `DATA.AUGMENTATION auto` does the same; a name overrides it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .constants import IMAGENET_MEAN, IMAGENET_STD

# The teacher format -> the recipe its checkpoint was trained with. Formats that say nothing about
# their training (torchvision, timm, our own checkpoints) get MoCo-v2's, SEED's default.
TEACHER_RECIPES = {"moco": "mocov2", "swav": "swav", "simclr": "simclr"}
DEFAULT_RECIPE = "mocov2"


@dataclass(frozen=True)
class Recipe:
    """One augmentation recipe; `crop_scale` is the main view's RandomResizedCrop area range."""
    crop_scale: tuple[float, float]
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip: bool = True
    affine: bool = False          # small rotations, shifts and shears (glyphs)
    aspect: tuple[float, float] = (3 / 4, 4 / 3)


RECIPES = {
    # MoCo-v2 (and SEED's main recipe).
    "mocov2": Recipe(crop_scale=(0.2, 1.0)),
    # SwAV's main view as SEED uses it: MoCo-v2's photometric part, crops down to 14 % (the small
    # patches, DATA.SMALL_PATCHES, take the range below that).
    "swav": Recipe(crop_scale=(0.14, 1.0)),
    # SimCLR as the official SEED code applies it: jitter of strength 0.4 always on, no blur.
    "simclr": Recipe(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, blur_p=0.0),
    # Characters and digits, where a mirror image or a small fragment is another symbol: gentle
    # crops, small rotations/shears, contrast and blur; no flip, no colour.
    "glyphs": Recipe(crop_scale=(0.5, 1.0), jitter=(0.4, 0.4, 0.0, 0.0), grayscale_p=0.0,
                     blur_sigma=(0.1, 1.0), flip=False, affine=True, aspect=(0.8, 1.25)),
}
CHOICES = ("auto", *RECIPES, "none")
# fast: the photo recipes through seed_core.photo_transform (reduced JPEG decoding, same
# distribution); torchvision: the official code's transforms. Recipes with an affine step (glyphs)
# and "none" always use torchvision's.
PIPELINES = ("fast", "torchvision")


def resolve_recipe(name: str, teacher_format: str | None) -> str:
    """The recipe a run uses: `auto` follows the teacher's format (no teacher: MoCo-v2's)."""
    if name != "auto":
        return name
    return TEACHER_RECIPES.get(teacher_format or "", DEFAULT_RECIPE)


class PILGaussianBlur:
    """Gaussian blur with sigma drawn from `sigma`, by PIL as in MoCo-v2's code: torchvision's tensor
    blur, several times slower in a data-loader worker, alone capped a worker below what one core
    trains on at small image sizes (docs/RESULTS.md#augmentation-benchmarksaugmentation_speedpy)."""

    def __init__(self, sigma: tuple[float, float]):
        self.sigma = sigma

    def __call__(self, img):
        import torch  # torch's generator, like torchvision's transforms: seeded per data-loader worker
        from PIL import ImageFilter
        sigma = float(torch.empty(1).uniform_(*self.sigma))
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))

    def __repr__(self) -> str:
        return f"PILGaussianBlur(sigma={self.sigma})"


def build_transform(name: str, size: int, crop_scale: tuple[float, float] | None = None, pipeline: str = "fast"):
    """The transform of recipe `name` at `size` px; `crop_scale` replaces the recipe's crop range
    (small patches). "none" resizes and centre-crops only. `pipeline`: see PIPELINES."""
    from torchvision import transforms as T  # here, so that config validation stays light
    if name == "none":
        return T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    if name not in RECIPES:
        raise ValueError(f"unknown augmentation {name!r}: choose from {', '.join(CHOICES)}")
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown input pipeline {pipeline!r}: choose from {', '.join(PIPELINES)}")
    r = RECIPES[name]
    if pipeline == "fast" and not r.affine:
        from .photo_transform import PhotoTransform
        return PhotoTransform(r, size, crop_scale)
    steps = [T.RandomResizedCrop(size, scale=tuple(crop_scale or r.crop_scale), ratio=r.aspect)]
    if r.affine:
        steps.append(T.RandomApply([T.RandomAffine(degrees=15, translate=(0.1, 0.1), shear=10)], p=0.8))
    steps.append(T.RandomApply([T.ColorJitter(*r.jitter)], p=r.jitter_p))
    if r.grayscale_p:
        steps.append(T.RandomGrayscale(p=r.grayscale_p))
    if r.blur_p:
        steps.append(T.RandomApply([PILGaussianBlur(r.blur_sigma)], p=r.blur_p))
    if r.flip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)
