"""The teacher's precision judged by its effect on the student.

SEED students of the digits harness (tools/benchmarking/paper_claim.py: same data, recipe, budget
and seeds) are distilled from one trained teacher run in fp32, bf16 and fp16 (fp16 emulated on a
CPU, seed_core.teacher_precision.HalfRounded). Each precision is scored by the students' k-NN,
paired by seed against the fp32 teacher's students, and by the training step it costs, timed side
by side on the harness's shapes.
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F

from seed_core.encoders import build_student
from seed_core.precision import cpu_description, resolve_precision
from tools.benchmarking.distill_steps import OursStep, make_teacher, time_interleaved
from tools.benchmarking.ladder_report import difference_cell, paired_difference
from tools.benchmarking.paper_claim import Settings, recipe_value, run_ablation
from tools.pipeline.report import mean_std_text

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
REFERENCE = "fp32"
STEM = "teacher_precision_students"


def within_seed_spread(diff: dict | None, reference_std: float | None) -> bool | None:
    """A precision leaves the students within the seed spread when the paired 95 % interval of its
    difference to the fp32 teacher's students holds zero and the mean difference is no larger than
    the fp32 students' own std over seeds. None when there is too little to tell (one seed)."""
    if diff is None or "low" not in diff or reference_std is None:
        return None
    return diff["low"] <= 0.0 <= diff["high"] and abs(diff["mean"]) <= reference_std


def score_students(s: Settings, arch: str, precisions=PRECISIONS) -> dict:
    """SEED students of `arch` from the harness's teacher in each precision (cached runs), with each
    precision's paired difference to the fp32 teacher's students."""
    if REFERENCE not in precisions:
        raise ValueError(f"the teacher precisions must include {REFERENCE}, the reference the others are paired with")
    # No MoCo-v2 students: the question is the teacher's dtype (benchmarks/paper_claim.py has them).
    result = run_ablation(s, "teacher_precision", arch, precisions, with_moco=False)
    by_value = {p["value"]: p for p in result["points"]}
    ref = by_value[REFERENCE]
    ref_scores = {r["seed"]: r["top1"] for r in ref["per_seed"]}
    for p in result["points"]:
        scores = {r["seed"]: r["top1"] for r in p["per_seed"]}
        p["difference_to_fp32"] = None if p is ref else paired_difference(scores, ref_scores)
        p["within_seed_spread"] = None if p is ref else within_seed_spread(p["difference_to_fp32"], ref["top1_std"])
    return result


def time_steps(s: Settings, arch: str, precisions=PRECISIONS, repeats: int = 20, warmup: int = 3) -> dict:
    """Seconds per training step of a SEED `arch` student with the harness's teacher architecture in
    each precision: the trainer's step (seed_core objective, the student at TRAIN.PRECISION auto),
    the harness's batch, image size and queue, timed interleaved so machine noise hits all alike.
    Random weights: speed does not depend on them."""
    batch, size = recipe_value(s, "SOLVER.BATCH_SIZE"), recipe_value(s, "DATA.IMAGE_SIZE")
    k, dim = recipe_value(s, "QUEUE.SIZE"), 128
    device = torch.device("cpu")
    student_precision = resolve_precision("auto", device)
    torch.manual_seed(0)
    student, teacher = build_student(arch, dim), make_teacher(s.teacher_arch, dim)
    queue_init = F.normalize(torch.randn(k, dim, generator=torch.Generator().manual_seed(2)), dim=1)
    steps = {p: OursStep(copy.deepcopy(student), copy.deepcopy(teacher), queue_init, student_precision,
                         device=device, teacher_precision=p) for p in precisions}
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(4))
    seconds = time_interleaved(steps, x, repeats, warmup, device)
    return {"seconds_per_step": seconds,
            "relative_to_fp32": {p: seconds[p] / seconds[REFERENCE] for p in precisions if REFERENCE in seconds},
            "student_precision": student_precision, "batch": batch, "image_size": size, "queue": k,
            "repeats": repeats, "threads": torch.get_num_threads(), "cpu": cpu_description()}


def verdict(result: dict) -> dict:
    """Whether half precision leaves every student within its seed spread, per precision."""
    out = {}
    for name in result["precisions"]:
        if name == REFERENCE:
            continue
        flags = [next(p for p in r["points"] if p["value"] == name)["within_seed_spread"]
                 for r in result["students"].values()]
        out[name] = None if any(f is None for f in flags) else all(flags)
    return out


# ----------------------------------------------------------------------------- report
def _cell(p: dict) -> str:
    return mean_std_text(p["top1_mean"], p["top1_std"])


def _difference(p: dict) -> str:
    return "—" if p["difference_to_fp32"] is None else difference_cell(p["difference_to_fp32"])


def _spread(flag) -> str:
    return {None: "—", True: "yes", False: "**no**"}[flag]


def table(result: dict) -> str:
    timing = result.get("timing") or {}
    lines = ["| student | teacher precision | k-NN top-1 | − fp32 teacher (paired 95 % CI) | within seed spread "
             "| s/step | × fp32 step |", "|---|---|---:|---:|:---:|---:|---:|"]
    for arch, r in result["students"].items():
        t = timing.get(arch)
        for p in r["points"]:
            name = p["value"]
            step = f"{t['seconds_per_step'][name]:.3f} | {t['relative_to_fp32'][name]:.2f}×" if t else "— | —"
            lines.append(f"| {arch} | {name} | {_cell(p)} | {_difference(p)} | {_spread(p['within_seed_spread'])} "
                         f"| {step} |")
    s = result["settings"]
    first = next(iter(result["students"].values()))
    lines += ["", f"Teacher: {s['teacher_arch']} trained with MoCo-v2 (k-NN top-1 {first['teacher_top1']:.1f}); "
                  f"SEED students, seeds {s['seeds']}, the digits harness's recipe "
                  f"({s['recipe_values']['DATA.IMAGE_SIZE']} px, batch {s['recipe_values']['SOLVER.BATCH_SIZE']}, "
                  f"K {s['recipe_values']['QUEUE.SIZE']}, "
                  f"{str(s['max_iter']) + ' iterations' if s['max_iter'] else str(s['epochs']) + ' epochs'}).",
              "fp16 on a CPU is emulated: fp32 kernels on fp16 operands (weights and every layer's output "
              "rounded to fp16), the arithmetic of a GPU's fp16 convolution; its step time is the "
              "emulation's, not a GPU's."]
    if timing:
        t = next(iter(timing.values()))
        lines.append(f"Step times: {t['cpu']}, {t['threads']} thread(s), the student in {t['student_precision']}, "
                     f"median of {t['repeats']} interleaved steps.")
    v = result["verdict"]
    lines.append("Within the seed spread: " + "; ".join(
        f"{name}: {_spread(flag).strip('*')}" for name, flag in v.items()) + " (paired interval holds zero and "
        "the mean difference is within the fp32 students' std).")
    return "\n".join(lines) + "\n"
