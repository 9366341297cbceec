import numpy as np
import pytest
import torch
from PIL import Image

from seed_core.config import ConfigError, load_cfg, validate_cfg
from seed_core.augmentations import build_transform as training_transform


def _left_block_image(size=32) -> Image.Image:
    a = np.zeros((size, size, 3), np.uint8)
    a[size // 4: 3 * size // 4, 2: size * 3 // 8] = 255  # a bar in the left third only
    return Image.fromarray(a)


def _share_kept_on_the_left(name: str, draws: int = 200) -> float:
    img, t = _left_block_image(), training_transform(name, 32)
    left = 0
    for i in range(draws):
        torch.manual_seed(i)
        x = t(img).mean(0)  # normalised: the black background is the minimum
        x = x - x.min()
        left += bool(x[:, :16].sum() > x[:, 16:].sum())
    return left / draws


def test_glyphs_never_mirrors_while_mocov2_does():
    assert _share_kept_on_the_left("glyphs") == 1.0
    assert 0.3 < _share_kept_on_the_left("mocov2") < 0.7  # horizontal flip with p = 0.5


@pytest.mark.parametrize("name", ["mocov2", "glyphs", "none"])
def test_every_augmentation_gives_the_configured_size(name):
    out = training_transform(name, 24)(Image.new("RGB", (40, 30)))
    assert out.shape == (3, 24, 24)


def test_unknown_augmentation_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="glyphs"):
        training_transform("autoaugment", 32)
    with pytest.raises(ConfigError, match="DATA.AUGMENTATION"):
        validate_cfg(load_cfg(None, ["DATA.AUGMENTATION", "autoaugment", "DATA.ROOT", "x"]))


def test_blur_is_pils_and_follows_torchs_seed():
    from seed_core.augmentations import PILGaussianBlur
    t = training_transform("mocov2", 32, pipeline="torchvision")
    assert any(isinstance(getattr(s, "transforms", [None])[0], PILGaussianBlur) for s in t.transforms)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    blur = PILGaussianBlur((1.0, 2.0))
    torch.manual_seed(3)
    a = np.asarray(blur(img), np.float32)
    torch.manual_seed(3)
    b = np.asarray(blur(img), np.float32)
    assert np.array_equal(a, b)                       # reproducible from torch's generator (data-loader workers)
    assert np.abs(np.diff(a, axis=1)).mean() < np.abs(np.diff(np.asarray(img, np.float32), axis=1)).mean() / 2
