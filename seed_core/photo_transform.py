"""The photo recipes (MoCo-v2, SwAV, SimCLR) made fast, with the official augmentation distribution.

The official recipe decodes the whole JPEG, crops, resizes, then runs torchvision's PIL transforms
and ToTensor/Normalize. Here, for the same random draws in the same order (one view with the same
torch seed gets the same crop box, jitter factors and order, grayscale, blur sigma and flip):

- the crop box is drawn from the header's size before decoding, so a JPEG whose crop is downscaled
  anyway is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling, PIL's `draft`), the
  largest reduction that keeps the crop >= the output size;
- the crop is resized in one step (torch's 8-bit antialiased bilinear resampling, PIL's filter,
  or PIL's resize of the fractional box of a reduced decoding);
- hue is shifted with a few 8-bit LUT and multiply passes instead of PIL's HSV -> RGB conversion;
- a grayscale view stays one channel until the end (blur and flip work on a third of the data);
- the blur is a true Gaussian (scipy, written straight into float32) fused with the normalisation.

Brightness, contrast and saturation are torchvision's own PIL functions. `tests/seed_core/
test_photo_transform.py` compares crop scale, aspect ratio and colour statistics with the official
transform over many samples.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageChops

from .augmentations import Recipe
from .constants import IMAGENET_MEAN, IMAGENET_STD

_REDUCTIONS = (8, 4, 2)        # the scales libjpeg decodes at besides 1
_BLUR_TRUNCATE = 2.5           # kernel radius in sigmas: PIL's three box blurs reach about 2.3


class Crop(NamedTuple):
    """A crop box in the coordinates of the full-size upright image."""
    top: int
    left: int
    height: int
    width: int
    image_width: int
    image_height: int


def _hue_luts(shift: int) -> list[list[int]]:
    """For PIL's 8-bit hue H (a turn = 255) shifted by `shift`: per RGB channel, 255 x how far the
    channel lies below the value V (RGB = V - V*S/255 * that/255; the HSV -> RGB formula)."""
    h6 = ((np.arange(256) + shift) % 256) * 6.0 / 255.0
    luts = []
    for offset in (5.0, 3.0, 1.0):  # R, G, B
        k = (h6 + offset) % 6.0
        luts.append(np.rint(255 * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)).astype(np.uint8).tolist())
    return luts


_HUE_LUTS: dict[int, list[list[int]]] = {}


def shift_hue(img: Image.Image, hue_factor: float) -> Image.Image:
    """torchvision's PIL `adjust_hue` (shift PIL's 8-bit hue by int(hue_factor*255), wrapping),
    computed without PIL's slow HSV -> RGB conversion; equal up to 8-bit rounding."""
    shift = int(np.int32(hue_factor * 255).astype(np.uint8))
    luts = _HUE_LUTS.get(shift)
    if luts is None:
        luts = _HUE_LUTS.setdefault(shift, _hue_luts(shift))
    h, s, v = img.convert("HSV").split()
    spread = ImageChops.multiply(v, s)  # V*S/255 = max - min
    return Image.merge("RGB", [ImageChops.subtract(v, ImageChops.multiply(spread, h.point(lut))) for lut in luts])


