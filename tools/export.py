#!/usr/bin/env python
"""Export a distilled backbone, or a detector of the torchvision engine, to ONNX; onnxruntime's
outputs are checked against torch's on other input sizes than the traced one before the file is
written.

    python tools/export.py runs/seed_r18 --format onnx                  # -> runs/seed_r18/student_backbone.onnx
    python tools/export.py runs/seed_r18/student_backbone.pth --output r18.onnx --image-size 224
    python tools/export.py runs/voc_r18/model_final.pth --config configs/voc_r18_seed.yaml --output det.onnx

A backbone (student_backbone.pth + meta.json, or a .pth with --arch) takes `images` (N, 3, H, W),
normalised RGB, and gives `features` (N, D): batch, height and width dynamic. A detector (WEIGHTS
a checkpoint of the torchvision engine, --config the config it was trained with, KEY VALUE
overrides after it) takes one `image` (3, H, W), 0..255 in INPUT.FORMAT order, of any height and
width, and gives `boxes`, `labels`, `scores` (and `masks`). Needs the `export` extra
(pip install 'seed-transfer[export]'). Installed as `seed-export`.
"""
import json
import os
import sys

from seed_core.onnx_export import DEFAULT_IMAGE_SIZE, export_backbone_onnx
from tools import cli

FORMATS = ("onnx",)


def default_output(weights: str, fmt: str) -> str:
    """Beside the weights: <export folder>/student_backbone.onnx, model_final.pth -> model_final.onnx."""
    from seed_core.constants import BACKBONE_FILE
    path = os.path.join(weights, BACKBONE_FILE) if os.path.isdir(weights) else weights
    return os.path.splitext(path)[0] + f".{fmt}"


def main(argv=None) -> int:
    return cli.run(lambda: _main(argv))


def _main(argv) -> int:
    p = cli.ArgumentParser(__doc__)
    p.add_argument("weights", metavar="WEIGHTS",
                   help="a backbone export (folder or student_backbone.pth), or a detector checkpoint with --config")
    p.add_argument("--format", default="onnx", choices=FORMATS, help="the file format (default: onnx)")
    cli.add_config(p, "the detection config the detector was trained with: export a detector, not a backbone")
    p.add_argument("--output", "-o", metavar="FILE", default=None,
                   help="the file to write (default: beside WEIGHTS, with the format's suffix)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists (moved aside)")
    p.add_argument("--arch", default=None, help="backbone architecture when WEIGHTS has no meta.json beside it")
    p.add_argument("--image-size", type=int, default=None, help=f"backbone: the image side traced (default {DEFAULT_IMAGE_SIZE})")
    args = cli.parse_with_overrides(p, argv)
    if args.opts and not args.config_file:
        p.error(f"KEY VALUE overrides ({' '.join(args.opts)}) apply to a detector's --config only")
    if args.config_file and (args.arch or args.image_size):
        p.error("--arch and --image-size are a backbone's; a detector's architecture and test size come from "
                "--config")
    cli.setup_logging()
    output = args.output or default_output(args.weights, args.format)
    if args.config_file:
        from seed_det.onnx_export import export_detector_onnx
        summary = export_detector_onnx(args.weights, args.config_file, output, args.opts, overwrite=args.overwrite)
    else:
        summary = export_backbone_onnx(args.weights, output, arch=args.arch,
                                       image_size=args.image_size or DEFAULT_IMAGE_SIZE, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
