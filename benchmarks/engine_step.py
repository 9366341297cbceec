#!/usr/bin/env python
"""Training-step time of the portable torchvision engine against Detectron2, same config, same data,
same converted weights, on this machine (CPU), side by side in one run; and of the torchvision
engine in 2 processes (gloo, `--num-gpus 2`, the same global batch split in two, the CPU's threads
shared between them) against 1.

Each run trains twice, for N and 3N iterations, in fresh processes; the step time is
(T(3N) - T(N)) / 2N, which cancels start-up, data registration and evaluation.

    python benchmarks/engine_step.py [--config configs/demo/shapes_r18_fpn.yaml] [--iters 10]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _prepare(work: str, size: int) -> tuple[str, str]:
    """Shapes data and a converted random-init ResNet-18 (weights only matter for loading)."""
    import torch
    import torchvision
    from seed_det.convert import convert_to_d2
    from seed_det.data.synthetic.shapes import write_shapes_dataset
    data = write_shapes_dataset(os.path.join(work, "shapes"), num_train=64, num_val=8, size=size, seed=0)["root"]
    net = torchvision.models.resnet18()
    pth = os.path.join(work, "r18.pth")
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, pth)
    pkl = os.path.join(work, "r18.pkl")
    convert_to_d2(pth, pkl)
    return data, pkl


def _train_seconds(engine: str, config: str, data: str, weights: str, iters: int, out: str, size: int, batch: int,
                   procs: int = 1) -> float:
    opts = ["MODEL.WEIGHTS", weights,
            "DATASETS.VOC", repr([["bench_train", data, "train", 2007], ["bench_val", data, "val", 2007]]),
            "DATASETS.TRAIN", "('bench_train',)", "DATASETS.TEST", "('bench_val',)",
            "INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", str(size),
            "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(size),
            "SOLVER.MAX_ITER", str(iters), "SOLVER.IMS_PER_BATCH", str(batch), "SOLVER.BASE_LR", "0.005", "SOLVER.WARMUP_ITERS", "10",
            "SOLVER.CHECKPOINT_PERIOD", "100000", "DATALOADER.NUM_WORKERS", "1", "SEED", "0",
            "MODEL.DEVICE", "cpu", "OUTPUT_DIR", out, "RESULTS_CSV", os.path.join(out, "results_detection.csv")]
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config", config, "--engine", engine,
           "--num-gpus", str(procs), *opts]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} run ({procs} process(es)) failed:\n{proc.stderr[-3000:]}")
    return elapsed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(REPO, "configs", "demo", "shapes_r18_fpn.yaml"))
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--no-ddp", action="store_true", help="skip the 2-process (gloo) run")
    p.add_argument("--json")
    args = p.parse_args(argv)
    from seed_det.engines import detectron2_available
    engines = ["torchvision"] + (["detectron2"] if detectron2_available() else [])
    if len(engines) == 1:
        print("Detectron2 is not installed here: only the torchvision engine is timed (no ratio).")
    work = tempfile.mkdtemp(prefix="seed_engine_bench_")
    data, weights = _prepare(work, args.size)
    runs = [(engine, engine, 1) for engine in engines]
    if not args.no_ddp:
        runs.append(("torchvision, 2 processes (gloo)", "torchvision", 2))
    per_step = {}
    for label, engine, procs in runs:
        times = [_train_seconds(engine, args.config, data, weights, n, os.path.join(work, f"{engine}{procs}", name),
                                args.size, args.batch, procs)
                 for n, name in ((args.iters, "short"), (3 * args.iters, "long"))]
        per_step[label] = (times[1] - times[0]) / (2 * args.iters)
    from seed_core.precision import cpu_description
    cpu = cpu_description()
    res = {"config": os.path.relpath(args.config, REPO), "image_size": args.size, "batch": args.batch,
           "cpu": cpu, "seconds_per_step": per_step}
    print(f"\nconfig {res['config']}, {args.size} px, global batch {args.batch}, CPU: {cpu}")
    print("| engine | s/step |\n|---|---:|")
    for k, v in per_step.items():
        print(f"| {k} | {v:.3f} |")
    if "detectron2" in per_step:
        res["ratio_torchvision_over_detectron2"] = per_step["torchvision"] / per_step["detectron2"]
        print(f"\ntorchvision / Detectron2 step time: {res['ratio_torchvision_over_detectron2']:.2f}")
    ddp = "torchvision, 2 processes (gloo)"
    if ddp in per_step:
        res["ratio_2_processes_over_1"] = per_step[ddp] / per_step["torchvision"]
        print(f"torchvision 2 processes / 1 process step time: {res['ratio_2_processes_over_1']:.2f} "
              "(same global batch; the CPU's threads shared by the processes)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