class PhotoTransform:
    """One augmented view of recipe `recipe` at `size` px, in two steps so that the decoder can
    reduce: `plan(width, height)` draws the crop box; `render(img, crop)` draws the rest and returns
    the normalised CHW float tensor. Called on a decoded image it does both (as the official one)."""

    def __init__(self, recipe: Recipe, size: int, crop_scale: tuple[float, float] | None = None):
        if recipe.affine:
            raise ValueError("PhotoTransform implements the photo recipes; affine (glyph) recipes use "
                             "seed_core.augmentations.build_transform")
        self.recipe, self.size = recipe, size
        self.scale = tuple(crop_scale or recipe.crop_scale)
        # ColorJitter's ranges; a strength of 0 draws nothing, as in ColorJitter
        b, c, s, h = recipe.jitter
        self.jitter = [(max(0.0, 1 - v), 1 + v) if v else None for v in (b, c, s)] + [(-h, h) if h else None]
        self.inv_std = 1 / (torch.tensor(IMAGENET_STD) * 255)
        self.shift = -torch.tensor(IMAGENET_MEAN) * 255 * self.inv_std   # (x - mean) / std = x * inv_std + shift

    def __repr__(self) -> str:
        return f"PhotoTransform(size={self.size}, scale={self.scale}, recipe={self.recipe})"

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.render(img, self.plan(*img.size))

    # ------------------------------------------------------------------ geometry
    def plan(self, width: int, height: int) -> Crop:
        """The crop box, drawn as torchvision's RandomResizedCrop draws it (same draws, same order)."""
        from torchvision import transforms as T
        # get_params reads only the size: a zero-stride stand-in of shape (height, width).
        top, left, h, w = T.RandomResizedCrop.get_params(torch.empty(()).expand(height, width),
                                                         list(self.scale), list(self.recipe.aspect))
        return Crop(top, left, h, w, width, height)

    def reduction(self, crop: Crop) -> int:
        """The largest JPEG decoding reduction (8, 4, 2 or 1) that keeps the crop >= the output size."""
        return next((k for k in _REDUCTIONS if min(crop.height, crop.width) >= k * self.size), 1)

    def _crop_resize(self, img: Image.Image, crop: Crop) -> Image.Image:
        """The crop, resized to the output size with PIL's antialiased bilinear filter."""
        # A pixel of an image decoded at 1/k covers k x k full-size pixels (the last row and column
        # fewer): the box scales by exactly 1/k, to fractions of a pixel, which PIL's resize takes.
        k = max(1, round(crop.image_width / img.width))
        if k > 1:
            box = (crop.left / k, crop.top / k, (crop.left + crop.width) / k, (crop.top + crop.height) / k)
            return img.resize((self.size, self.size), Image.BILINEAR, box=box)
        # Whole pixels: torch's 8-bit antialiased bilinear resampling, the same filter several times
        # faster on one core.
        import torch.nn.functional as F
        with warnings.catch_warnings():  # a read-only view of PIL's pixels; torch only reads it
            warnings.simplefilter("ignore", UserWarning)
            pixels = torch.from_numpy(np.asarray(img)[crop.top:crop.top + crop.height,
                                                      crop.left:crop.left + crop.width])
        out = F.interpolate(pixels.permute(2, 0, 1)[None], size=(self.size, self.size), mode="bilinear",
                            antialias=True, align_corners=False)[0]
        planes = [Image.frombuffer("L", (self.size, self.size), plane.numpy(), "raw", "L", 0, 1) for plane in out]
        return Image.merge("RGB", planes)

    # ------------------------------------------------------------------ the rest
    def render(self, img: Image.Image, crop: Crop) -> torch.Tensor:
        """`img` is the upright image `crop` was drawn for, at full size or reduced by the decoder."""
        import torchvision.transforms.functional as F
        img = self._crop_resize(img, crop)
        r = self.recipe
        if r.jitter_p and float(torch.rand(1)) < r.jitter_p:      # RandomApply([ColorJitter], p)
            order = torch.randperm(4).tolist()
            factors = [None if rng is None else float(torch.empty(1).uniform_(*rng)) for rng in self.jitter]
            for i in order:
                if factors[i] is None:
                    continue
                if i == 0:
                    img = F.adjust_brightness(img, factors[0])
                elif i == 1:
                    img = F.adjust_contrast(img, factors[1])
                elif i == 2:
                    img = F.adjust_saturation(img, factors[2])
                else:
                    img = shift_hue(img, factors[3])
        if r.grayscale_p and float(torch.rand(1)) < r.grayscale_p:  # RandomGrayscale: one channel kept
            img = img.convert("L")
        sigma = None
        if r.blur_p and float(torch.rand(1)) < r.blur_p:
            sigma = float(torch.empty(1).uniform_(*r.blur_sigma))
        if r.flip and float(torch.rand(1)) < 0.5:
            # Flipped before the blur, on 8 bits: a symmetric kernel with repeated edges commutes with it.
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = np.asarray(img)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if sigma is not None:
            pixels = torch.from_numpy(_gaussian_blur(pixels, sigma))
        else:
            with warnings.catch_warnings():  # read-only view, only read
                warnings.simplefilter("ignore", UserWarning)
                pixels = torch.from_numpy(pixels).float()
        # HWC -> normalised CHW in one fused op; a grey view broadcasts to the three channels here.
        return torch.addcmul(self.shift, pixels, self.inv_std).permute(2, 0, 1)


def _gaussian_blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    """HxWxC uint8 -> float32, blurred along both image axes with a Gaussian of `sigma` px (edges
    repeated, as PIL's blur does)."""
    from scipy.ndimage import gaussian_filter
    return gaussian_filter(pixels, (sigma, sigma, 0), output=np.float32, mode="nearest", truncate=_BLUR_TRUNCATE)
