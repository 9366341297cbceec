"""The teacher ladder's report, made from its results json alone: per engine, detector and label
fraction each arm's AP (mean ± sample std over fine-tuning seeds) and its paired difference from
MoCo-v2 and from random init (mean over the seeds both have, 95 % t interval), the teachers' and
students' k-NN, and a chart of AP50 against teacher size."""
from __future__ import annotations

import math
from pathlib import Path

from tools.pipeline.report import mean_std, mean_std_text

DETECTOR_LABELS = {"fpn": "Faster R-CNN FPN", "c4": "Faster R-CNN C4"}
INIT_LABELS = {"random": "random init", "mocov2": "MoCo-v2", "seed": "SEED", "l2": "L2 distillation"}
INIT_ORDER = {"random": 0, "mocov2": 1, "seed": 2, "l2": 3}
ARCH_SHORT = {"resnet18": "R18", "resnet34": "R34", "resnet50": "R50", "mobilenetv3_small_050": "MNv3-S 0.5",
              "mobilenetv3_large_100": "MNv3-L", "efficientnet_b0": "EffNet-B0"}
METRICS = ("ap", "ap50", "ap75")


def short(arch: str | None) -> str:
    return ARCH_SHORT.get(arch, arch or "")


def arm_label(r: dict) -> str:
    """'SEED R18 ← R50', 'MoCo-v2 R18', 'random init R34'."""
    text = f"{INIT_LABELS[r['init']]} {short(r['student_arch'])}"
    return text + (f" ← {short(r['teacher_arch'])}" if r.get("teacher_arch") else "")


def _arm(r: dict) -> tuple:
    return r["init"], r["student_arch"], r.get("teacher_arch")


def _arm_order(arm: tuple) -> tuple:
    init, student, teacher = arm
    return student, INIT_ORDER[init], teacher or ""


