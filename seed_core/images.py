"""The one image decoder: every file the suite reads (distillation, feature evaluation, both
detection engines) becomes 8-bit RGB here, EXIF orientation applied as Detectron2 applies it.

PIL's own `convert("RGB")` saturates 16-bit images to white and turns float images black; here
16-bit integers are scaled by 255/65535, floats in [0, 1] by 255 (floats already in [0, 255] are
kept), and a mode or value range that has no meaning as a picture is refused by name.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from .errors import DatasetError

# Modes PIL converts to RGB faithfully (8 bits per channel, or fewer).
_EIGHT_BIT = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "La", "CMYK", "YCbCr")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _to_uint8(values: np.ndarray, mode: str, path: str, sixteen_bit: bool) -> np.ndarray:
    """Integer or float pixels -> uint8 with the scaling their range implies."""
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            raise DatasetError(f"image {path} (mode {mode}) holds NaN or infinite pixels; it cannot be decoded")
        lo, hi = float(values.min()), float(values.max())
        if lo >= 0.0 and hi <= 1.0:
            values = values * 255.0
        elif lo < 0.0 or hi > 255.0:
            raise DatasetError(f"image {path} is a float image (mode {mode}) with values in [{lo:g}, {hi:g}]; "
                               "only [0, 1] or [0, 255] can be read as a picture: rescale it")
        return np.rint(values).astype(np.uint8)
    lo, hi = int(values.min()), int(values.max())
    if sixteen_bit or (lo >= 0 and hi <= 65535):
        if lo < 0 or hi > 65535:
            raise DatasetError(f"image {path} (mode {mode}) has values in [{lo}, {hi}], outside 16 bits")
        return np.rint(values.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    raise DatasetError(f"image {path} is a 32-bit integer image (mode {mode}) with values in [{lo}, {hi}]; "
                       "only 0..65535 can be read as a picture: rescale it")


def to_rgb(img: Image.Image, path: str = "image") -> Image.Image:
    """An opened PIL image -> 8-bit RGB, upright (EXIF orientation applied)."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in _EIGHT_BIT:
        return img.convert("RGB")
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        # A 16-bit PNG opens as "I" in some Pillow versions: PNG "I" is 16-bit by the format.
        sixteen = mode in _SIXTEEN_BIT or (mode == "I" and img.format == "PNG")
        grey = _to_uint8(np.asarray(img), mode, path, sixteen)
        return Image.fromarray(grey, mode="L").convert("RGB")
    raise DatasetError(f"image {path} has PIL mode {mode}, which this suite does not decode (supported: "
                       f"{', '.join(_EIGHT_BIT + _SIXTEEN_BIT)}, I, F); convert it to RGB")


def open_rgb(path: str) -> Image.Image:
    """Read an image file as an upright 8-bit RGB PIL image (see `to_rgb`)."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img, path)


def read_rgb(path: str, channel_order: str = "RGB") -> np.ndarray:
    """An image file as an HxWx3 uint8 array in RGB or BGR order (Detectron2's INPUT.FORMAT)."""
    if channel_order not in ("RGB", "BGR"):
        raise DatasetError(f"channel order must be RGB or BGR, not '{channel_order}'")
    arr = np.asarray(open_rgb(path))
    return arr[:, :, ::-1] if channel_order == "BGR" else arr


def upright_size(path: str) -> tuple[int, int]:
    """(width, height) the decoded image will have, from the header only (EXIF rotation counted)."""
    with Image.open(path) as img:
        width, height = img.size
        orientation = img.getexif().get(0x0112, 1)  # EXIF Orientation; 5..8 swap the axes
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
