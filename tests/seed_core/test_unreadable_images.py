"""One policy for images that cannot be read (seed_core.images): every bad kind, in every common
format, is one error naming the file; distillation skips and counts it; the k-NN and linear
evaluations refuse it before any feature is computed. (The detection engines: tests/seed_det/test_det_images.py.)"""
import os

import numpy as np
import pytest

from conftest import BAD_IMAGE_KINDS, load_script, write_bad_image, write_images
from seed_core.data import UnlabeledImages
from seed_core.images import (MAX_IMAGE_PIXELS, SkippedImages, UnreadableImageError, open_rgb, refuse_unreadable,
                              skip_unreadable, upright_size, verify_image)
from seed_core.errors import TooManyBadImagesError

FORMATS = ("jpg", "png", "webp", "tif", "gif", "bmp", "ppm")
REASONS = {"zero-byte": "empty", "truncated": "truncated", "not-an-image": "not an image",
           "oversize": f"limit of {MAX_IMAGE_PIXELS}"}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", [k for k in BAD_IMAGE_KINDS if k != "oversize"])
def test_every_bad_kind_in_every_format_is_one_error_naming_the_file(tmp_path, kind, fmt):
    path = write_bad_image(tmp_path / f"bad.{fmt}", kind)
    for read in (verify_image, open_rgb):
        with pytest.raises(UnreadableImageError, match=rf"image .*bad\.{fmt} cannot be read: .*{REASONS[kind]}"):
            read(path)
    if kind != "truncated":  # the header is enough to refuse these
        with pytest.raises(UnreadableImageError, match=rf"bad\.{fmt}"):
            upright_size(path)


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    path = write_bad_image(tmp_path / "bomb.png", "oversize")
    with _no_warning():
        for read in (upright_size, verify_image, open_rgb):
            with pytest.raises(UnreadableImageError, match=r"bomb\.png cannot be read: it has (10000x9000 = )?"
                                                          r"90000000 pixels, more than the limit .*downscale"):
                read(path)


class _no_warning:
    """PIL's DecompressionBombWarning is part of the one error, not a stray warning beside it."""

    def __enter__(self):
        import warnings
        self._catch = warnings.catch_warnings(record=True)
        self.caught = self._catch.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        assert not [w for w in self.caught if "decompression" in str(w.message).lower()]


def test_training_skips_and_counts_evaluation_refuses(tmp_path):
    good = write_images(str(tmp_path / "good"), 3)
    bad = [write_bad_image(tmp_path / f"{k}.jpg", k) for k in BAD_IMAGE_KINDS]
    paths = good + bad
    # training, from the headers: the truncated JPEG opens (its decoding fails later: SkippedImages)
    assert sorted(skip_unreadable(paths, 0.5, "training set 't'", "KEY")) == [0, 1, 2, 4]
    with pytest.raises(TooManyBadImagesError, match=r"training set 't': 3 of 7 images cannot be read, more than "
                                                    r"KEY = 0.2; for example image .*zero-byte\.jpg"):
        skip_unreadable(paths, 0.2, "training set 't'", "KEY")
    skipped = SkippedImages(total=4, max_fraction=0.25, what="training set 't'", key="KEY")
    skipped.skip("a.jpg", UnreadableImageError("image a cannot be read"))
    with pytest.raises(TooManyBadImagesError, match="2 of 4 images cannot be read, more than KEY = 0.25"):
        skipped.skip("b.jpg", UnreadableImageError("image b cannot be read"))
    # evaluation: every file decoded, one error naming the first bad one and how many more
    refuse_unreadable(good, "test set 't'")
    with pytest.raises(UnreadableImageError, match=r"test set 't': 4 of 7 images cannot be read, and evaluation "
                                                   r"skips none .*zero-byte\.jpg.*\(\+3 more\)"):
        refuse_unreadable(paths, "test set 't'")
    with pytest.raises(UnreadableImageError, match=r"160 of 280 images .*zero-byte\.jpg"):  # in 2 processes
        refuse_unreadable(paths * 40, "test set 't'", num_workers=2)


