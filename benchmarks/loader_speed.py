#!/usr/bin/env python
"""Images per second of our training input pipeline against the official recipe, on the same
full-size real JPEGs, through a DataLoader with 1, 2 and all cores' worker processes:

  official  SEED's main.py: an ImageFolder-style dataset (PIL open + convert("RGB")) and
            torchvision's PIL transforms of MoCo-v2 (RandomResizedCrop 224 scale (0.2, 1),
            ColorJitter 0.4/0.4/0.4/0.1 p 0.8, grayscale p 0.2, Gaussian blur sigma 0.1-2 p 0.5,
            flip, ToTensor, Normalize)
  ours      seed_core.data.UnlabeledImages with the default pipeline (seed_core.photo_transform):
            the same distribution (tests/seed_core/test_photo_transform.py)

The photos are scikit-image's sample photographs written as JPEGs of ImageNet-like sizes
(tools/benchmarking/photos.py). Also times one view per image size in this process on one thread,
to show where the difference comes from. Prints a table and `speed-up of ours over official: N×`.

    python benchmarks/loader_speed.py                    # -> benchmarks/results/loader_speed.json
    python benchmarks/loader_speed.py --workers 1 2 --batches 20
    python benchmarks/loader_speed.py --quick            # seconds: a check that it runs (temporary folder)
    python benchmarks/loader_speed.py --profile          # where a view's time goes, per stage (writes nothing)
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
RESULT_FILE = "loader_speed.json"


class OfficialImages:
    """SEED's main.py input: PIL-decoded file (torchvision's ImageFolder loader) -> transform."""

    def __init__(self, files: list[str], transform):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from torchvision.datasets.folder import pil_loader
        return self.transform(pil_loader(self.files[index]))


def pipelines(files: list[str], size: int) -> dict:
    """name -> (dataset, collate_fn) for both pipelines over `files`."""
    from seed_core.augmentations import build_transform
    from seed_core.data import UnlabeledImages, collate
    return {"official": (OfficialImages(files, build_transform("mocov2", size, pipeline="torchvision")), None),
            "ours": (UnlabeledImages(files, build_transform("mocov2", size, pipeline="fast")), collate)}


def loader_images_per_s(dataset, collate_fn, workers: int, batch: int, batches: int, warmup: int) -> float:
    """Images/s of a DataLoader with `workers` worker processes (one torch thread each), after
    `warmup` batches (worker start-up excluded)."""
    from torch.utils.data import DataLoader
    total = (batches + warmup) * batch
    order = [i % len(dataset) for i in range(total)]
    loader = DataLoader(dataset, batch_size=batch, sampler=order, collate_fn=collate_fn, num_workers=workers,
                        persistent_workers=False, prefetch_factor=4 if workers else None, drop_last=True)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - start
    del it
    return batches * batch / seconds


def ms_per_view(dataset, indices: list[int], rounds: int = 3) -> float:
    """Median over `rounds` of the mean time of one sample, in this process (after one untimed
    sample: imports and first-call set-up are not a view's cost)."""
    import statistics
    dataset[indices[0]]
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in indices:
            dataset[i]
        times.append(1000 * (time.perf_counter() - start) / len(indices))
    return statistics.median(times)


# The stages of a view, in the recipe's order, as both pipelines name them.
STAGES = ("decode", "crop+resize", "brightness", "contrast", "saturation", "hue", "grayscale", "blur", "flip",
          "to tensor+normalise", "other")


class StageTimer:
    """Seconds per stage of functions wrapped by `wrap`; a stage called inside another (the grey
    image of a saturation change) counts for the outer one."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._depth = 0

    def wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start
                self._depth -= 1
        return timed


@contextlib.contextmanager
def _patched(patches: list[tuple[object, str, object]]):
    """setattr(owner, name, value) for each, undone on exit."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def _official_stages(dataset: OfficialImages, timer: StageTimer) -> list:
    """What to wrap in the official pipeline: the decoder, ColorJitter's four functions, the other
    transforms by type."""
    import torchvision.datasets.folder as folder
    import torchvision.transforms.functional as F
    named = {"RandomResizedCrop": "crop+resize", "RandomGrayscale": "grayscale", "RandomHorizontalFlip": "flip",
             "ToTensor": "to tensor+normalise", "Normalize": "to tensor+normalise"}
    steps = []
    for t in dataset.transform.transforms:
        inner = type(t.transforms[0]).__name__ if hasattr(t, "transforms") else ""
        stage = "blur" if inner == "PILGaussianBlur" else named.get(type(t).__name__)
        steps.append(timer.wrap(stage, t) if stage else t)  # ColorJitter: timed by its functions below
    return [(dataset.transform, "transforms", steps), (folder, "pil_loader", timer.wrap("decode", folder.pil_loader))] + [
        (F, f"adjust_{op}", timer.wrap(op, getattr(F, f"adjust_{op}"))) for op in ("brightness", "contrast", "saturation", "hue")]


def _our_stages(dataset, timer: StageTimer) -> list:
    """What to wrap in ours: the decoder, the crop's resampling, the photo ops, OpenCV's flip and
    normalising transform."""
    import cv2

    import seed_core.data as data
    from seed_core import photo_ops, photo_transform
    t = dataset.transform
    jitter = tuple(timer.wrap(name, op) for name, op in zip(("brightness", "contrast", "saturation", "hue"),
                                                           photo_transform._JITTER_OPS))
    return [(data, "decode_rgb", timer.wrap("decode", data.decode_rgb)),
            (t, "_crop_resize", timer.wrap("crop+resize", t._crop_resize)),
            (photo_transform, "_JITTER_OPS", jitter),
            (photo_ops, "to_grey", timer.wrap("grayscale", photo_ops.to_grey)),
            (photo_ops, "gaussian_blur", timer.wrap("blur", photo_ops.gaussian_blur)),
            (cv2, "flip", timer.wrap("flip", cv2.flip)), (cv2, "transform", timer.wrap("to tensor+normalise", cv2.transform))]


def profile_stages(loaders: dict, rounds: int) -> dict:
    """{pipeline: {stage: ms per view}} over every file, `rounds` times, the pipelines interleaved
    (a round of each in turn, so that a busy machine slows both alike), on one thread."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    timers = {name: StageTimer() for name in loaders}
    totals = defaultdict(float)
    views = 0
    try:
        for r in range(rounds):
            for name, (dataset, _) in loaders.items():
                stages = _our_stages if name == "ours" else _official_stages
                with _patched(stages(dataset, timers[name])):
                    start = time.perf_counter()
                    for i in range(len(dataset)):
                        dataset[(r, i)] if name == "ours" else dataset[i]
                    totals[name] += time.perf_counter() - start
            views += len(next(iter(loaders.values()))[0])
    finally:
        torch.set_num_threads(threads)
    out = {}
    for name, timer in timers.items():
        ms = {stage: 1000 * s / views for stage, s in timer.seconds.items()}
        ms["other"] = 1000 * totals[name] / views - sum(ms.values())  # plan, draws, Python
        out[name] = ms
    return out


def print_profile(profile: dict) -> None:
    print("\nWhere a view's time goes (one thread; ms per view and share of the view's time)\n")
    print("| stage | official ms | share | ours ms | share |\n|---|---:|---:|---:|---:|")
    totals = {name: sum(ms.values()) for name, ms in profile.items()}
    for stage in STAGES:
        cells = [f"{profile[n].get(stage, 0.0):.3f} | {100 * profile[n].get(stage, 0.0) / totals[n]:.1f} %"
                 for n in ("official", "ours")]
        print(f"| {stage} | {' | '.join(cells)} |")
    print(f"| total | {totals['official']:.3f} | | {totals['ours']:.3f} | |")
    print(f"\nspeed-up of ours over official per view on one thread: {totals['official'] / totals['ours']:.2f}×")


def main(argv=None) -> int:
    from tools.cli import ArgumentParser, add_results_dir, run

    def body() -> int:
        import torch
        from seed_core.precision import cpu_description
        from seed_core.results import write_json
        from tools.benchmarking.photos import IMAGENET_LIKE_SIZES, parse_sizes, write_photo_jpegs

        p = ArgumentParser(__doc__)
        add_results_dir(p, help=f"{RESULT_FILE} goes here (default: {RESULTS}; with --quick a temporary folder)")
        p.add_argument("--workers", type=int, nargs="+", default=None,
                       help="DataLoader worker counts (default: 1, 2 and all cores)")
        p.add_argument("--sizes", nargs="+", default=[f"{w}x{h}" for w, h in IMAGENET_LIKE_SIZES],
                       help="JPEG sizes WIDTHxHEIGHT, every photo at each")
        p.add_argument("--image-size", type=int, default=224, help="crop size, px")
        p.add_argument("--batch", type=int, default=64)
        p.add_argument("--batches", type=int, default=30, help="timed batches per loader")
        p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
        p.add_argument("--quick", action="store_true", help="tiny run to a temporary folder: checks that it works")
        p.add_argument("--profile", type=int, nargs="?", const=3, default=0, metavar="ROUNDS",
                       help="instead: time each stage of a view in both pipelines on one thread, ROUNDS "
                            "passes over the photos (default 3), and print the table (no results file)")
        args = p.parse_args(argv)
        try:
            sizes = parse_sizes(args.sizes)
        except ValueError as e:
            p.error(str(e))
        cores = os.cpu_count() or 1
        workers = args.workers or sorted({1, 2, cores})
        if any(w < 0 for w in workers):
            p.error("--workers must be >= 0")
        if args.profile < 0:
            p.error("--profile takes a number of rounds >= 1")
        if args.quick:
            if args.out_dir and os.path.realpath(args.out_dir) == os.path.realpath(RESULTS):
                p.error(f"--quick would overwrite the committed results in {RESULTS}; leave --output-dir out")
            sizes, workers = sizes[:2], args.workers or [0, 1]
            args.batch, args.batches, args.warmup = 4, 2, 1
        out_dir = args.out_dir or (tempfile.mkdtemp(prefix="loader_speed_") if args.quick else RESULTS)

        with tempfile.TemporaryDirectory(prefix="loader_speed_photos_") as folder:
            files = write_photo_jpegs(folder, sizes, per_size=2 if args.quick else None)
            loaders = pipelines(files, args.image_size)
            if args.profile:
                print_profile(profile_stages(loaders, 1 if args.quick else args.profile))
                return 0
            rows = []
            for w in workers:
                row = {"workers": w}
                for name, (dataset, collate_fn) in loaders.items():
                    row[f"{name}_images_per_s"] = loader_images_per_s(dataset, collate_fn, w, args.batch,
                                                                      args.batches, args.warmup)
                row["speedup"] = row["ours_images_per_s"] / row["official_images_per_s"]
                rows.append(row)
            # One view per size, in this process on one thread (as in a worker).
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            per_size = []
            for w, h in sizes:
                indices = [i for i, f in enumerate(files) if os.path.basename(f).startswith(f"{w}x{h}_")]
                t = {name: ms_per_view(ds, indices, 1 if args.quick else 3) for name, (ds, _) in loaders.items()}
                per_size.append({"size": f"{w}x{h}", "official_ms": t["official"], "ours_ms": t["ours"],
                                 "speedup": t["official"] / t["ours"]})
            torch.set_num_threads(threads)

        result = {"machine": {"cpu": cpu_description(), "cores": cores, "torch": torch.__version__},
                  "setup": {"photos": len(files), "sizes": [f"{w}x{h}" for w, h in sizes], "batch": args.batch,
                            "batches": args.batches, "image_size": args.image_size, "quick": args.quick},
                  "loader": rows, "one_thread_per_size": per_size}
        print_table(result)
        os.makedirs(out_dir, exist_ok=True)
        write_json(os.path.join(out_dir, RESULT_FILE), result)
        print(f"\nwrote {os.path.join(out_dir, RESULT_FILE)}")
        return 0

    from seed_core.errors import SeedError
    return run(body, errors=(SeedError, ImportError))  # ImportError: scikit-image missing


def print_table(r: dict) -> None:
    s = r["setup"]
    print(f"\nInput pipeline: {s['photos']} JPEGs ({', '.join(s['sizes'])}), {s['image_size']} px views, "
          f"batch {s['batch']}; {r['machine']['cpu']}, torch {r['machine']['torch']}")
    print("\n| workers | official img/s | ours img/s | speed-up |\n|---:|---:|---:|---:|")
    for row in r["loader"]:
        print(f"| {row['workers']} | {row['official_images_per_s']:.0f} | {row['ours_images_per_s']:.0f} | "
              f"{row['speedup']:.2f}× |")
    print("\n| JPEG size | official ms/view | ours ms/view | speed-up |\n|---|---:|---:|---:|")
    for row in r["one_thread_per_size"]:
        print(f"| {row['size']} | {row['official_ms']:.2f} | {row['ours_ms']:.2f} | {row['speedup']:.2f}× |")
    print()
    for row in r["loader"]:
        print(f"speed-up of ours over official: {row['speedup']:.2f}× ({row['workers']} workers)")


if __name__ == "__main__":
    sys.exit(main())
