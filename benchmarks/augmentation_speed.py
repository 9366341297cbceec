#!/usr/bin/env python
"""Time of one augmented view, as a data-loader worker makes it (one torch thread), for every recipe,
with the blur done by PIL (what seed_core.augmentations uses, as MoCo-v2's code does) and by
torchvision's tensor GaussianBlur, side by side in one run.

    python benchmarks/augmentation_speed.py [--sizes 32 224] [--views 300]

At small image sizes a distillation step is short, so an augmentation that costs several ms per
view decides how many workers a run needs (figures: docs/RESULTS.md, "Augmentation").
"""
import argparse
import sys
import time

import numpy as np


def _ms_per_view(transform, images) -> float:
    start = time.perf_counter()
    for im in images:
        transform(im)
    return 1000 * (time.perf_counter() - start) / len(images)


def main(argv=None) -> int:
    import torch
    from PIL import Image
    from torchvision import transforms as T

    from seed_core.augmentations import RECIPES, PILGaussianBlur, build_transform

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    p.add_argument("--views", type=int, default=300)
    args = p.parse_args(argv)
    torch.set_num_threads(1)   # as in a DataLoader worker
    rng = np.random.default_rng(0)
    from seed_core.precision import cpu_description
    print(f"CPU: {cpu_description()}, torch {torch.__version__}, one thread")
    print("| recipe | size | PIL blur, ms/view | torchvision blur, ms/view | ratio |")
    print("|---|---:|---:|---:|---:|")
    for size in args.sizes:
        images = [Image.fromarray(rng.integers(0, 255, (size + size // 4, size + size // 4, 3), dtype=np.uint8))
                  for _ in range(args.views)]
        for name, recipe in RECIPES.items():
            if not recipe.blur_p:
                continue
            # The torchvision pipeline (DATA.PIPELINE torchvision): its blur is the one compared here.
            ours = build_transform(name, size, pipeline="torchvision")
            theirs = build_transform(name, size, pipeline="torchvision")
            kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
            for i, step in enumerate(theirs.transforms):   # the same recipe with torchvision's blur
                inner = getattr(step, "transforms", [None])
                if isinstance(inner[0], PILGaussianBlur):
                    theirs.transforms[i] = T.RandomApply([T.GaussianBlur(kernel, sigma=recipe.blur_sigma)],
                                                         p=step.p)
            _ms_per_view(ours, images[:20])   # warm up
            _ms_per_view(theirs, images[:20])
            a, b = _ms_per_view(ours, images), _ms_per_view(theirs, images)
            print(f"| {name} | {size} | {a:.2f} | {b:.2f} | {b / a:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