def t_quantile(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with `df` degrees of freedom."""
    from scipy.stats import t
    return float(t.ppf(0.975, df))


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict | None:
    """Mean of a[seed] - b[seed] over the seeds both have, with its 95 % t interval (None with no
    common seed; no interval with one)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean, sd = mean_std(diffs)
    out = {"n": len(seeds), "mean": mean}
    if len(seeds) > 1:
        half = t_quantile(len(seeds) - 1) * sd / math.sqrt(len(seeds))
        out.update(low=mean - half, high=mean + half)
    return out


def difference_cell(d: dict | None) -> str:
    """'+1.2 [−0.3, +2.7] (n 10)', bold where the interval excludes zero."""
    if d is None:
        return "—"
    if "low" not in d:
        return f"{d['mean']:+.1f} (one pair: no interval)"
    text = f"{d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}] (n {d['n']})"
    return f"**{text}**" if d["low"] > 0 or d["high"] < 0 else text


def _scores(runs: list[dict], key: str) -> dict[int, float]:
    return {r["seed"]: r[key] for r in runs if r.get(key) is not None and not r.get("diverged")}


def _mean_cell(vals: list[float]) -> str:
    return mean_std_text(*mean_std(vals)) if vals else "—"


def group_runs(result: dict) -> dict:
    """{(engine, detector, labels): {arm: [runs]}}."""
    groups: dict = {}
    for r in result.get("runs", []):
        groups.setdefault((r["engine"], r["detector"], r["labels"]), {}).setdefault(_arm(r), []).append(r)
    return groups


def _knn_of(result: dict) -> dict:
    return {(b["method"], b["arch"], b.get("teacher_arch")): b["knn"] for b in result.get("backbones", [])}


def primary_student(result: dict) -> str:
    """The student whose MoCo-v2 and random-init arms are the references (ResNet-18 in the ladder)."""
    return result.get("settings", {}).get("primary_student") or "resnet18"


def ladder_table(result: dict) -> str:
    student = primary_student(result)
    title = ("SEED's premise: a teacher larger than its student" if student == "resnet18"
             else f"Distilled {short(student)} students in detection")
    lines = [f"# {title} (digit scenes)", ""]
    lines += _backbone_table(result)
    groups = group_runs(result)
    engines = sorted({k[0] for k in groups}, key=lambda e: e != "torchvision")
    for engine in engines:
        for det in ("fpn", "c4"):
            for labels in ("all", "10%"):
                arms = groups.get((engine, det, labels))
                if arms:
                    lines += _cell_table(engine, det, labels, arms, student)
    lines += _footnote(result)
    return "\n".join(lines) + "\n"


def _backbone_table(result: dict) -> list[str]:
    bbs = sorted(result.get("backbones", []), key=lambda b: (b.get("role") != "teacher", b["arch"], b["method"],
                                                             b.get("teacher_arch") or ""))
    if not bbs:
        return []
    student = primary_student(result)
    control = next((b["knn"] for b in bbs if b["method"] == "mocov2" and b["arch"] == student), None)
    lines = ["## Backbones: k-NN top-1 on held-out digit crops", "",
             f"| backbone | role | epochs | batch | lr | k-NN top-1 | − MoCo-v2 {short(student)} |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for b in bbs:
        name = {"random": "random init", "mocov2": "MoCo-v2", "seed": "SEED", "l2": "L2 distillation"}[b["method"]]
        name += f" {short(b['arch'])}" + (f" ← {short(b['teacher_arch'])}" if b.get("teacher_arch") else "")
        gap = f"{b['knn'] - control:+.1f}" if control is not None else "—"
        role = b.get("role", "—") if b["method"] != "random" else "—"
        if b["method"] == "mocov2" and b["arch"] == "resnet18":
            role = "student, and the R18 teacher"
        lines.append(f"| {name} | {role} | {b.get('epochs', 0)} | {b.get('batch', '—')} | {b.get('lr', '—')} | "
                     f"{b['knn']:.1f} | {gap} |")
    return lines + [""]


def _cell_table(engine: str, det: str, labels: str, arms: dict, student: str) -> list[str]:
    base = {k: arms.get(k) for k in (("mocov2", student, None), ("random", student, None))}
    lines = [f"## {DETECTOR_LABELS[det]}, {labels} labels ({engine} engine)", "",
             f"| backbone | seeds | AP | AP50 | AP75 | AP50 − MoCo-v2 {short(student)} [95 % CI] "
             f"| AP50 − random {short(student)} [95 % CI] |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for arm in sorted(arms, key=_arm_order):
        runs = arms[arm]
        done = [r for r in runs if not r.get("diverged")]
        cells = [_mean_cell([r[m] for r in done if r.get(m) is not None]) for m in METRICS]
        diffs = []
        for ref in base.values():
            if ref is None or ref is runs:
                diffs.append("—")
            else:
                diffs.append(difference_cell(paired_difference(_scores(runs, "ap50"), _scores(ref, "ap50"))))
        diverged = len(runs) - len(done)
        note = f" ({diverged} diverged)" if diverged else ""
        lines.append(f"| {arm_label(runs[0])}{note} | {len(done)} | " + " | ".join(cells + diffs) + " |")
    return lines + [""]


def _footnote(result: dict) -> list[str]:
    p, c = result.get("preset", {}), result.get("counts", {})
    if not p:
        return []
    return [f"Mean ± sample std over fine-tuning seeds; a difference is the mean over the seeds both backbones "
            f"were fine-tuned with (the same seed for every backbone: paired), with its 95 % t interval; "
            f"**bold**: the interval excludes zero. {c.get('train')} labelled training scenes (10 %: "
            f"{c.get('train_small')}), {c.get('test')} test scenes of {p['scenes']['canvas']} px (C4: upscaled "
            f"2x), {p['det_iters']} iterations at batch {p['det_batch']}, lr {p['det_lr']}{_det_settings(result)}. Students: "
            f"{p['student_epochs']} epochs at batch {p['distill_batch']} on {c.get('pretrain')} unlabelled digit "
            f"crops, each method at its own lr (the backbone table); larger teachers: MoCo-v2 with the epochs, "
            f"batch and lr of the backbone table{_teacher_recipes(result)}."
            + (" The R18 teacher is the MoCo-v2 R18 student." if any(
                r.get("teacher_arch") == "resnet18" for r in result.get("runs", [])) else "")]


def _settings_text(settings: dict) -> str:
    """Config overrides as the footnote names them: `KEY value, KEY value`."""
    return ", ".join(f"{k} {v}" for k, v in settings.items())


def _det_settings(result: dict) -> str:
    """The detection settings some students' fine-tunings ran with, from the runs' own records."""
    seen: dict[str, list[str]] = {}
    for r in result.get("runs", []):
        if r.get("det_settings"):
            text = _settings_text(r["det_settings"])
            texts = seen.setdefault(short(r["student_arch"]), [])
            if text not in texts:  # every distinct setting is named, not only the first met
                texts.append(text)
    return "".join(f"; the {st} students' " + " or ".join(texts) for st, texts in sorted(seen.items()))


def _teacher_recipes(result: dict) -> str:
    """The settings a teacher trained with beyond epochs, batch and lr, from its own backbone record
    (the settings of whichever invocation merged last need not be the ones its teacher trained with)."""
    parts = []
    for b in result.get("backbones", []):
        extra = {k: v for k, v in (b.get("recipe") or {}).items() if k != "SOLVER.EPOCHS"}  # epochs: in the table
        if b.get("role") == "teacher" and extra:
            parts.append(f"the {short(b['arch'])} also " + _settings_text(extra))
    return f"; {'; '.join(parts)}" if parts else ""


def ladder_chart(result: dict, path: str | Path) -> None:
    """AP50 against teacher size, one panel per detector and label fraction (torchvision engine):
    SEED R18 from each teacher with 95 % intervals of its mean, L2 at its teacher, MoCo-v2 and random
    init as lines with their intervals as bands."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    student = primary_student(result)
    groups = {k: v for k, v in group_runs(result).items() if k[0] == "torchvision"}
    panels = [(d, lab) for d in ("fpn", "c4") for lab in ("all", "10%") if ("torchvision", d, lab) in groups]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(3.6 * max(1, len(panels)), 3.8), squeeze=False)
    teachers = ["resnet18", "resnet34", "resnet50"]
    for ax, (det, lab) in zip(axes[0], panels):
        arms = groups[("torchvision", det, lab)]

        def interval(runs):
            vals = list(_scores(runs, "ap50").values())
            if not vals:
                return None
            m, sd = mean_std(vals)
            return m, (t_quantile(len(vals) - 1) * sd / math.sqrt(len(vals)) if len(vals) > 1 else 0.0)

        for arm, color, label in ((("mocov2", student, None), "tab:orange", f"MoCo-v2 {short(student)}"),
                                  (("random", student, None), "tab:gray", f"random init {short(student)}")):
            iv = interval(arms.get(arm, []))
            if iv:
                ax.axhline(iv[0], color=color, lw=1.2, label=label)
                ax.axhspan(iv[0] - iv[1], iv[0] + iv[1], color=color, alpha=0.15)
        for init, color, marker in (("seed", "tab:blue", "o"), ("l2", "tab:green", "s")):
            pts = [(i, interval(arms[(init, student, t)])) for i, t in enumerate(teachers)
                   if (init, student, t) in arms]
            pts = [(i, iv) for i, iv in pts if iv]
            if pts:
                ax.errorbar([i for i, _ in pts], [iv[0] for _, iv in pts], yerr=[iv[1] for _, iv in pts],
                            color=color, marker=marker, capsize=3, lw=1.2 if init == "seed" else 0,
                            elinewidth=1.2, label=f"{INIT_LABELS[init]} {short(student)} ← teacher")
        ax.set_xticks(range(len(teachers)), [f"teacher\n{short(t)}" for t in teachers], fontsize=8)
        ax.set_xlim(-0.5, len(teachers) - 0.5)
        ax.set_title(f"{DETECTOR_LABELS[det]}, {lab} labels", fontsize=9)
        ax.set_ylabel("box AP50 (%)")
    if panels:
        axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Digit scenes: AP50 against teacher size (mean, 95 % CI over fine-tuning seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
