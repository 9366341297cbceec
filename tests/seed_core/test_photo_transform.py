"""The fast photo pipeline (seed_core.photo_transform) against the official recipe (torchvision's PIL
transforms, as SEED's main.py): the same geometry and colour distribution over many samples, the
same view for the same seed, reduced JPEG decoding, EXIF rotation, and unreadable files skipped."""
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp
from torchvision import transforms as T

from seed_core.augmentations import RECIPES, Recipe, build_transform
from seed_core.constants import IMAGENET_MEAN, IMAGENET_STD
from seed_core.data import UnlabeledImages
from seed_core.images import open_rgb
from seed_core.photo_transform import PhotoTransform, shift_hue

SIZE = 32
SAMPLES = 300
KS_P = 0.01   # below this the two samples are told apart


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photographs (scikit-learn's two samples) as JPEGs of several sizes and aspect ratios,
    large enough that many crops decode at 1/2 or 1/4."""
    from sklearn.datasets import load_sample_images
    folder = tmp_path_factory.mktemp("photos")
    files = []
    for i, arr in enumerate(load_sample_images().images):
        for j, (w, h) in enumerate([(160, 120), (120, 160), (300, 200)]):
            path = folder / f"{i}_{j}.jpg"
            Image.fromarray(arr).resize((w, h), Image.BILINEAR).save(path, quality=90)
            files.append(str(path))
    return files


def _official(recipe="mocov2"):
    return build_transform(recipe, SIZE, pipeline="torchvision")


def _views(transform, files, seeds, planned):
    """One view per seed of files[seed % len], decoded as the training data does (the fast one
    through the dataset: crop drawn from the header, reduced decoding)."""
    if planned:
        ds = UnlabeledImages(files, transform)
    out = []
    for s in seeds:
        if planned:
            out.append(ds[(s, s % len(files))][0])
        else:
            torch.default_generator.manual_seed(hash((0, s, s % len(files))) & 0x7FFF_FFFF_FFFF_FFFF)
            out.append(transform(open_rgb(files[s % len(files)])))
    return torch.stack(out)


def _pixels(views):
    """Normalised views -> RGB in [0, 1], on 8-bit levels (a grey view's channels then are equal)."""
    x = views * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    return torch.round(x * 255) / 255


def _colour_statistics(views) -> dict:
    """Per view: channel means, spread of brightness (contrast), chroma, HSV saturation (blind to
    brightness), hue angle of the mean colour, and sharpness (what the blur lowers)."""
    x = _pixels(views)
    r, g, b = x[:, 0].mean((1, 2)), x[:, 1].mean((1, 2)), x[:, 2].mean((1, 2))
    top, bottom = x.max(1).values, x.min(1).values
    return {"mean R": r, "mean G": g, "mean B": b, "contrast": x.mean(1).std((1, 2)),
            "chroma": (top - bottom).mean((1, 2)),
            "HSV saturation": ((top - bottom) / top.clamp(min=1 / 255)).mean((1, 2)),
            "hue": torch.atan2(3 ** 0.5 * (g - b), 2 * r - g - b),
            "sharpness": (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))}


@pytest.fixture(scope="module")
def swatches(tmp_path_factory):
    """A flat colour: every crop is alike, so the colour statistics see only the photometric steps."""
    path = tmp_path_factory.mktemp("swatches") / "flat.jpg"
    Image.new("RGB", (120, 90), (150, 110, 60)).save(path, quality=95)
    return [str(path)]


def _min_ks_p(ours: dict, theirs: dict) -> tuple[float, str]:
    return min((ks_2samp(ours[k].numpy(), theirs[k].numpy()).pvalue, k) for k in ours)


@pytest.mark.parametrize("images", ["photos", "swatches"])
def test_colour_statistics_match_the_official_recipe(images, request):
    files = request.getfixturevalue(images)
    ours = _colour_statistics(_views(build_transform("mocov2", SIZE), files, range(SAMPLES), True))
    theirs = _colour_statistics(_views(_official(), files, range(10_000, 10_000 + SAMPLES), False))
    p, name = _min_ks_p(ours, theirs)
    assert p > KS_P, f"{name}: ours {ours[name].mean():.4f}, official {theirs[name].mean():.4f} (KS p {p:.2g})"


@pytest.mark.parametrize("wrong", [dict(jitter=(0.4, 0.4, 0.4, 0.05)), dict(jitter=(0.0, 0.4, 0.4, 0.1)),
                                   dict(grayscale_p=0.1), dict(jitter_p=0.5)],
                         ids=["hue 0.05", "no brightness", "grayscale p 0.1", "jitter p 0.5"])
def test_a_changed_colour_recipe_is_told_apart(swatches, wrong):
    """The statistics test has the power to see a wrong recipe. (Subtler errors, e.g. a saturation
    range of 0.2 for 0.4, escape it at this sample size; the same-seed comparison below sees them.)"""
    theirs = _colour_statistics(_views(_official(), swatches, range(10_000, 10_000 + SAMPLES), False))
    ours = _colour_statistics(_views(PhotoTransform(Recipe(crop_scale=(0.2, 1.0), **wrong), SIZE), swatches,
                                     range(SAMPLES), True))
    assert _min_ks_p(ours, theirs)[0] < KS_P


# For one seed the two views differ only by 8-bit rounding, the resampling of reduced decoding and
# the exact Gaussian against PIL's box approximation: their statistics agree within these.
PAIRED_TOLERANCE = {"mean R": 0.008, "mean G": 0.008, "mean B": 0.008, "contrast": 0.008, "chroma": 0.012,
                    "HSV saturation": 0.035, "hue": 0.25, "sharpness": 0.005}


def _paired_misfits(recipe, photos, seeds=range(60)) -> list[str]:
    ours = _colour_statistics(_views(PhotoTransform(recipe, SIZE), photos, seeds, True))
    theirs = _colour_statistics(_views(_official(), photos, seeds, False))
    return [f"{k}: {float((ours[k] - theirs[k]).abs().max()):.4f}" for k, tol in PAIRED_TOLERANCE.items()
            if float((ours[k] - theirs[k]).abs().max()) > tol]


def test_same_seed_gives_the_official_view_up_to_rounding(photos):
    """Same draws in the same order: view by view, the statistics of ours and the official agree."""
    assert _paired_misfits(RECIPES["mocov2"], photos) == []


@pytest.mark.parametrize("wrong", [dict(jitter=(0.4, 0.4, 0.2, 0.1)), dict(jitter=(0.4, 0.2, 0.4, 0.1)),
                                   dict(jitter=(0.4, 0.4, 0.4, 0.05)), dict(blur_sigma=(0.1, 1.0))],
                         ids=["saturation 0.2", "contrast 0.2", "hue 0.05", "blur sigma to 1"])
def test_same_seed_comparison_sees_a_slightly_wrong_recipe(photos, wrong):
    assert _paired_misfits(Recipe(crop_scale=(0.2, 1.0), **wrong), photos)


def _coordinate_jpeg(path, w=400, h=300):
    """Red = x, green = y (smooth ramps survive JPEG and reduced decoding)."""
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).round().astype(np.uint8)).save(path, quality=95)
    return str(path)


