"""A generated detection / instance-segmentation dataset of coloured shapes.

Every image has a textured background and a few non-overlapping circles, squares and triangles.
Each image is drawn from its own random generator seeded by (seed, split, index), so image i of a
split is the same whatever the number of images asked for. The same images are written twice:
as COCO json (``annotations/instances_<split>.json``) and as a PASCAL VOC layout
(``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``), so both dataset readers are exercised.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from .voc_layout import voc_xml

logger = logging.getLogger(__name__)

CLASSES = ("circle", "square", "triangle")
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


@dataclass
class Shape:
    category: int  # index into CLASSES
    polygon: List[float]  # x0, y0, x1, y1, ... in pixel coordinates
    bbox: List[float]  # x0, y0, x1, y1 (continuous coordinates, from the rasterised mask)
    area: int  # number of mask pixels


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-contrast stripes plus noise, so the detector cannot rely on a flat background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = rng.uniform(60, 190, size=3).astype(np.float32)
    angle = rng.uniform(0, math.pi)
    freq = rng.uniform(2, 8) * 2 * math.pi / size
    stripes = np.sin(freq * (xx * math.cos(angle) + yy * math.sin(angle)) + rng.uniform(0, 6.3))
    amp = rng.uniform(10, 35, size=3).astype(np.float32)
    noise = rng.normal(0, 12, size=(size, size, 3)).astype(np.float32)
    img = base + stripes[..., None] * amp + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(rng: np.random.Generator, category: int, cx: float, cy: float, r: float) -> List[float]:
    """Vertices of a shape of circumradius r centred at (cx, cy), randomly rotated."""
    if CLASSES[category] == "circle":
        n, rot = 32, 0.0
    elif CLASSES[category] == "square":
        n, rot = 4, rng.uniform(0, math.pi / 2)
    else:
        n, rot = 3, rng.uniform(0, 2 * math.pi / 3)
    pts = []
    for k in range(n):
        a = rot + 2 * math.pi * k / n
        pts += [cx + r * math.cos(a), cy + r * math.sin(a)]
    return pts


def _colour(rng: np.random.Generator) -> tuple:
    """A saturated colour that stands out of the muted background."""
    hue = rng.uniform(0, 1)
    rgb = []
    for offset in (0.0, 1 / 3, 2 / 3):  # a cheap HSV->RGB with full saturation
        v = abs(((hue + offset) % 1.0) * 6 - 3) - 1
        rgb.append(int(255 * min(max(v, 0.0), 1.0)))
    return tuple(rgb)


def _overlaps(box: Sequence[float], boxes: Sequence[Sequence[float]], margin: float = 2.0) -> bool:
    return any(
        box[0] < b[2] + margin and b[0] < box[2] + margin and box[1] < b[3] + margin and b[1] < box[3] + margin
        for b in boxes
    )


def draw_image(rng: np.random.Generator, size: int, min_shapes: int = 2, max_shapes: int = 5):
    """Return (PIL RGB image, list[Shape]) for one image."""
    pixels = _texture(rng, size)
    shapes: List[Shape] = []
    wanted = int(rng.integers(min_shapes, max_shapes + 1))
    for _ in range(50 * wanted):  # rejection sampling for non-overlapping placements
        if len(shapes) == wanted:
            break
        category = int(rng.integers(len(CLASSES)))
        r = rng.uniform(0.08, 0.18) * size
        cx, cy = rng.uniform(r, size - r, size=2)
        poly = [round(v, 2) for v in _polygon(rng, category, cx, cy, r)]
        xs, ys = poly[0::2], poly[1::2]
        if _overlaps((min(xs), min(ys), max(xs), max(ys)), [s.bbox for s in shapes]):
            continue
        # Rasterise the polygon the way COCO readers will (pycocotools), and paint exactly those
        # pixels: image, mask, box and area then agree to the pixel.
        mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects([poly], size, size))).astype(bool)
        yy, xx = np.nonzero(mask)
        if len(xx) < 16:
            continue
        bbox = [float(xx.min()), float(yy.min()), float(xx.max() + 1), float(yy.max() + 1)]
        pixels[mask] = _colour(rng)
        shapes.append(Shape(category, poly, bbox, int(mask.sum())))
    img = Image.fromarray(pixels)
    return img, shapes


def _coco_json(split_records, size: int) -> Dict:
    images, annotations = [], []
    for img_id, (image_id, shapes) in enumerate(split_records, start=1):
        images.append({"id": img_id, "file_name": image_id + ".jpg", "height": size, "width": size})
        for s in shapes:
            x0, y0, x1, y1 = s.bbox
            annotations.append({
                "id": len(annotations) + 1, "image_id": img_id, "category_id": s.category + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": s.area, "iscrowd": 0,
                "segmentation": [s.polygon],
            })
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    return {"info": {"description": "generated shapes"}, "images": images, "annotations": annotations,
            "categories": categories}


def write_shapes_dataset(out_dir: str, num_train: int = 64, num_val: int = 16, size: int = 128,
                         seed: int = 0, num_test: int = 0) -> Dict[str, str]:
    """Write the dataset under out_dir and return the paths a config needs.

    ImageSets/Main: train.txt, val.txt, trainval.txt (train + val) and test.txt. test.txt lists a
    separate test split when num_test > 0, otherwise the val images; train on ``train`` and
    evaluate on ``val``/``test`` to keep evaluation images unseen.
    """
    if num_train < 1 or num_val < 1 or num_test < 0:
        raise ValueError(f"need num_train >= 1 and num_val >= 1 (got {num_train}, {num_val}) and num_test >= 0")
    if size < 32:
        raise ValueError(f"image size {size} is too small to hold several shapes: use --size 32 or more")
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main"), "annotations"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    splits = {"train": num_train, "val": num_val}
    if num_test:
        splits["test"] = num_test
    ids: Dict[str, List[str]] = {}
    for split, count in splits.items():
        records = []
        for i in range(count):
            rng = np.random.default_rng([seed, _SPLIT_IDS[split], i])
            img, shapes = draw_image(rng, size)
            image_id = f"{split}_{i:06d}"
            img.save(os.path.join(out_dir, "JPEGImages", image_id + ".jpg"), quality=95)
            voc_xml(image_id, size, [(CLASSES[s.category], s.bbox) for s in shapes], folder="shapes").write(
                os.path.join(out_dir, "Annotations", image_id + ".xml"))
            records.append((image_id, shapes))
        with open(os.path.join(out_dir, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(_coco_json(records, size), f)
        ids[split] = [r[0] for r in records]
    ids["trainval"] = ids["train"] + ids["val"]
    ids.setdefault("test", ids["val"])
    for split in ("train", "val", "trainval", "test"):
        with open(os.path.join(out_dir, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("\n".join(ids[split]) + "\n")
    with open(os.path.join(out_dir, "classes.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    logger.info("wrote shapes dataset to %s (%s)", out_dir, {k: len(v) for k, v in ids.items()})
    return {
        "root": out_dir,
        "image_root": os.path.join(out_dir, "JPEGImages"),
        **{f"{s}_json": os.path.join(out_dir, "annotations", f"instances_{s}.json") for s in splits},
    }
