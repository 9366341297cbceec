#!/usr/bin/env python
"""Speed of one SEED training step on this machine, side by side in one run, on the same inputs:

  ours       the training step of seed_core (frozen teacher at the default TRAIN.TEACHER_PRECISION,
             bf16 autocast student when the CPU has native bf16, channels_last, in-place queue read,
             enqueue after step)
  reference  the same math written the straightforward way of the paper's code: fp32, contiguous
             tensors, queue cloned every step, two full-queue einsums
  bare       student forward+backward + teacher forward only, in our precision (the floor)

and the share of queue + similarity + loss in our step. Variants are timed interleaved (A B C A B C
...) so machine noise hits them alike. Prints a markdown table; --json writes the figures.

    python benchmarks/distill_step.py                       # R18 <- R50, K 65536, batch 64, 112 px
    python benchmarks/distill_step.py --teacher resnet152 --queue-size 4096
    python benchmarks/distill_step.py --with-data --image-size 224
        # + end to end: the training DataLoader on ImageNet-sized photo JPEGs, and its share of the step
    python benchmarks/distill_step.py --device cuda [--compile]
        # on a GPU: AMP (bf16, or fp16 with loss scaling), channels_last, optionally torch.compile
    python benchmarks/distill_step.py --small-patches 6     # + the cost of SEED's small patches

Teacher precision instead of speed: the total-variation distance between SEED's teacher targets with
the teacher in bf16 / fp16 / fp32 / bf16 with an fp32 last stage + head, against fp64, on real images
(scikit-learn's digits, or crops of its two sample photographs) and a queue of the teacher's own
embeddings of other real images:

    python benchmarks/distill_step.py --teacher-precision-tv --teacher resnet34 \
        --tv-weights output/paper_claim/runs/teacher-resnet34-moco-<key>/checkpoint.pth --tv-images digits
    python benchmarks/distill_step.py --teacher-precision-tv --teacher resnet50 --tv-images photos
        # no weights: random convolutions, BatchNorm statistics re-estimated on the photo crops
"""
import argparse
import json
import os
import resource
import time

import torch
import torch.nn.functional as F

from seed_core.config import get_default_cfg
from seed_core.encoders import build_student
from seed_core.precision import autocast, cpu_supports_bf16, keep_large_allocations_on_heap, make_grad_scaler, resolve_precision
from seed_core.queue import EmbeddingQueue
from seed_core.teacher_precision import resolve_teacher_precision
from seed_core.teachers import FrozenTeacher
from tools.benchmarking.distill_steps import (LOSS, TEACHER_PRECISION, OursStep, make_teacher, synchronize,
                                              time_interleaved)
from tools.benchmarking.photos import IMAGENET_LIKE_SIZES


