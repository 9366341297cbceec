"""Full-size real photographs as JPEG files, for the input-pipeline benchmarks: scikit-image's
sample photographs (they ship inside the package: nothing is downloaded), cut to each requested
aspect ratio and scaled to ImageNet-like sizes."""
from __future__ import annotations

import os

import numpy as np

# ImageNet's training images are mostly 500 px on the long side (500x375, 500x333, portrait
# 375x500), with a tail of larger ones.
IMAGENET_LIKE_SIZES = ((500, 375), (375, 500), (500, 333), (640, 480), (800, 600), (1200, 900))
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def parse_sizes(text: list[str]) -> tuple[tuple[int, int], ...]:
    """["500x375", ...] -> ((500, 375), ...); ValueError naming the bad entry."""
    sizes = []
    for item in text:
        w, _, h = item.lower().partition("x")
        if not (w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
            raise ValueError(f"image size {item!r} is not WIDTHxHEIGHT, e.g. 500x375")
        sizes.append((int(w), int(h)))
    return tuple(sizes)


def sample_photos() -> list[np.ndarray]:
    """scikit-image's colour sample photographs (HxWx3 uint8), plus the stereo pair's left view."""
    try:
        from skimage import data
    except ImportError as e:
        raise ImportError("the photo benchmarks need scikit-image: pip install scikit-image") from e
    return [getattr(data, name)() for name in _PHOTOS] + [data.stereo_motorcycle()[0]]


def write_photo_jpegs(folder: str, sizes=IMAGENET_LIKE_SIZES, per_size: int | None = None,
                      quality: int = 90, seed: int = 0) -> list[str]:
    """Write every photo (or `per_size` of them) at every size as a JPEG under `folder`: a random
    window of the photo's aspect ratio cut to the size's, scaled (up or down) to it. Returns the paths."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = sample_photos()
    files = []
    for w, h in sizes:
        for i, arr in enumerate(photos[:per_size]):
            ph, pw = arr.shape[:2]
            cw, ch = (pw, round(pw * h / w)) if pw * h / w <= ph else (round(ph * w / h), ph)
            top, left = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
            window = Image.fromarray(arr[top:top + ch, left:left + cw])
            path = os.path.join(folder, f"{w}x{h}_{i}.jpg")
            window.resize((w, h), Image.BICUBIC).save(path, quality=quality)
            files.append(path)
    return files
