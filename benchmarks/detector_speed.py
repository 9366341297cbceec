#!/usr/bin/env python
"""Inference speed of detectors, side by side in one run: images/s of the torchvision engine's
Faster R-CNN for each config, at the config's test size, and each one's speed relative to the first
(R18-FPN). The rounds alternate between the detectors, so that a machine that slows down or speeds
up during the run does not favour one of them.

    python benchmarks/detector_speed.py                       # digit scenes (96 px) and VOC (800 px)
    python benchmarks/detector_speed.py --suite voc --rounds 5
    python benchmarks/detector_speed.py --quick               # a few images, to check that it runs

Weights are random: the time of a forward pass does not depend on them, except through the number
of boxes that survive to the heads, which each config caps (RPN.POST_NMS_TOPK_TEST,
TEST.DETECTIONS_PER_IMAGE) the same way for every backbone. Results (full runs only) go to
benchmarks/results/detector_speed.json.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (detector, config); the digit-scene configs get their size from the benchmarks (96 px scenes).
SUITES = {
    "digits": [("R18-FPN", "configs/demo/digits_r18_fpn.yaml"),
               ("MobileNetV3-Small-0.5-FPN", "configs/demo/digits_mnv3s_fpn.yaml")],
    "voc": [("R18-FPN", "configs/voc_r18_fpn_seed.yaml"),
            ("MobileNetV3-Large-FPN", "configs/voc_mnv3l_fpn_seed.yaml"),
            ("EfficientNet-B0-FPN", "configs/voc_effb0_fpn_seed.yaml")],
}
TEST_SIDE = {"digits": 96}   # other suites: the config's INPUT.MIN_SIZE_TEST


def build(config: str, side: int | None = None):
    """(model in test mode, test image side) for `config` (at `side` px if given), random weights,
    no data read."""
    from seed_det.config import load_det_config
    from seed_det.engines.tv.model import build_model, set_input_sizes
    sizes = ["INPUT.MIN_SIZE_TEST", side, "INPUT.MAX_SIZE_TEST", side] if side else []
    cfg = load_det_config(os.path.join(REPO, config), ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *sizes],
                          needs_test_set=False)
    model = build_model(cfg).eval()
    set_input_sizes(model, cfg, train=False)
    return model, int(cfg.INPUT.MIN_SIZE_TEST)


def seconds_per_image(model, side: int, images: int) -> float:
    import torch
    g = torch.Generator().manual_seed(0)
    width = side if side < 400 else side * 4 // 3   # digit scenes are square; photos 4:3
    batch = [torch.rand(3, side, width, generator=g) * 255 for _ in range(images)]
    with torch.inference_mode():
        model([batch[0]])  # warm-up: allocations and one-time setup
        t0 = time.perf_counter()
        for img in batch:
            model([img])
        return (time.perf_counter() - t0) / images


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", nargs="+", default=list(SUITES), choices=list(SUITES))
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    p.add_argument("--images", type=int, default=0, help="images per round (0: 20 at 96 px, 4 at 800 px)")
    p.add_argument("--quick", action="store_true", help="one round of one image: checks that it runs, writes nothing")
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results", "detector_speed.json"))
    args = p.parse_args(argv)
    import torch
    rounds = 1 if args.quick else args.rounds
    report = {"machine": _cpu_name(), "torch_threads": torch.get_num_threads(),
              "date": time.strftime("%Y-%m-%d"), "suites": {}}
    for suite in args.suite:
        models = [(name, *build(cfg, TEST_SIDE.get(suite))) for name, cfg in SUITES[suite]]
        times = {name: [] for name, _, _ in models}
        for _ in range(rounds):
            for name, model, side in models:
                n = 1 if args.quick else (args.images or (20 if side < 400 else 4))
                times[name].append(seconds_per_image(model, side, n))
        base = statistics.median(times[models[0][0]])
        rows = []
        print(f"\n{suite}: test side {models[0][2]} px, median of {rounds} round(s), {torch.get_num_threads()} threads")
        print(f"| detector | images/s | relative to {models[0][0]} |\n|---|---:|---:|")
        for name, _, side in models:
            s = statistics.median(times[name])
            rows.append({"detector": name, "side": side, "images_per_s": 1 / s, "relative": base / s})
            print(f"| {name} | {1 / s:.2f} | {base / s:.2f}× |")
        report["suites"][suite] = rows
    if not args.quick:
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json + ".tmp", "w") as f:
            json.dump(report, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