class ReferenceStep:
    """Contiguous tensors, queue (D, K) cloned per step, einsum similarities: the paper code's way;
    fp32 on CPU, on a GPU the whole forward in fp16 autocast with loss scaling, as the official code."""

    def __init__(self, student, teacher, queue_init, device=torch.device("cpu")):
        self.student, self.teacher, self.device = student.to(device), teacher.float().to(device), device
        self.queue = queue_init.t().contiguous().clone().to(device)  # (D, K)
        self.ptr = 0
        self.opt = torch.optim.SGD(self.student.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        amp = "fp16" if device.type == "cuda" else "fp32"
        self.autocast, self.scaler = autocast(amp, device), make_grad_scaler(amp, device)

    def loss(self, x):
        x = x.to(self.device)
        with self.autocast:
            return self._loss(x)

    def _loss(self, x):
        s = F.normalize(self.student(x), dim=1)
        with torch.no_grad():
            t = F.normalize(self.teacher(x), dim=1)
        queue = self.queue.clone().detach()
        l_stu = torch.cat([torch.einsum("nc,nc->n", s, t)[:, None], torch.einsum("nc,ck->nk", s, queue)], 1)
        l_tea = torch.cat([torch.einsum("nc,nc->n", t, t)[:, None], torch.einsum("nc,ck->nk", t, queue)], 1)
        loss = -(F.softmax(l_tea / LOSS.TEACHER_TEMP, 1) * F.log_softmax(l_stu / LOSS.STUDENT_TEMP, 1)).sum(1).mean()
        return loss, t

    def __call__(self, x):
        loss, t = self.loss(x)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        b = t.shape[0]
        idx = torch.arange(self.ptr, self.ptr + b, device=self.device) % self.queue.shape[1]
        self.queue[:, idx] = t.t().to(self.queue.dtype)
        self.ptr = (self.ptr + b) % self.queue.shape[1]
        return loss


class BareStep:
    """Networks only: student fwd+bwd and teacher fwd, in our precision; no queue, no loss."""

    def __init__(self, ours: OursStep):
        self.o = ours

    def __call__(self, x):
        o = self.o
        x = o._inputs(x)
        z_t = o.objective.teacher_embedding(x).clone()
        with autocast(o.precision, x.device):
            out = o.forward_student(x)
        loss = (F.normalize(out.float(), dim=1) * z_t).sum()
        o.opt.zero_grad(set_to_none=True)
        o.scaler.scale(loss).backward()
        o.scaler.step(o.opt)
        o.scaler.update()
        return loss


class QueueLossStep:
    """Only what the queue adds: similarities, soft cross-entropy (fwd+bwd) and enqueue."""

    def __init__(self, ours: OursStep, batch: int, dim: int, queue: EmbeddingQueue | None = None,
                 enqueue_rows: int | None = None):
        g = torch.Generator().manual_seed(3)
        self.zs = F.normalize(torch.randn(batch, dim, generator=g), dim=1).to(ours.device).requires_grad_(True)
        self.zt = F.normalize(torch.randn(batch, dim, generator=g), dim=1).to(ours.device)
        self.queue = queue if queue is not None else ours.queue
        self.enqueued = self.zt[: enqueue_rows or batch]  # small patches: one per image is enqueued

    def __call__(self, x):
        from seed_core.losses import seed_loss
        loss = seed_loss(self.zs, self.zt, self.queue.embeddings, LOSS.STUDENT_TEMP, LOSS.TEACHER_TEMP,
                         self.queue.shadow)
        loss.backward()
        self.queue.enqueue(self.enqueued)
        return loss


def data_throughput(args, ours: OursStep) -> dict:
    """End to end: the training DataLoader (worker processes, persistent, pinned memory on a GPU)
    decoding and augmenting full-size photo JPEGs (tools/benchmarking/photos.py) and feeding our
    step, against the same step on a resident batch."""
    import math
    import tempfile
    from torch.utils.data import DataLoader
    from seed_core.augmentations import build_transform
    from seed_core.data import ResumableSampler, UnlabeledImages, collate
    from tools.benchmarking.photos import parse_sizes, write_photo_jpegs
    with tempfile.TemporaryDirectory(prefix="seed_bench_photos_") as folder:
        photos = write_photo_jpegs(folder, parse_sizes(args.photo_sizes))
        needed = args.batch * (args.repeats + args.warmup)
        files = photos * math.ceil(needed / len(photos))   # one epoch covers the timed steps
        ds = UnlabeledImages(files, build_transform("mocov2", args.image_size, pipeline=args.pipeline))
        loader = DataLoader(ds, batch_size=args.batch, sampler=ResumableSampler(len(files), args.batch),
                            collate_fn=collate, num_workers=args.workers, persistent_workers=args.workers > 0,
                            pin_memory=ours.device.type == "cuda",
                            prefetch_factor=4 if args.workers > 0 else None, drop_last=True)
        it = iter(loader)
        for _ in range(args.warmup):
            ours(next(it)[0])
        synchronize(ours.device)
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            ours(next(it)[0])
        synchronize(ours.device)
        seconds = (time.perf_counter() - t0) / args.repeats
        del it
    return {"seconds_per_step": seconds, "images_per_s": args.batch / seconds, "workers": args.workers,
            "pipeline": args.pipeline, "photos": f"{len(photos)} JPEGs, {' '.join(args.photo_sizes)}"}


def small_patch_cost(args, student, teacher, queue_init, precision, x) -> dict:
    """Our step with N small patches per image against our single-view step (same weights, same
    main views, timed interleaved), and the share of both queues + similarities + losses."""
    import copy
    n, side = args.small_patches, args.patch_size
    small = torch.randn(args.batch, n, 3, side, side, generator=torch.Generator().manual_seed(5))
    device = torch.device(args.device)
    single = OursStep(copy.deepcopy(student), teacher, queue_init, precision, device=device)
    multi = OursStep(copy.deepcopy(student), teacher, queue_init, precision, small_patches=True, device=device)
    main_queue = QueueLossStep(multi, args.batch, args.dim)
    small_queue = QueueLossStep(multi, args.batch * n, args.dim, queue=multi.objective.small_queue,
                                enqueue_rows=args.batch)
    inputs = (x, small)
    t = time_interleaved({"single": lambda _: single(x), "small": lambda _: multi(inputs),
                          "queues": lambda _: (main_queue(None), small_queue(None))},
                         None, args.repeats, args.warmup, device)
    return {"num": n, "size": side, "seconds_per_step": {"single_view": t["single"], "with_small": t["small"]},
            "cost_ratio": t["small"] / t["single"], "queues_loss_share": t["queues"] / t["small"]}


def real_images(kind: str, n: int, size: int, seed: int) -> torch.Tensor:
    """`n` real images at `size` px, normalised as in training: digits (scikit-learn's handwritten
    digits through the glyphs augmentation of the digits runs) or photos (random crops of
    scikit-learn's two sample photographs through MoCo-v2's augmentation)."""
    from PIL import Image
    from sklearn.datasets import load_digits, load_sample_images
    from seed_core.augmentations import build_transform
    from seed_det.data.synthetic.digits import digit_to_image
    torch.manual_seed(seed)  # the augmentations draw from torch's global generator
    if kind == "digits":
        pixels = load_digits().images
        order = torch.randperm(len(pixels), generator=torch.Generator().manual_seed(seed))
        tf = build_transform("glyphs", size)
        return torch.stack([tf(digit_to_image(pixels[int(order[i % len(order)])], size)) for i in range(n)])
    photos = [Image.fromarray(p) for p in load_sample_images().images]
    tf = build_transform("mocov2", size, pipeline="torchvision")  # as when the TV figures were measured
    return torch.stack([tf(photos[i % len(photos)]) for i in range(n)])


@torch.no_grad()
def reestimate_batchnorm(net: torch.nn.Module, images: torch.Tensor, batch: int = 64) -> None:
    """Replace every BatchNorm's running statistics by their average over `images` (cumulative
    averaging), so activations have the scale of real data rather than of the init."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    for i in range(0, len(images), batch):
        net(images[i:i + batch])
    net.eval()


def teacher_precision_tv(args) -> dict:
    from seed_core.teacher_precision import measure_target_tv
    from seed_core.teachers import fold_batchnorm, load_teacher
    n_batch, n_queue = args.tv_batch, args.tv_queue
    images = real_images(args.tv_images, n_batch, args.image_size, seed=10)
    queue_images = real_images(args.tv_images, n_queue, args.image_size, seed=11)
    if args.tv_weights:
        teacher, origin = load_teacher(args.tv_weights, args.teacher), f"trained weights {args.tv_weights}"
    else:
        teacher = make_teacher(args.teacher, args.dim)
        reestimate_batchnorm(teacher, real_images(args.tv_images, args.tv_bn_images, args.image_size, seed=12))
        teacher = FrozenTeacher(teacher.backbone, teacher.head)
        origin = f"random convolutions, BatchNorm statistics re-estimated on {args.tv_bn_images} {args.tv_images} images"
    t0 = time.perf_counter()
    tv = measure_target_tv(teacher, images, queue_images, LOSS.TEACHER_TEMP, fold=fold_batchnorm)
    return {"teacher": args.teacher, "origin": origin, "images": args.tv_images, "image_size": args.image_size,
            "batch": n_batch, "queue": n_queue, "teacher_temp": LOSS.TEACHER_TEMP, "reference": "fp64",
            "tv": tv, "seconds": time.perf_counter() - t0,
            "machine": {"cpu_threads": torch.get_num_threads(), "native_bf16": cpu_supports_bf16(),
                        "torch": torch.__version__}}


def print_tv_table(r: dict) -> None:
    print(f"\nSEED teacher targets vs an fp64 teacher: {r['teacher']} ({r['origin']}), {r['batch']} {r['images']} "
          f"images at {r['image_size']} px, queue of {r['queue']} teacher embeddings, tau_T {r['teacher_temp']}; "
          f"torch {r['machine']['torch']}, native bf16: {r['machine']['native_bf16']}")
    print("\n| teacher precision | TV mean | TV max | max embedding error |\n|---|---:|---:|---:|")
    for name, v in r["tv"].items():
        print(f"| {name} | {v['tv_mean']:.2e} | {v['tv_max']:.2e} | {v['embedding_err_max']:.2e} |")
    print(f"({r['seconds']:.0f} s)")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", default="resnet18")
    p.add_argument("--teacher", default="resnet50")
    p.add_argument("--queue-size", type=int, default=65536)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="student autocast (auto: bf16 where native, on older GPUs fp16 with loss scaling)")
    p.add_argument("--teacher-precision", default=TEACHER_PRECISION, choices=["auto", "fp32", "bf16", "fp16"],
                   help="precision of the frozen teacher in 'ours' (default: the trainer's, "
                        f"{TEACHER_PRECISION}); the reference keeps its teacher in fp32")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--compile", action="store_true", help="torch.compile the student (ours and bare)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--with-data", action="store_true", help="also measure throughput with data loading")
    p.add_argument("--workers", type=int, default=None,
                   help="data-loading workers for --with-data (default: DATA.NUM_WORKERS, at most the cores)")
    p.add_argument("--pipeline", default=get_default_cfg().DATA.PIPELINE, choices=["fast", "torchvision"],
                   help="input pipeline for --with-data (DATA.PIPELINE)")
    p.add_argument("--photo-sizes", nargs="+", default=[f"{w}x{h}" for w, h in IMAGENET_LIKE_SIZES],
                   help="JPEG sizes WIDTHxHEIGHT of the photos --with-data decodes")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: library default)")
    p.add_argument("--small-patches", type=int, default=0,
                   help="also time SEED's small-patch variant with this many small views per image")
    p.add_argument("--patch-size", type=int, default=48, help="side of a small patch, px (96 at 224)")
    p.add_argument("--teacher-precision-tv", action="store_true",
                   help="instead of timing: measure how the teacher's precision moves SEED's targets")
    p.add_argument("--tv-weights", help="teacher checkpoint for --teacher-precision-tv (default: random "
                                        "convolutions with BatchNorm statistics re-estimated on real images)")
    p.add_argument("--tv-images", default="photos", choices=["digits", "photos"])
    p.add_argument("--tv-batch", type=int, default=64)
    p.add_argument("--tv-queue", type=int, default=512)
    p.add_argument("--tv-bn-images", type=int, default=256)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.teacher_precision_tv:
        res = teacher_precision_tv(args)
        print_tv_table(res)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2)
        return res
    if args.workers is None:
        args.workers = min(get_default_cfg().DATA.NUM_WORKERS, os.cpu_count() or 1)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch here (torch.cuda.is_available() is False); "
                "run on a machine with a GPU and a CUDA build of torch, or use --device cpu")
    try:
        precision = resolve_precision(args.precision, device)
    except ValueError as e:
        p.error(str(e))
    # Process-wide allocator setting of the training loop (seed_core.trainer) on CPU; it applies to
    # every variant below alike, the reference included.
    heap = keep_large_allocations_on_heap() if device.type == "cpu" else False

    torch.manual_seed(0)
    student_ours = build_student(args.student, args.dim)
    student_ref = build_student(args.student, args.dim)
    student_ref.load_state_dict(student_ours.state_dict())
    teacher_ours, teacher_ref = make_teacher(args.teacher, args.dim), make_teacher(args.teacher, args.dim)
    queue_init = F.normalize(torch.randn(args.queue_size, args.dim, generator=torch.Generator().manual_seed(2)), dim=1)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(4))

    ours = OursStep(student_ours, teacher_ours, queue_init, precision, device=device, compile_student=args.compile,
                    teacher_precision=args.teacher_precision)
    ref = ReferenceStep(student_ref, teacher_ref, queue_init, device)
    # Same weights, same batch: the two losses before any step must agree.
    loss_ours = ours.loss_only(x)
    with torch.no_grad():
        loss_ref = float(ref.loss(x)[0])

    t = time_interleaved({"ours": ours, "reference": ref, "bare": BareStep(ours),
                          "queue_loss": QueueLossStep(ours, args.batch, args.dim)},
                         x, args.repeats, args.warmup, device)
    res = {
        "machine": {"cpu_threads": torch.get_num_threads(), "native_bf16": cpu_supports_bf16(), "heap_tuned": heap,
                    "torch": torch.__version__,
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
        "setup": {"student": args.student, "teacher": args.teacher, "K": args.queue_size, "batch": args.batch,
                  "image_size": args.image_size, "precision": precision, "channels_last": True,
                  "teacher_precision": resolve_teacher_precision(args.teacher_precision, device.type),
                  "compiled": args.compile},
        "seconds_per_step": t,
        "images_per_s": {k: args.batch / v for k, v in t.items() if k != "queue_loss"},
        "speedup_vs_reference": t["reference"] / t["ours"],
        "queue_similarity_loss_share": t["queue_loss"] / t["ours"],
        "overhead_over_bare": t["ours"] / t["bare"] - 1,
        "loss": {"ours": loss_ours, "reference": loss_ref, "abs_diff": abs(loss_ours - loss_ref)},
        "peak_rss_mb": peak_rss_mb(),
    }
    if args.small_patches:
        res["small_patches"] = small_patch_cost(args, student_ours, teacher_ours, queue_init, precision, x)
        res["peak_rss_mb"] = peak_rss_mb()
    if args.with_data:
        e = data_throughput(args, ours)
        # cost: end-to-end over the model-only step; share: the part of an end-to-end step that
        # the input pipeline adds (decoding and augmenting, in workers beside the step, or waiting for them).
        e["input_pipeline_cost"] = e["seconds_per_step"] / t["ours"] - 1
        e["input_pipeline_share"] = 1 - t["ours"] / e["seconds_per_step"]
        res["end_to_end"] = e
        res["peak_rss_mb"] = peak_rss_mb()
    print_table(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


def print_table(r):
    s = r["setup"]
    print(f"\nSEED step: {s['student']} <- {s['teacher']}, K={s['K']}, batch {s['batch']}, {s['image_size']} px, "
          f"precision {s['precision']}, teacher {s['teacher_precision']}"
          f"{', compiled student' if s['compiled'] else ''} on {r['machine']['device']} "
          f"(native bf16 on the CPU: {r['machine']['native_bf16']}), "
          f"{r['machine']['cpu_threads']} threads, torch {r['machine']['torch']}")
    if r["machine"]["device"] == "cpu" and not r["machine"]["native_bf16"]:
        print("This CPU has no native bf16: ours runs fp32 + channels_last.")
    print("\n| variant | s/step | images/s |\n|---|---:|---:|")
    for k in ("ours", "reference", "bare"):
        print(f"| {k} | {r['seconds_per_step'][k]:.3f} | {r['images_per_s'][k]:.1f} |")
    if "end_to_end" in r:
        e = r["end_to_end"]
        print(f"| ours + data loading ({e['workers']} workers, {e['pipeline']} pipeline) | "
              f"{e['seconds_per_step']:.3f} | {e['images_per_s']:.1f} |")
    print(f"\nspeed-up of ours over reference: {r['speedup_vs_reference']:.2f}x")
    print(f"queue + similarity + loss: {r['seconds_per_step']['queue_loss'] * 1e3:.1f} ms/step = "
          f"{100 * r['queue_similarity_loss_share']:.1f}% of our step")
    print(f"ours over bare compute: {100 * r['overhead_over_bare']:+.1f}%")
    if "end_to_end" in r:
        e = r["end_to_end"]
        print(f"input pipeline: {100 * e['input_pipeline_share']:.1f}% of the end-to-end step "
              f"({100 * e['input_pipeline_cost']:+.1f}% over the model-only step; {e['photos']})")
    print(f"loss ours {r['loss']['ours']:.5f} vs reference {r['loss']['reference']:.5f} "
          f"(|diff| {r['loss']['abs_diff']:.2e})")
    if "small_patches" in r:
        sp = r["small_patches"]
        print(f"\nsmall patches: {sp['num']} x {sp['size']} px per image: "
              f"{sp['seconds_per_step']['with_small']:.3f} s/step vs {sp['seconds_per_step']['single_view']:.3f} "
              f"single-view = {sp['cost_ratio']:.2f}x; both queues + similarities + losses "
              f"{100 * sp['queues_loss_share']:.1f}% of the step")
    print(f"peak memory (RSS): {r['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
