"""The photo recipes (MoCo-v2, SwAV, SimCLR) made fast, with the official augmentation distribution.

The official recipe decodes the whole JPEG, crops, resizes, then runs torchvision's PIL transforms
and ToTensor/Normalize. Here, for the same random draws in the same order (one view with the same
torch seed gets the same crop box, jitter factors and order, grayscale, blur sigma and flip):

- the crop box is drawn from the header's size before decoding, so a JPEG whose crop is downscaled
  anyway is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling), the largest reduction
  that keeps the crop >= the output size; a plain JPEG is decoded straight into an array
  (seed_core.images.decode_rgb: PIL's pixels without PIL's copies);
- the crop is resized in one step (torch's 8-bit antialiased bilinear resampling, PIL's filter,
  or PIL's resize of the fractional box of a reduced decoding);
- all draws are made first, so the flip is done at once on the small 8-bit crop (every later step
  commutes with it);
- the colour jitter runs on one float32 array with OpenCV's vectorised kernels (seed_core.photo_ops:
  torchvision's PIL functions with PIL's own 8-bit truncation and rounding), instead of several
  PIL passes and PIL's slow HSV conversions;
- a grayscale view stays one channel until the end (the blur works on a third of the data);
- the blur is a true separable Gaussian (OpenCV, straight into float32) and the normalisation one
  OpenCV pass that also broadcasts a grey view to three channels.

`tests/seed_core/test_photo_transform.py` compares crop scale, aspect ratio and colour statistics
with the official transform over many samples, and view by view for the same seed.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from . import photo_ops
from .augmentations import Recipe
from .constants import IMAGENET_MEAN, IMAGENET_STD
from .opencv import cv2 as _cv2

_REDUCTIONS = (8, 4, 2)        # the scales libjpeg decodes at besides 1
# ColorJitter's four steps by its index: brightness, contrast, saturation, hue.
_JITTER_OPS = (photo_ops.adjust_brightness, photo_ops.adjust_contrast, photo_ops.adjust_saturation,
               photo_ops.adjust_hue)


class Crop(NamedTuple):
    """A crop box in the coordinates of the full-size upright image."""
    top: int
    left: int
    height: int
    width: int
    image_width: int
    image_height: int


def shift_hue(img: Image.Image, hue_factor: float) -> Image.Image:
    """torchvision's PIL `adjust_hue` on a PIL RGB image (see photo_ops.adjust_hue)."""
    pixels = photo_ops.adjust_hue(np.asarray(img, np.float32), hue_factor)
    return Image.fromarray(pixels.astype(np.uint8))


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
        # (x / 255 - mean) / std = x * scale + shift, per channel: OpenCV's transform matrices for
        # a colour and a grey view (the grey one broadcasts to the three channels)
        scale = 1 / (np.array(IMAGENET_STD) * 255)
        shift = -np.array(IMAGENET_MEAN) * 255 * scale
        self.normalise_rgb = np.concatenate([np.diag(scale), shift[:, None]], 1).astype(np.float32)
        self.normalise_grey = np.stack([scale, shift], 1).astype(np.float32)

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

    def _crop_resize(self, img: Image.Image | np.ndarray, crop: Crop) -> np.ndarray:
        """The crop, resized to the output size with PIL's antialiased bilinear filter: HxWx3 uint8."""
        pixels = np.asarray(img)  # a read-only view of PIL's pixels, or the decoder's array
        # A pixel of an image decoded at 1/k covers k x k full-size pixels (the last row and column
        # fewer): the box scales by exactly 1/k, to fractions of a pixel, which PIL's resize takes.
        k = max(1, round(crop.image_width / pixels.shape[1]))
        if k > 1:
            box = (crop.left / k, crop.top / k, (crop.left + crop.width) / k, (crop.top + crop.height) / k)
            img = img if isinstance(img, Image.Image) else Image.fromarray(pixels)
            return np.asarray(img.resize((self.size, self.size), Image.BILINEAR, box=box))
        # Whole pixels: torch's 8-bit antialiased bilinear resampling, the same filter several times
        # faster on one core, fastest on a contiguous channels-last crop (its output then is
        # channels-last too: HxWx3 without a copy).
        import torch.nn.functional as F
        with warnings.catch_warnings():  # torch only reads the pixels, which may be read-only
            warnings.simplefilter("ignore", UserWarning)
            pixels = torch.from_numpy(pixels[crop.top:crop.top + crop.height, crop.left:crop.left + crop.width])
        pixels = pixels.permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
        out = F.interpolate(pixels, size=(self.size, self.size), mode="bilinear", antialias=True,
                            align_corners=False)[0]
        return np.ascontiguousarray(out.permute(1, 2, 0).numpy())

    # ------------------------------------------------------------------ the rest
    def render(self, img: Image.Image | np.ndarray, crop: Crop) -> torch.Tensor:
        """`img` is the upright RGB image `crop` was drawn for (PIL, or HxWx3 uint8), at full size or
        reduced by the decoder."""
        cv2 = _cv2()
        pixels = self._crop_resize(img, crop)
        # The official transforms' draws, in their order: ColorJitter's (applied, order, factors),
        # RandomGrayscale's, the blur's, RandomHorizontalFlip's.
        r = self.recipe
        jitter = []
        if r.jitter_p and float(torch.rand(1)) < r.jitter_p:      # RandomApply([ColorJitter], p)
            order = torch.randperm(4).tolist()
            factors = [None if rng is None else float(torch.empty(1).uniform_(*rng)) for rng in self.jitter]
            jitter = [(i, factors[i]) for i in order if factors[i] is not None]
        grey = bool(r.grayscale_p) and float(torch.rand(1)) < r.grayscale_p
        sigma = None
        if r.blur_p and float(torch.rand(1)) < r.blur_p:
            sigma = float(torch.empty(1).uniform_(*r.blur_sigma))
        if r.flip and float(torch.rand(1)) < 0.5:
            # Flipped first, on 8 bits: every step after it is pointwise, a whole-image mean, or a
            # symmetric kernel with repeated edges, and so commutes with it.
            pixels = cv2.flip(pixels, 1)
        if jitter:
            pixels = pixels.astype(np.float32)
            for i, factor in jitter:
                pixels = _JITTER_OPS[i](pixels, factor)
        if grey:  # RandomGrayscale: one channel kept until the normalisation
            pixels = photo_ops.to_grey(pixels)
        if sigma is not None:
            pixels = photo_ops.gaussian_blur(pixels, sigma)
        elif pixels.dtype != np.float32:
            pixels = pixels.astype(np.float32)
        # HWC -> normalised, in one pass (a grey view broadcast to the three channels); CHW view.
        out = cv2.transform(pixels, self.normalise_grey if pixels.ndim == 2 else self.normalise_rgb)
        return torch.from_numpy(out).permute(2, 0, 1)
