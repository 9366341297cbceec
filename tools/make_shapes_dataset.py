#!/usr/bin/env python
"""Write the generated shapes dataset (COCO json + VOC layout).

    python tools/make_shapes_dataset.py OUT --num-train 64 --num-val 16 --size 128 --seed 0

Installed as `seed-make-shapes-dataset`.
"""
import sys

from seed_det.data.synthetic.shapes import CLASSES, write_shapes_dataset
from tools import cli


def main(argv=None) -> int:
    return cli.run(lambda: _main(argv), errors=(ValueError,))


def _main(argv) -> int:
    p = cli.ArgumentParser(__doc__)
    p.add_argument("out", help="output folder (created)")
    p.add_argument("--num-train", type=int, default=64)
    p.add_argument("--num-val", type=int, default=16)
    p.add_argument("--num-test", type=int, default=0,
                   help="images in a separate test split (0: ImageSets/Main/test.txt lists the val images)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    paths = write_shapes_dataset(args.out, args.num_train, args.num_val, args.size, args.seed, args.num_test)
    print(f"shapes dataset ({', '.join(CLASSES)}) written to {args.out}")
    for key, path in paths.items():
        print(f"  {key}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