def _crop_geometry(views, w, h):
    """Crop area fraction and log aspect ratio read back from the coordinate ramps."""
    x = _pixels(views)
    width = (x[:, 0, :, -1] - x[:, 0, :, 0]).mean(1) * SIZE / (SIZE - 1) * w
    height = (x[:, 1, -1, :] - x[:, 1, 0, :]).mean(1) * SIZE / (SIZE - 1) * h
    return width * height / (w * h), torch.log(width / height)


def test_crop_scale_and_aspect_ratio_match_the_official_recipe(tmp_path):
    path = _coordinate_jpeg(tmp_path / "xy.jpg")
    geometry_only = Recipe(crop_scale=(0.2, 1.0), jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, flip=False)
    official = T.Compose([T.RandomResizedCrop(SIZE, scale=(0.2, 1.0)), T.ToTensor(),
                          T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    fast = PhotoTransform(geometry_only, SIZE)
    assert sum(fast.reduction(fast.plan(400, 300)) > 1 for _ in range(100)) > 50  # mostly reduced decoding
    ours = _crop_geometry(_views(fast, [path], range(SAMPLES), True), 400, 300)
    theirs = _crop_geometry(_views(official, [path], range(SAMPLES, 2 * SAMPLES), False), 400, 300)
    for a, b in zip(ours, theirs):
        assert ks_2samp(a.numpy(), b.numpy()).pvalue > KS_P
    assert 0.17 < float(ours[0].min()) and float(ours[0].max()) < 1.03
    same = _crop_geometry(_views(official, [path], range(SAMPLES), False), 400, 300)
    assert torch.allclose(ours[0], same[0], atol=0.02) and torch.allclose(ours[1], same[1], atol=0.03)


def test_a_jpeg_decodes_reduced_only_when_asked(tmp_path):
    path = _coordinate_jpeg(tmp_path / "xy.jpg", 800, 600)
    assert open_rgb(path, lambda w, h: 4).size == (200, 150)
    assert open_rgb(path, lambda w, h: 1).size == (800, 600)
    png = tmp_path / "xy.png"
    Image.open(path).save(png)
    assert open_rgb(str(png), lambda w, h: 4).size == (800, 600)  # not a JPEG: full size


def test_exif_rotated_jpeg_with_reduced_decoding_matches_the_official_view(tmp_path):
    """Stored 400 wide, 200 high, left half white, EXIF orientation 6: upright the top half is white."""
    arr = np.zeros((200, 400, 3), np.uint8)
    arr[:, :200] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "r.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    geometry_only = Recipe(crop_scale=(0.2, 1.0), jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, flip=False)
    official = T.Compose([T.RandomResizedCrop(SIZE, scale=(0.2, 1.0)), T.ToTensor(),
                          T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    ours = _pixels(_views(PhotoTransform(geometry_only, SIZE), [str(path)], range(30), True))
    theirs = _pixels(_views(official, [str(path)], range(30), False))
    assert (ours - theirs).abs().mean() < 0.02


def test_hue_shift_matches_torchvisions(photos):
    img = open_rgb(photos[0]).resize((64, 48))
    for factor in (-0.1, -0.03, 0.05, 0.1):
        a = np.asarray(shift_hue(img, factor), np.float32)
        b = np.asarray(T.functional.adjust_hue(img, factor), np.float32)
        assert np.abs(a - b).mean() < 0.3 and np.abs(a - b).max() <= 3
    # Not a no-op: it moves the pixels as far as torchvision's does (4.9 levels on average here).
    change = np.abs(np.asarray(shift_hue(img, 0.1), np.float32) - np.asarray(img, np.float32)).mean()
    reference = np.abs(np.asarray(T.functional.adjust_hue(img, 0.1), np.float32) - np.asarray(img, np.float32)).mean()
    assert reference > 4 and abs(change - reference) < 0.02 * reference


def test_unreadable_jpegs_are_skipped_and_counted(photos, tmp_path):
    data = open(photos[2], "rb").read()
    truncated, garbage = tmp_path / "truncated.jpg", tmp_path / "garbage.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(b"not a picture")
    ds = UnlabeledImages([str(truncated), str(garbage), photos[2]], build_transform("mocov2", SIZE))
    view, bad = ds[(0, 0)]
    assert bad == [0, 1] and view.shape == (3, SIZE, SIZE)
    assert ds[(0, 2)][1] == []


def test_views_and_small_patches_come_from_one_decoding_and_repeat(photos):
    r = RECIPES["swav"]
    ds = UnlabeledImages(photos, PhotoTransform(r, SIZE), views=2, seed=3,
                         small_transform=PhotoTransform(r, 16, (0.05, 0.14)), small_views=3)
    (main, small), bad = ds[(1, 4)]
    assert main.shape == (2, 3, SIZE, SIZE) and small.shape == (3, 3, 16, 16) and bad == []
    again = ds[(1, 4)][0]
    assert torch.equal(main, again[0]) and torch.equal(small, again[1])
    assert not torch.equal(main[0], main[1])


def test_glyph_and_plain_recipes_keep_torchvision_and_the_pipeline_is_checked():
    assert isinstance(build_transform("mocov2", SIZE), PhotoTransform)
    assert not isinstance(build_transform("glyphs", SIZE), PhotoTransform)
    assert not isinstance(build_transform("mocov2", SIZE, pipeline="torchvision"), PhotoTransform)
    with pytest.raises(ValueError, match="fast, torchvision"):
        build_transform("mocov2", SIZE, pipeline="dali")
    from seed_core.config import ConfigError, load_cfg, validate_cfg
    with pytest.raises(ConfigError, match="DATA.PIPELINE"):
        validate_cfg(load_cfg(None, ["DATA.PIPELINE", "dali", "DATA.ROOT", "x"]))


@pytest.mark.skipif(torch.cuda.is_initialized(), reason="CUDA seeding is only deferred before CUDA starts")
def test_sampling_seeds_only_the_cpu_generator(photos, monkeypatch):
    """torch.manual_seed would also defer a seeding of each accelerator not started yet, formatting
    a stack trace each time: in a data-loader worker, about a millisecond per sample."""
    import traceback
    stacks = []
    monkeypatch.setattr(traceback, "format_stack", lambda *a, **k: stacks.append(1) or [])
    ds = UnlabeledImages(photos, build_transform("mocov2", SIZE))
    for i in range(5):
        ds[(0, i)]
    assert stacks == []
