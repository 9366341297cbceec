"""seed_core.photo_ops against the functions it stands in for: torchvision's PIL colour functions
(PIL's 8-bit truncation and rounding included), PIL's grey conversion and scipy's Gaussian."""
import numpy as np
import pytest
from PIL import Image
from torchvision.transforms import functional as F

from seed_core import photo_ops


@pytest.fixture(scope="module")
def photo():
    """A real photograph with saturated highlights and deep shadows (where clipping matters)."""
    from sklearn.datasets import load_sample_images
    return Image.fromarray(load_sample_images().images[1]).resize((96, 64), Image.BILINEAR)


def _levels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, np.float32)


def _differences(ours: np.ndarray, theirs: Image.Image) -> tuple[float, float, float]:
    """Mean and largest difference in levels, and the share of pixel values more than a level apart."""
    d = np.abs(ours - _levels(theirs))
    return float(d.mean()), float(d.max()), float((d > 1).mean())


# A float hue that lands on the other side of one of PIL's 8-bit hue steps (1/255 turn) moves a
# saturated pixel by up to 6 levels: rare, but it happens.
HUE_STEP = 6


OPS = [(photo_ops.adjust_brightness, F.adjust_brightness, (0.6, 0.93, 1.4)),
       (photo_ops.adjust_contrast, F.adjust_contrast, (0.6, 1.07, 1.4)),
       (photo_ops.adjust_saturation, F.adjust_saturation, (0.0, 0.6, 1.4)),
       (photo_ops.adjust_hue, F.adjust_hue, (-0.1, -0.02, 0.07))]


@pytest.mark.parametrize("ours, theirs, factors", OPS, ids=["brightness", "contrast", "saturation", "hue"])
def test_colour_op_gives_torchvisions_pil_levels(photo, ours, theirs, factors):
    for factor in factors:
        out = ours(_levels(photo), factor)
        assert out.dtype == np.float32 and np.array_equal(out, np.round(out))  # whole levels, as PIL's
        mean, worst, apart = _differences(out, theirs(photo, factor))
        assert mean < 0.02 and apart < 0.002 and worst <= HUE_STEP, (factor, mean, worst, apart)
        assert _differences(out, photo)[0] > 1.0  # and it did something


def test_a_jitter_sequence_stays_within_a_level_of_torchvisions(photo):
    """Four ops in a row: PIL clips and truncates after each, and so do these: no drift."""
    ours, theirs = _levels(photo), photo
    for op, factor in zip((3, 0, 2, 1), (0.08, 1.35, 1.3, 0.7)):
        ours, theirs = OPS[op][0](ours, factor), OPS[op][1](theirs, factor)
    mean, worst, apart = _differences(ours, theirs)
    assert mean < 0.05 and apart < 0.005 and worst <= HUE_STEP


def test_grey_is_pils_luma(photo):
    theirs = _levels(photo.convert("L"))
    for pixels in (np.asarray(photo), _levels(photo)):  # 8-bit (no jitter) and float (after it)
        grey = photo_ops.to_grey(pixels)
        assert grey.shape == theirs.shape and grey.dtype == pixels.dtype
        assert np.abs(grey.astype(np.float32) - theirs).max() <= 1


@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
def test_blur_is_the_truncated_gaussian_with_repeated_edges(photo, sigma):
    from scipy.ndimage import gaussian_filter
    pixels = np.asarray(photo)
    expected = gaussian_filter(pixels, (sigma, sigma, 0), output=np.float32, mode="nearest",
                               truncate=photo_ops.BLUR_TRUNCATE)
    out = photo_ops.gaussian_blur(pixels, sigma)
    assert out.dtype == np.float32 and np.abs(out - expected).max() < 1e-3
    grey = photo_ops.gaussian_blur(pixels[..., 0], sigma)  # one channel
    assert np.abs(grey - expected[..., 0]).max() < 1e-3


def test_opencv_runs_on_as_many_threads_as_torch(monkeypatch):
    """In a data-loader worker torch has one thread: OpenCV then has one too, not a pool per core."""
    import cv2
    import torch

    from seed_core import opencv
    threads = torch.get_num_threads()
    cv2.setNumThreads(2)
    monkeypatch.setattr(opencv, "_configured_in_pid", [])  # as in a process that has not used it yet
    try:
        torch.set_num_threads(1)
        assert opencv.cv2().getNumThreads() == 1
    finally:
        torch.set_num_threads(threads)
