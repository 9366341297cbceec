#!/usr/bin/env python
"""Training-step and inference time on CPU of a digit-scene detector's heads as Detectron2 sizes
them against the light heads of its config in configs/demo/, same images and boxes, torchvision
engine, alternating in one run:
- fpn (digits_r18_fpn.yaml): Detectron2's widths (256-channel FPN, 1024-wide 2fc box head, 128 RoIs
  per image, a quarter of Detectron2's 512) against 128 channels, 256 wide, 32 RoIs;
- c4 (digits_r18_c4.yaml): res5 on 14x14 RoIAlign features (Detectron2's C4) against the config's
  8x8; the RoI count is the config's.

    python benchmarks/det_head_step.py [--detector fpn|c4] [--size 96] [--batch 4] [--steps 5]
"""
import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# detector: (its config, Detectron2's sizes as overrides of it)
DETECTORS = {
    "fpn": ("digits_r18_fpn.yaml", ["MODEL.FPN.OUT_CHANNELS", "256", "MODEL.ROI_BOX_HEAD.FC_DIM", "1024",
                                    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "128"]),
    "c4": ("digits_r18_c4.yaml", ["MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "14"]),
}


def _model(config: str, size: int, extra: list):
    from seed_det.config import load_det_config
    from seed_det.engines.tv.model import build_model
    opts = ["INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", str(size), "INPUT.MIN_SIZE_TEST", str(size),
            "INPUT.MAX_SIZE_TEST", str(size), "DATASETS.TRAIN", "('bench',)", "DATASETS.TEST", "('bench',)"]
    cfg = load_det_config(os.path.join(REPO, "configs", "demo", config), opts + extra)
    return cfg, build_model(cfg)


def main(argv=None) -> int:
    import logging

    import torch

    from seed_det.engines.tv.model import set_input_sizes

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", choices=sorted(DETECTORS), default="fpn")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model and round (3 rounds)")
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    s = args.size
    images = [torch.rand(3, s, s) * 255 for _ in range(args.batch)]
    boxes = torch.tensor([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.8, 0.9], [0.2, 0.6, 0.45, 0.95]]) * s
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2, 3])} for _ in images]
    config, d2_sizes = DETECTORS[args.detector]
    models = {"Detectron2's sizes: " + " ".join(d2_sizes[::2]).replace("MODEL.", ""): _model(config, s, d2_sizes),
              f"{config} as it is": _model(config, s, [])}
    times = {k: {"train": [], "eval": []} for k in models}
    for _ in range(3):   # alternate, so both see the same machine load
        for name, (cfg, model) in models.items():
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)
            model.train()
            set_input_sizes(model, cfg, True)
            for i in range(args.steps + 1):
                start = time.perf_counter()
                loss = sum(model(images, targets).values())
                opt.zero_grad()
                loss.backward()
                opt.step()
                if i:   # the first step of a round warms up
                    times[name]["train"].append(time.perf_counter() - start)
            model.eval()
            set_input_sizes(model, cfg, False)
            with torch.no_grad():
                for i in range(args.steps + 1):
                    start = time.perf_counter()
                    model(images[:1])
                    if i:
                        times[name]["eval"].append(time.perf_counter() - start)
    from seed_core.precision import cpu_description
    print(f"CPU: {cpu_description()}, torch {torch.__version__}, one thread; "
          f"{s} px, batch {args.batch}")
    print("| heads | train s/step | eval s/image |")
    print("|---|---:|---:|")
    med = {k: {m: sorted(v)[len(v) // 2] for m, v in t.items()} for k, t in times.items()}
    for name, m in med.items():
        print(f"| {name} | {m['train']:.2f} | {m['eval']:.3f} |")
    a, b = med.values()
    print(f"config / Detectron2's sizes: train {b['train'] / a['train']:.2f}, eval {b['eval'] / a['eval']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
