#!/usr/bin/env python
"""Convert a student checkpoint (ResNet or timm network) to a Detectron2 backbone checkpoint (.pkl).

    python tools/convert_to_d2.py runs/seed_r18/student_backbone.pth pretrained/seed_r18.pkl

Accepts student_backbone.pth (+ meta.json), a full distillation checkpoint, MoCo checkpoints and
torchvision ResNet state dicts (ResNet-18/34/50/101/152), and timm students (MobileNetV3,
EfficientNet, ...: student_backbone.pth with the meta.json naming the architecture). Installed as
`seed-convert`.
"""
import json
import logging
import sys

from seed_det.convert import convert_to_d2
from tools import cli


def main(argv=None) -> int:
    return cli.run(lambda: _main(argv))


def _main(argv) -> int:
    p = cli.ArgumentParser(__doc__)
    p.add_argument("input", help="PyTorch checkpoint (.pth/.pth.tar)")
    p.add_argument("output", help="Detectron2 checkpoint to write (.pkl)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    summary = convert_to_d2(args.input, args.output, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    if "depth" in summary:
        print(f"Fine-tune with: python tools/train_net.py --config configs/voc_r{summary['depth']}_seed.yaml "
              f"MODEL.WEIGHTS {args.output}")
    else:  # a timm student (MobileNetV3, EfficientNet, ...): configs/voc_<arch>_fpn_seed.yaml
        print(f"Fine-tune with a config whose MODEL.TIMM.ARCH is {summary['arch']}, e.g. python tools/train_net.py "
              f"--config configs/voc_mnv3l_fpn_seed.yaml {summary['config_overrides']} MODEL.WEIGHTS {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
