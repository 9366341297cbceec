"""Tables and plots of a set of runs: a markdown AP table, a bar chart, loss curves (PNG)."""
from __future__ import annotations

import json
import math
import os

from seed_core.constants import METRICS_FILE, METRICS_LOG_FILE, TRAIN_LOG_FILE

METRICS = ("AP", "AP50", "AP75")


def mean_std(values) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1) of a list of values; a single value has no
    spread, so its std is None (tables then print the value alone, never "± 0.0")."""
    values = list(values)
    if not values:
        raise ValueError("mean_std of no values")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def mean_std_text(mean: float, std: float | None = None, digits: int = 1) -> str:
    """'mean ± std' with `digits` decimals; the mean alone when there is no spread (std None)."""
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def metric_cell(m: dict, key: str) -> str:
    """'mean ± std' of a summarised metric (percent), its mean alone without a spread, '—' if absent."""
    if key not in m:
        return "—"
    return mean_std_text(m[key], m.get(key + "_std"))


def seeds_note(seeds) -> str:
    """What a table's "±" means: the sample std over these fine-tuning seeds, or none for one seed."""
    seeds = list(seeds)
    return (f"mean ± sample std over fine-tuning seeds {seeds}" if len(seeds) > 1
            else f"one fine-tuning seed {seeds}, no spread")


def diverged_note(m: dict) -> str:
    """' (1 of 6 runs diverged)' where some runs stopped on a non-finite loss (means are over the rest)."""
    return f" ({m['diverged']} of {len(m['runs'])} runs diverged)" if m.get("diverged") else ""


def results_markdown(results: dict[str, dict], metrics=METRICS) -> str:
    """One row per initialisation, one column per metric (percent; mean ± std where `<key>_std` is given)."""
    if any("mask_AP" in m for m in results.values()):
        metrics = tuple(metrics) + ("mask_AP",)
    lines = ["| initialisation | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for name, m in results.items():
        lines.append(f"| {name}{diverged_note(m)} | " + " | ".join(metric_cell(m, k) for k in metrics) + " |")
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def metrics_bar_png(results: dict[str, dict], path: str, metrics=METRICS) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(results))
    top = 0.0
    for i, (name, m) in enumerate(results.items()):
        xs = [j + i * width for j in range(len(metrics))]
        vals = [m.get(k, 0.0) for k in metrics]
        errs = [m.get(k + "_std", 0.0) for k in metrics]
        ax.bar(xs, vals, width, yerr=errs, capsize=3, label=name)
        for x, v, e in zip(xs, vals, errs):  # the value just above its error bar
            ax.annotate(f"{v:.1f}", (x, v + e), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=8)
        top = max([top] + [v + e for v, e in zip(vals, errs)])
    ax.set_ylim(0, top * 1.12 or 1.0)
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(metrics))], metrics)
    ax.set_ylabel("%")
    ax.set_title("Detection fine-tuned from each initialisation" +
                 (" (mean ± std over seeds)" if any(k + "_std" in m for m in results.values() for k in metrics) else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_loss_curve(source: str) -> tuple[list[int], list[float]]:
    """(iterations, losses) from a distillation metrics.jsonl, a torchvision-engine train_log.jsonl
    or a Detectron2 metrics.json (JSON lines with total_loss), given a file or its folder."""
    candidates = [source] if os.path.isfile(source) else [
        os.path.join(source, n) for n in (METRICS_LOG_FILE, TRAIN_LOG_FILE, METRICS_FILE)]
    for path in candidates:
        if not os.path.isfile(path):
            continue
        its, losses = [], []
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                loss = rec.get("loss", rec.get("total_loss")) if isinstance(rec, dict) else None
                if loss is not None and "iteration" in rec:
                    its.append(int(rec["iteration"]))
                    losses.append(float(loss))
        if its:
            return its, losses
    return [], []


def loss_curves_png(sources: dict[str, str], path: str) -> None:
    """One panel per run (their losses have different scales)."""
    plt = _pyplot()
    curves = {name: read_loss_curve(src) for name, src in sources.items()}
    curves = {k: v for k, v in curves.items() if v[0]}
    if not curves:
        return
    cols = min(3, len(curves))
    rows = (len(curves) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (name, (its, losses)) in zip(axes.flat, curves.items()):
        ax.plot(its, losses, lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
