"""k-NN and linear-probe results: one row per evaluation in results_knn.csv / results_linear.csv
(file format: seed_core.results) and their markdown table."""
from __future__ import annotations

from typing import Iterable, Mapping

from ..results import KIND_COLUMNS, append_row, latest_per_key

KINDS = ("knn", "linear")
# The settings that tell one evaluation of a backbone from another, per kind (k-NN: k, T; linear: optimizer, epochs).
SETTINGS = {kind: tuple(c for c in KIND_COLUMNS[kind] if c not in ("arch", "top1", "top5")) for kind in KINDS}


def record_accuracy(path: str, kind: str, report: Mapping, output: str = "", device: str = "") -> dict:
    """Append the row of one k-NN / linear evaluation (a frozen backbone is always `eval-only`);
    `report` holds the kind's settings (SETTINGS) besides the accuracies."""
    return append_row(path, kind, {
        "timestamp": report["timestamp"], "output": output, "weights": report["backbone"], "engine": device,
        "mode": "eval-only", "dataset": f"{report['train']} -> {report['val']}", "arch": report["arch"],
        **{k: report[k] for k in SETTINGS[kind]}, "top1": f"{report['top1']:.2f}", "top5": f"{report['top5']:.2f}"})


def render_accuracy_markdown(kind: str, rows: Iterable[Mapping[str, str]]) -> str:
    """One line per (backbone, dataset), the latest evaluation of each."""
    settings = SETTINGS[kind]
    latest = latest_per_key(rows, lambda r: tuple(r[c] for c in ("weights", "arch", "dataset") + settings))
    if not latest:
        return "_no results yet_\n"
    header = [f"{kind} backbone", "arch", "dataset", *settings, "top-1", "top-5"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r[c] for c in ("weights", "arch", "dataset") + settings + ("top1", "top5")) + " |"
              for r in latest.values()]
    return "\n".join(lines) + "\n"
