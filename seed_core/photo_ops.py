"""torchvision's PIL photometric functions, on one HxWxC float32 array of 8-bit levels [0, 255],
in place where they can be, with OpenCV's vectorised kernels instead of several PIL passes.

Each reproduces the PIL function up to float rounding, including PIL's own 8-bit steps:
`Image.blend` (brightness, contrast, saturation) truncates its result to a whole level and clips it
to [0, 255]; `adjust_contrast` blends with the mean grey level rounded to a whole level;
`adjust_hue` goes through 8-bit HSV (hue and saturation truncated to 1/255, the hue shifted by a
whole 1/255 turn) and rounds the RGB it returns; grey levels are rounded.
"""
from __future__ import annotations

import numpy as np

from .opencv import cv2 as _cv2

# ITU-R 601-2 luma, as PIL's convert("L") (and OpenCV's RGB2GRAY) weighs R, G, B.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
BLUR_TRUNCATE = 2.5    # kernel radius in sigmas: PIL's three box blurs reach about 2.3


def _blend_levels(x: np.ndarray) -> np.ndarray:
    """PIL's Image.blend result: clipped to [0, 255], truncated to a whole level."""
    np.clip(x, 0.0, 255.0, out=x)
    return np.floor(x, out=x)


def _affine(x: np.ndarray, matrix: np.ndarray, offset: float) -> np.ndarray:
    """x @ matrix.T + offset per pixel, in one pass."""
    m = np.empty((3, 4), np.float32)
    m[:, :3], m[:, 3] = matrix, offset
    return _cv2().transform(x, m)


def adjust_brightness(x: np.ndarray, factor: float) -> np.ndarray:
    """torchvision's PIL adjust_brightness: a blend with black."""
    return _blend_levels(np.multiply(x, np.float32(factor), out=x))


def adjust_contrast(x: np.ndarray, factor: float) -> np.ndarray:
    """torchvision's PIL adjust_contrast: a blend with the image's mean grey level, rounded."""
    mean = int(float(np.dot(LUMA, _cv2().mean(x)[:3])) + 0.5)
    return _blend_levels(_affine(x, factor * np.eye(3, dtype=np.float32), (1.0 - factor) * mean))


def adjust_saturation(x: np.ndarray, factor: float) -> np.ndarray:
    """torchvision's PIL adjust_saturation: a blend with the image's own grey version (rounded)."""
    cv2 = _cv2()
    grey = cv2.cvtColor(to_grey(x), cv2.COLOR_GRAY2RGB)  # three channels: no slow broadcasting
    np.subtract(x, grey, out=x)  # grey + factor * (x - grey): PIL's arithmetic, to its float rounding
    np.multiply(x, np.float32(factor), out=x)
    return _blend_levels(np.add(x, grey, out=x))


def hue_shift_levels(hue_factor: float) -> int:
    """PIL's 8-bit hue shift of torchvision's adjust_hue: int(hue_factor * 255) wrapped to a byte."""
    return int(np.int32(hue_factor * 255).astype(np.uint8))


def adjust_hue(x: np.ndarray, hue_factor: float) -> np.ndarray:
    """torchvision's PIL adjust_hue: shift PIL's 8-bit hue (a turn = 255 levels, truncated) by
    int(hue_factor * 255), wrapping as a byte does; RGB rounded to whole levels."""
    cv2 = _cv2()
    hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)          # hue in degrees [0, 360)
    hue = hsv[..., 0]
    # PIL's byte: the hue truncated to levels (a turn = 255), shifted, wrapping at 256
    levels = np.multiply(hue, np.float32(255 / 360)).astype(np.uint8)
    levels += np.uint8(hue_shift_levels(hue_factor))
    np.multiply(levels, np.float32(360 / 255), out=hue)  # level 255 is 360 degrees, as in PIL
    saturation = hsv[..., 1]                           # PIL's levels too, truncated
    np.multiply(saturation, np.float32(255), out=saturation)
    np.floor(saturation, out=saturation)
    np.multiply(saturation, np.float32(1 / 255), out=saturation)
    return np.rint(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), out=x)


def to_grey(x: np.ndarray) -> np.ndarray:
    """PIL's convert("L"): HxWx3 -> HxW grey levels (rounded; uint8 stays uint8)."""
    cv2 = _cv2()
    grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)
    return grey if grey.dtype == np.uint8 else np.rint(grey, out=grey)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """HxW(xC) uint8 or float32 -> float32, blurred along both image axes with a Gaussian of `sigma`
    px truncated at BLUR_TRUNCATE sigmas, edges repeated (as PIL's blur and scipy's 'nearest')."""
    cv2 = _cv2()
    radius = int(BLUR_TRUNCATE * sigma + 0.5)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    return cv2.sepFilter2D(x, cv2.CV_32F, kernel, kernel, borderType=cv2.BORDER_REPLICATE)
