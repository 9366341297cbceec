"""The one image decoder (seed_core.images) and the readers that use it: distillation data,
feature evaluation, the torchvision engine's detection dataset (Detectron2's: test_d2_engine.py)."""
import numpy as np
import pytest
from PIL import Image

from seed_core.data import UnlabeledImages
from seed_core.errors import DatasetError
from seed_core.evaluation.features import open_image_folder
from seed_core.images import open_rgb, read_rgb, upright_size
from seed_det.data import Dataset, DatasetSpec
from seed_det.data.torch_dataset import DetectionDataset

EXIF_ORIENTATION = 0x0112


def _png16(path, value=32768):
    Image.fromarray(np.full((4, 6), value, dtype=np.uint16)).save(path)  # PIL writes a 16-bit greyscale PNG
    return str(path)


def _tiff_float(path, value):
    Image.fromarray(np.full((4, 6), value, dtype=np.float32), mode="F").save(path)
    return str(path)


def _rotated_jpeg(path):
    """Stored 8 wide x 4 high, left half white; EXIF orientation 6 (rotate 90 degrees clockwise to view)."""
    arr = np.zeros((4, 8, 3), dtype=np.uint8)
    arr[:, :4] = 255
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(arr).save(path, exif=exif, quality=100)
    return str(path)


def test_every_mode_decodes_with_its_scale_or_is_refused_by_name(tmp_path):
    with Image.open(_png16(tmp_path / "a.png")) as im:
        assert im.mode.startswith("I")  # a real 16-bit file, the case PIL's convert("RGB") saturates
    assert read_rgb(_png16(tmp_path / "a.png")).max() == 128  # 32768 / 65535 * 255, not 255
    assert read_rgb(_png16(tmp_path / "b.png", 65535)).min() == 255
    assert read_rgb(_tiff_float(tmp_path / "c.tif", 0.5)).max() == 128  # [0, 1] floats, not black
    assert read_rgb(_tiff_float(tmp_path / "d.tif", 200.0)).max() == 200  # [0, 255] floats kept
    with pytest.raises(DatasetError, match=r"e\.tif is a float image.*\[-3, -3\]"):
        read_rgb(_tiff_float(tmp_path / "e.tif", -3.0))
    with pytest.raises(DatasetError, match=r"i32\.tif.*32-bit integer.*\[100000, 100000\]"):
        Image.fromarray(np.full((4, 6), 100000, dtype=np.int32), mode="I").save(tmp_path / "i32.tif")
        read_rgb(str(tmp_path / "i32.tif"))
    rgba = Image.new("RGBA", (3, 2), (10, 20, 30, 0))
    rgba.save(tmp_path / "f.png")
    assert read_rgb(str(tmp_path / "f.png"), "BGR")[0, 0].tolist() == [30, 20, 10]


def test_exif_orientation_is_applied_everywhere(tmp_path):
    path = _rotated_jpeg(tmp_path / "r.jpg")
    assert upright_size(path) == (4, 8)  # width, height after rotation
    arr = read_rgb(path)
    assert arr.shape == (8, 4, 3) and arr[:4].mean() > 200 and arr[4:].mean() < 50  # white half on top

    # distillation data
    img = UnlabeledImages([path], transform=lambda im: np.asarray(im))[0][0]
    assert img.shape == (8, 4, 3)
    # feature evaluation (ImageFolder through the decoder)
    folder = tmp_path / "folder" / "cls"
    folder.mkdir(parents=True)
    _png16(folder / "x.png")
    assert np.asarray(open_image_folder(tmp_path / "folder")[0][0]).max() == 128
    # torchvision detection engine: size checked upright, against the annotation
    spec = DatasetSpec("rot", "coco", json_file="j.json")
    record = {"file_name": path, "image_id": 7, "height": 8, "width": 4,
              "annotations": [{"bbox": [0, 0, 4, 4], "category_id": 0, "iscrowd": 0}]}
    image, _ = DetectionDataset(Dataset(spec, [record], ["a"]), train=False)[0]
    assert tuple(image.shape) == (3, 8, 4) and image[:, :4].mean() > 200
    wrong = DetectionDataset(Dataset(spec, [dict(record, height=4, width=8)], ["a"]), train=False)
    with pytest.raises(DatasetError, match=r"r\.jpg \(image id 7\) is 4x8 .* says 8x4"):
        wrong[0]