def test_an_image_met_again_counts_once_and_a_second_one_over_the_limit_stops(caplog):
    """An infinite sampler meets one corrupt image on every pass: it is counted and warned about once."""
    skipped = SkippedImages(total=10, max_fraction=0.1, what="training set 't'", key="KEY")
    with caplog.at_level("WARNING"):
        for _ in range(11):
            skipped.skip(3, UnreadableImageError("image 3.jpg cannot be read: it is truncated"))
        skipped.add({3: "image 3.jpg cannot be read: it is truncated"})
    assert len(skipped) == 1 and 3 in skipped and caplog.text.count("3.jpg") == 1
    assert "1 distinct image(s) so far" in caplog.text
    with pytest.raises(TooManyBadImagesError, match=r"training set 't': 2 of 10 images cannot be read, more than "
                                                    r"KEY = 0.1; for example image 3\.jpg .*Fix or remove them, or "
                                                    r"raise KEY"):
        skipped.add({7: "image 7.jpg cannot be read"}, report=False)
    # a checkpoint keeps them; one from before they were kept holds none
    resumed = SkippedImages(total=10, max_fraction=0.1, what="training set 't'", key="KEY")
    resumed.load_state_dict(skipped.state_dict())
    assert resumed.errors == skipped.errors and list(resumed.errors) == [3, 7]
    resumed.load_state_dict({})
    assert len(resumed) == 0


@pytest.mark.parametrize("kind", BAD_IMAGE_KINDS)
def test_distillation_skips_each_kind_and_reports_it(tmp_path, kind):
    good = write_images(str(tmp_path / "good"), 1)[0]
    bad = write_bad_image(tmp_path / "bad.jpg", kind)
    img, skipped = UnlabeledImages([bad, good], transform=lambda im: np.asarray(im))[0]
    assert skipped == [0] and img.shape == (32, 32, 3)


@pytest.mark.parametrize("tool", ["eval_knn", "eval_linear"])
@pytest.mark.parametrize("kind", BAD_IMAGE_KINDS)
@pytest.mark.parametrize("split", ["train", "val"])
def test_feature_evaluations_refuse_an_unreadable_image_before_any_feature(tmp_path, capsys, tool, kind, split):
    for s in ("train", "val"):
        write_images(str(tmp_path / s), 4, size=16)
    write_bad_image(tmp_path / split / "class1" / "bad.jpg", kind)
    cache, out = tmp_path / "cache", tmp_path / "metrics.json"
    args = ["--arch", "resnet18", "--random-init", "--train", str(tmp_path / "train"), "--val", str(tmp_path / "val"),
            "--image-size", "16", "--workers", "0", "--cache-dir", str(cache), "--no-progress", "--output", str(out),
            "--results-csv", ""]
    assert load_script(f"tools/{tool}.py").main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: image folder ") and "Traceback" not in err
    assert f"{os.sep}{split}{os.sep}class1{os.sep}bad.jpg cannot be read: " in err and REASONS[kind] in err
    assert not list(cache.glob("*.pt")) and not out.exists()  # nothing computed, nothing written


def test_every_image_file_is_opened_by_the_one_decoder():
    """No library or tool opens an image file itself: the policy above holds wherever images are read."""
    from conftest import ROOT
    for package in ("seed_core", "seed_det", "tools", "benchmarks"):
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in (n for n in names if n.endswith(".py")):
                path = os.path.join(folder, name)
                if path != os.path.join(ROOT, "seed_core", "images.py"):
                    assert "Image.open(" not in open(path).read(), path


def test_an_image_the_decoder_refuses_is_named_by_evaluation_and_skipped_by_training(tmp_path):
    from PIL import Image
    from seed_core.errors import DatasetError
    from seed_core.images import unreadable_images
    path = str(tmp_path / "far.tif")
    Image.fromarray(np.full((4, 4), 1e6, dtype=np.float32), mode="F").save(path)  # no meaning as a picture
    [reason] = unreadable_images([path])  # a message, not an exception (it may come from a worker process)
    assert "far.tif" in reason and "rescale it" in reason
    with pytest.raises(DatasetError) as refused:
        open_rgb(path)
    skipped = SkippedImages(total=1, max_fraction=1.0, what="training set 't'", key="KEY")
    skipped.skip(path, refused.value)
    assert skipped.errors == {path: str(refused.value)}
