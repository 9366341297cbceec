"""The one image decoder: every file the suite reads (distillation, feature evaluation, both
detection engines) becomes 8-bit RGB here, EXIF orientation applied as Detectron2 applies it.

PIL's own `convert("RGB")` saturates 16-bit images to white and turns float images black; here
16-bit integers are scaled by 255/65535, floats in [0, 1] by 255 (floats already in [0, 255] are
kept), and a mode or value range that has no meaning as a picture is refused by name.

It also holds the one policy for files that cannot be decoded (missing, empty, not an image,
truncated or damaged, or larger than MAX_IMAGE_PIXELS, a possible decompression bomb), whatever the
format: each becomes an `UnreadableImageError` naming the file. Training skips and counts them
(`skip_unreadable`, or `read_headers` then `limit_skipped` where the scan and the skipping are apart;
`SkippedImages` for those whose decoding fails later, each counted once; an error above a set
fraction); evaluation refuses them before any work (`refuse_unreadable`), since a skipped test
image changes the metric.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from typing import Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DatasetError, SeedError, TooManyBadImagesError
from .opencv import cv2 as _cv2

logger = logging.getLogger(__name__)

# PIL warns above this many pixels and fails above twice as many; here it is one explicit limit,
# refused from the header before any pixel is decoded (~0.27 GB as 8-bit RGB, e.g. 9459 x 9459).
MAX_IMAGE_PIXELS = 89_478_485


class UnreadableImageError(DatasetError):
    """An image file that cannot be decoded: missing, empty, not an image, truncated or damaged, too large."""


def _unreadable(path: str, reason: str) -> UnreadableImageError:
    return UnreadableImageError(f"image {path} cannot be read: {reason}")


@contextlib.contextmanager
def _opened(path: str) -> Iterator[Image.Image]:
    """Image.open under the suite's limits; whatever PIL raises for a bad file, while opening or while
    decoding inside the `with` block, becomes one UnreadableImageError naming the file."""
    try:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise _unreadable(path, "the file is empty (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise _too_large(path, f"{width}x{height} = {width * height}")
                yield img
    except SeedError:
        raise
    except FileNotFoundError:
        raise _unreadable(path, "it does not exist (or is a broken link)") from None
    except PermissionError:
        raise _unreadable(path, "permission denied") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # PIL's own check, in open
        pixels = re.search(r"\((\d+) pixels\)", str(e))  # "Image size (N pixels) exceeds limit ..."
        raise _too_large(path, pixels.group(1) if pixels else "") from None
    except UnidentifiedImageError:
        raise _unreadable(path, "it is not an image PIL can open (another kind of file, or a damaged "
                                "header)") from None
    except Exception as e:  # noqa: BLE001 - PIL's plugins raise many kinds (OSError, SyntaxError, EOFError, ...)
        raise _unreadable(path, f"it is truncated or damaged ({type(e).__name__}: {e})") from None


def _too_large(path: str, size: str) -> UnreadableImageError:
    return _unreadable(path, f"it has {size or 'more'} pixels, more than the limit of {MAX_IMAGE_PIXELS} "
                             "(a possible decompression bomb): downscale it")

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
    if img.getexif().get(0x0112, 1) != 1:  # EXIF Orientation: rotate or mirror upright
        img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode == "RGB":
        return img  # already upright 8-bit RGB: no copy
    if mode in _EIGHT_BIT:
        return img.convert("RGB")
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        # A 16-bit PNG opens as "I" in some Pillow versions: PNG "I" is 16-bit by the format.
        sixteen = mode in _SIXTEEN_BIT or (mode == "I" and img.format == "PNG")
        grey = _to_uint8(np.asarray(img), mode, path, sixteen)
        return Image.fromarray(grey, mode="L").convert("RGB")
    raise DatasetError(f"image {path} has PIL mode {mode}, which this suite does not decode (supported: "
                       f"{', '.join(_EIGHT_BIT + _SIXTEEN_BIT)}, I, F); convert it to RGB")


def open_rgb(path: str, reduction=None) -> Image.Image:
    """Read an image file as an upright 8-bit RGB PIL image (see `to_rgb`); UnreadableImageError
    for a file that cannot be decoded.

    `reduction(width, height) -> k`, called with the upright size from the header, lets a JPEG be
    decoded at 1/k of its size (k = 1, 2, 4 or 8: libjpeg's DCT scaling), much faster when the
    pixels are downscaled afterwards anyway; other formats decode at full size. The caller finds
    the scale from the returned image's size."""
    with _opened(path) as img:
        _draft(img, _reduction(img, reduction))
        img.load()
        return to_rgb(img, path)


def decode_rgb(path: str, reduction=None) -> np.ndarray:
    """`open_rgb` as an HxWx3 uint8 array (the same pixels, the same errors). A plain JPEG (colour,
    upright, ending where a JPEG ends) is decoded by OpenCV's libjpeg-turbo straight into the array:
    the same decoder and settings as PIL's, without PIL's two copies of the pixels."""
    with _opened(path) as img:
        k = _reduction(img, reduction)
        if img.format == "JPEG" and img.mode == "RGB" and img.getexif().get(0x0112, 1) == 1:
            img.fp.seek(0)
            pixels = _decode_jpeg(img.fp.read(), k)
            if pixels is not None:
                return pixels
        _draft(img, k)  # anything else (or what OpenCV refused): PIL, which names the fault
        img.load()
        return np.asarray(to_rgb(img, path))


def _reduction(img: Image.Image, reduction) -> int:
    return 1 if reduction is None else reduction(*_upright(img))


def _draft(img: Image.Image, k: int) -> None:
    if k > 1:
        img.draft("RGB", (img.width // k, img.height // k))


def _decode_jpeg(data: bytes, k: int) -> np.ndarray | None:
    """JPEG bytes -> HxWx3 uint8 RGB at 1/k scale, or None when OpenCV cannot decode them or they
    do not end with the end-of-image marker (truncated, or trailing bytes: PIL decides)."""
    cv2 = _cv2()
    if not data.endswith(b"\xff\xd9"):
        return None
    scale = {1: 0, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
             8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[k]  # the scale bits only; colour comes from the flags below
    return cv2.imdecode(np.frombuffer(data, np.uint8), scale | cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)


def read_rgb(path: str, channel_order: str = "RGB") -> np.ndarray:
    """An image file as an HxWx3 uint8 array in RGB or BGR order (Detectron2's INPUT.FORMAT)."""
    if channel_order not in ("RGB", "BGR"):
        raise DatasetError(f"channel order must be RGB or BGR, not '{channel_order}'")
    arr = decode_rgb(path)
    return arr[:, :, ::-1] if channel_order == "BGR" else arr


def upright_size(path: str) -> tuple[int, int]:
    """(width, height) the decoded image will have, from the header only (EXIF rotation counted);
    UnreadableImageError for a file that is missing, empty, not an image or too large."""
    with _opened(path) as img:
        return _upright(img)


def _upright(img: Image.Image) -> tuple[int, int]:
    width, height = img.size
    orientation = img.getexif().get(0x0112, 1)  # EXIF Orientation; 5..8 swap the axes
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def verify_image(path: str) -> None:
    """Decode the whole file as `open_rgb` would, or raise its UnreadableImageError. A JPEG is decoded
    at 1/8 scale: every byte is still read (truncation is found) at a fraction of the cost."""
    with _opened(path) as img:
        if img.format == "JPEG":
            img.draft(None, (1, 1))
        img.load()
        to_rgb(img, path)


def _reason(path: str) -> str:
    try:
        verify_image(path)
    except DatasetError as e:  # unreadable, or a mode or value range the decoder refuses
        return str(e)
    return ""


def _reasons(paths: list[str]) -> list[str]:  # a DataLoader's collate_fn: runs in its workers
    return [_reason(p) for p in paths]


def unreadable_images(paths: Sequence[str], num_workers: int = 0) -> list[str]:
    """The errors of the files in `paths` that cannot be decoded (each decoded whole), in order;
    `num_workers` > 0 decodes in up to that many processes (for a few hundred images starting
    them costs more than it saves)."""
    num_workers = min(num_workers, os.cpu_count() or 1) if len(paths) >= 256 else 0
    if num_workers > 0:
        from torch.utils.data import DataLoader

        loader = DataLoader(list(paths), batch_size=32, num_workers=num_workers, collate_fn=_reasons)
        reasons = [r for batch in loader for r in batch]
    else:
        reasons = [_reason(p) for p in paths]
    return [r for r in reasons if r]


def refuse_unreadable(paths: Sequence[str], what: str, num_workers: int = 0) -> None:
    """Evaluation's policy: every image decodes, or one error naming the first bad file, before any
    work (a skipped test image would change the metric)."""
    bad = unreadable_images(paths, num_workers)
    if bad:
        raise UnreadableImageError(f"{what}: {len(bad)} of {len(paths)} images cannot be read, and evaluation "
                                   f"skips none (that would change the metric): {bad[0]}"
                                   f"{f' (+{len(bad) - 1} more)' if len(bad) > 1 else ''}; replace or "
                                   "remove the file(s) before evaluating")


def _too_many(count: int, total: int, max_fraction: float, what: str, key: str, example: str):
    return TooManyBadImagesError(f"{what}: {count} of {total} images cannot be read, more than {key} = "
                                 f"{max_fraction}; for example {example}. Fix or remove them, or raise {key}")


def read_headers(paths: Sequence[str]) -> tuple[dict[int, tuple[int, int]], dict[int, str]]:
    """Training's scan, from the headers only (cheap enough for a whole training set): {index: upright
    (width, height)} of the files that open, {index: its error} of the others."""
    sizes, bad = {}, {}
    for i, path in enumerate(paths):
        try:
            sizes[i] = upright_size(path)
        except UnreadableImageError as e:
            bad[i] = str(e)
    return sizes, bad


def limit_skipped(errors: Sequence[str], total: int, max_fraction: float, what: str, key: str,
                  report: bool = True) -> None:
    """Training's limit on the unreadable files `errors` (their errors) of `total`: more than
    `max_fraction` is a TooManyBadImagesError naming one and `key`; otherwise, with `report`, one
    warning counts them (say it once: where the files are left out)."""
    if len(errors) > max_fraction * total:
        raise _too_many(len(errors), total, max_fraction, what, key, errors[0])
    if errors and report:
        logger.warning("%s: skipping %d of %d images that cannot be read (%s = %g), e.g. %s", what, len(errors),
                       total, key, max_fraction, errors[0])


def skip_unreadable(paths: Sequence[str], max_fraction: float, what: str, key: str) -> dict[int, tuple[int, int]]:
    """Training's policy, from the headers: {index: upright (width, height)} of the files that open;
    the others are skipped and counted in one warning, and more than `max_fraction` of them is a
    TooManyBadImagesError naming one and `key`."""
    sizes, bad = read_headers(paths)
    limit_skipped(list(bad.values()), len(paths), max_fraction, what, key)
    return sizes


class SkippedImages:
    """Training images whose decoding failed although their header read (truncated or damaged data,
    a mode the decoder refuses), each counted once however often the sampler meets it again (an
    infinite sampler passes over the data many times): the first meeting of each is named in a
    warning; more than `max_fraction` of `total` distinct images is a TooManyBadImagesError.

    What one counter sees is what is checked: the torchvision engine's trainer keeps one for all
    processes, fed with the images each sample skipped (`add`); Detectron2's mapper keeps one per
    data-loading process (`skip`). `state_dict` keeps the images in a checkpoint."""

    def __init__(self, total: int, max_fraction: float, what: str, key: str, where: str = ""):
        self.total, self.max_fraction, self.what, self.key, self.where = total, max_fraction, what, key, where
        self.errors: dict = {}  # image (record index or file name) -> its error, in the order met

    def __len__(self) -> int:
        return len(self.errors)

    def __contains__(self, image) -> bool:
        return image in self.errors

    def skip(self, image, error: DatasetError) -> None:
        """`image` (a record index or file name) failed to decode with `error`."""
        self.add({image: str(error)})

    def add(self, errors: Mapping, report: bool = True) -> None:
        """Count the images of `errors` ({image: its error}) not met before; with `report`, warn once
        for each of them (only one process of several should)."""
        new = {image: error for image, error in errors.items() if image not in self.errors}
        self.errors.update(new)
        if len(self.errors) > self.max_fraction * self.total:
            first = next(iter(self.errors.values()))
            raise _too_many(len(self.errors), self.total, self.max_fraction, self.what, self.key, first)
        for error in new.values() if report else ():
            logger.warning("%s: %s; skipped, now and whenever it is drawn again (%d distinct image(s) so far%s)",
                           self.what, error, len(self.errors), self.where)

    def state_dict(self) -> dict:
        return {"errors": dict(self.errors)}

    def load_state_dict(self, state: Mapping) -> None:
        """A checkpoint's images; an empty `state` (a checkpoint from before they were kept) holds none."""
        self.errors = dict(state.get("errors", {}))