def test_distillation_skips_an_unsupported_image_by_name(tmp_path):
    bad = _tiff_float(tmp_path / "bad.tif", 1e6)
    good = _png16(tmp_path / "good.png")
    img, skipped = UnlabeledImages([bad, good], transform=lambda im: np.asarray(im))[0]
    assert skipped == [0] and img.max() == 128
    with pytest.raises(DatasetError, match="bad.tif"):
        open_rgb(bad)


def _photo_jpeg(path, size=(160, 120), **save):
    from sklearn.datasets import load_sample_images
    Image.fromarray(load_sample_images().images[0]).resize(size, Image.BILINEAR).save(path, quality=90, **save)
    return str(path)


def test_decode_rgb_gives_open_rgbs_pixels_whichever_decoder_reads_the_file(tmp_path, monkeypatch):
    """A plain colour JPEG, baseline or progressive, goes to OpenCV (the same libjpeg-turbo and
    settings as PIL: the same pixels, also reduced); a grey, CMYK, EXIF-rotated or trailing-bytes
    JPEG and a PNG go to PIL."""
    import seed_core.images as images
    opencv = []
    decode_jpeg = images._decode_jpeg
    monkeypatch.setattr(images, "_decode_jpeg", lambda data, k: opencv.append(k) or decode_jpeg(data, k))
    plain = _photo_jpeg(tmp_path / "plain.jpg")
    for k in (1, 2, 4, 8):
        pixels = images.decode_rgb(plain, lambda w, h: k)
        assert pixels.dtype == np.uint8 and pixels.shape == (-(-120 // k), -(-160 // k), 3)
        assert np.array_equal(pixels, np.asarray(open_rgb(plain, lambda w, h: k)))
    assert opencv == [1, 2, 4, 8]  # the fast path was taken, not only PIL's

    progressive = _photo_jpeg(tmp_path / "progressive.jpg", progressive=True)
    grey = tmp_path / "grey.jpg"
    Image.open(plain).convert("L").save(grey, quality=90)
    cmyk = tmp_path / "cmyk.jpg"
    Image.open(plain).convert("CMYK").save(cmyk, quality=90)
    trailing = tmp_path / "trailing.jpg"
    trailing.write_bytes(open(plain, "rb").read() + b"\x00" * 16)
    png = tmp_path / "photo.png"
    Image.open(plain).save(png)
    for path in (progressive, grey, cmyk, trailing, png, _rotated_jpeg(tmp_path / "r.jpg")):
        assert np.array_equal(images.decode_rgb(str(path)), np.asarray(open_rgb(str(path)))), path
        assert np.array_equal(read_rgb(str(path), "BGR"), np.asarray(open_rgb(str(path)))[:, :, ::-1])


def test_decode_rgb_refuses_a_truncated_jpeg_by_name(tmp_path):
    from seed_core.images import UnreadableImageError, decode_rgb
    data = open(_photo_jpeg(tmp_path / "whole.jpg"), "rb").read()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match="cut.jpg.*truncated"):
        decode_rgb(str(cut))


def test_decode_rgb_agrees_with_pil_on_damaged_jpegs(tmp_path):
    """Bytes changed, zeroed or cut out (the end-of-image marker kept), a damaged header: whatever
    PIL makes of each file, decode_rgb makes the same (the same pixels, or the same refusal)."""
    from seed_core.images import UnreadableImageError, decode_rgb
    data = open(_photo_jpeg(tmp_path / "whole.jpg"), "rb").read()
    rng = np.random.default_rng(0)
    outcomes = set()
    for trial in range(16):
        b = bytearray(data)
        at = int(rng.integers(700, len(b) - 700))
        if trial % 4 == 0:
            b[at:at + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        elif trial % 4 == 1:
            b[at:at + 300] = bytes(300)
        elif trial % 4 == 2:
            b = b[:at] + b[-2:]
        else:
            b[int(rng.integers(2, 600))] ^= 0xFF
        path = tmp_path / f"damaged{trial}.jpg"
        path.write_bytes(bytes(b))
        results = []
        for read in (lambda: np.asarray(open_rgb(str(path))), lambda: decode_rgb(str(path))):
            try:
                results.append(read())
            except UnreadableImageError:
                results.append(None)
        if results[0] is None:
            assert results[1] is None, trial
        else:
            assert results[1] is not None and np.array_equal(results[0], results[1]), trial
        outcomes.add(results[0] is None)
    assert outcomes == {True, False}  # some refused, some decoded: both branches were compared
