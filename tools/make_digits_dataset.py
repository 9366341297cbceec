#!/usr/bin/env python
"""Write scikit-learn's bundled digits (1,797 real 8x8 images) as an upsampled RGB ImageFolder dataset.

    python tools/make_digits_dataset.py datasets/digits --size 32
    -> datasets/digits/train/<digit>/*.png and datasets/digits/val/<digit>/*.png
"""
import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tools.apps.digits import write_digits_imagefolder  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="output directory (created)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument("--val-fraction", type=float, default=0.3, help="share of each class held out")
    parser.add_argument("--max-per-class", type=int, default=None, help="keep only this many images per class")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        counts = write_digits_imagefolder(args.root, args.size, args.seed, args.val_fraction, args.max_per_class)
    except (ValueError, FileExistsError) as e:
        parser.exit(2, f"error: {e}\n")
    state = "wrote" if counts["written"] else "already complete:"
    print(f"{state} {args.root}: {counts['train']} train and {counts['val']} val images in 10 classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
