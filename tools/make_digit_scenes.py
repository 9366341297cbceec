#!/usr/bin/env python
"""Write the handwritten-digit scenes: detection + instance masks (COCO json and VOC layout with
classes.txt), the unlabelled pretraining crops (ImageFolder) and a k-NN query folder.

    python tools/make_digit_scenes.py OUT --num-train 96 --num-test 96 --canvas 128 --seed 0

Installed as `seed-make-digit-scenes`.
"""
import sys

from seed_det.data.synthetic.digit_scenes import SceneSpec, write_digit_scenes
from tools import cli


def main(argv=None) -> int:
    return cli.run(lambda: _main(argv), errors=(ValueError,))


def _main(argv) -> int:
    d = SceneSpec()
    p = cli.ArgumentParser(__doc__)
    p.add_argument("out", help="output folder (created; must be new or empty)")
    p.add_argument("--num-train", type=int, default=d.num_train, help="labelled training scenes")
    p.add_argument("--num-test", type=int, default=d.num_test, help="held-out test scenes")
    p.add_argument("--small-fraction", type=float, default=d.small_fraction,
                   help="the train_small split: this fraction of the training scenes")
    p.add_argument("--canvas", type=int, default=d.canvas, help="scene side in pixels")
    p.add_argument("--min-digit", type=int, default=d.min_digit, help="smallest digit height in pixels")
    p.add_argument("--max-digit", type=int, default=d.max_digit, help="largest digit height in pixels")
    p.add_argument("--digits", type=int, nargs=2, default=(d.min_digits, d.max_digits), metavar=("MIN", "MAX"),
                   help="digits per scene")
    p.add_argument("--distractors", type=int, default=d.distractors, help="fragments of other digits per scene (up to)")
    p.add_argument("--strokes", type=int, default=d.strokes, help="random pen strokes per scene (up to)")
    p.add_argument("--crop-size", type=int, default=d.crop_size, help="side of the pretraining crops")
    p.add_argument("--sources", nargs="+", default=list(d.sources), choices=["mnist", "sklearn"])
    p.add_argument("--seed", type=int, default=d.seed)
    args = p.parse_args(argv)
    spec = SceneSpec(num_train=args.num_train, num_test=args.num_test, small_fraction=args.small_fraction,
                     canvas=args.canvas, min_digit=args.min_digit, max_digit=args.max_digit,
                     min_digits=args.digits[0], max_digits=args.digits[1], distractors=args.distractors,
                     strokes=args.strokes, crop_size=args.crop_size, sources=tuple(args.sources), seed=args.seed)
    result = write_digit_scenes(args.out, spec)
    print(f"digit scenes written to {args.out}: {result['counts']}")
    for key in ("image_root", "train_json", "train_small_json", "test_json", "pretrain", "knn_query"):
        print(f"  {key}: {result[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
