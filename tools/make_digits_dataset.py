#!/usr/bin/env python
"""Write scikit-learn's bundled digits (1,797 real 8x8 images) as an upsampled RGB ImageFolder dataset.

    python tools/make_digits_dataset.py datasets/digits --size 32
    -> datasets/digits/train/<digit>/*.png and datasets/digits/val/<digit>/*.png

Installed as `seed-make-digits-dataset`.
"""
import logging
import sys

from seed_det.data.synthetic.digits import write_digits_imagefolder
from tools import cli


def main(argv=None) -> int:
    return cli.run(lambda: _main(argv), errors=(ValueError, FileExistsError))


def _main(argv) -> int:
    parser = cli.ArgumentParser(__doc__)
    parser.add_argument("root", help="output directory (created)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument("--val-fraction", type=float, default=0.3, help="share of each class held out")
    parser.add_argument("--max-per-class", type=int, default=None, help="keep only this many images per class")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    counts = write_digits_imagefolder(args.root, args.size, args.seed, args.val_fraction, args.max_per_class)
    state = "wrote" if counts["written"] else "already complete:"
    print(f"{state} {args.root}: {counts['train']} train and {counts['val']} val images in 10 classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
