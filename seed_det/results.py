"""Detection results: `metrics.json` per run, one row per run in the detection results file, and a
markdown table. The detection columns are declared here; the file format (run columns, locking, what
happens to a damaged or foreign file) is seed_core.results'.

Metrics are percentages (0..100) like Detectron2 prints them: "AP", "AP50", "AP75" for boxes and
optionally "mask_AP", "mask_AP50", "mask_AP75" for masks.

The file defaults to `<OUTPUT_DIR>/../results_detection.csv`, so runs whose output directories share
a parent (e.g. output/voc_r18_seed, output/voc_r18_mocov2) land in one table. An eval-only run writes
`eval_metrics.json` (the training run's `metrics.json` stays) and a row marked `eval-only`.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections import OrderedDict
from typing import Iterable, Mapping

from seed_core.constants import EVAL_METRICS_FILE, METRICS_FILE
from seed_core.errors import SeedError
from seed_core.results import (append_row, check_results_file, latest_per_key, read_rows, register_kind, results_path,
                               write_json)

logger = logging.getLogger(__name__)

__all__ = ["CSV_FIELDS", "record_run", "default_csv_path", "metrics_file", "read_results", "split_config_name",
           "render_markdown"]

KIND = "detection"
CSV_FIELDS = register_kind(KIND, ("config", "AP", "AP50", "AP75", "mask_AP"))
METRIC_KEYS = ("AP", "AP50", "AP75", "mask_AP", "mask_AP50", "mask_AP75")
# Last `_`-separated token of a config file name -> column of the comparison table.
VARIANTS = ("random", "supervised", "mocov2", "seed")
VARIANT_TITLES = {"random": "Random init", "supervised": "Supervised", "mocov2": "MoCo-v2 student",
                  "seed": "SEED student"}


def default_csv_path(output_dir: str | os.PathLike) -> str:
    return results_path(os.path.dirname(os.path.abspath(os.fspath(output_dir))), KIND)


def metrics_file(output_dir: str | os.PathLike, eval_only: bool) -> str:
    """metrics.json for a training run; eval_metrics.json for an evaluation, which must not replace it."""
    return os.path.join(os.fspath(output_dir), EVAL_METRICS_FILE if eval_only else METRICS_FILE)


def _json_safe(v):
    """NaN (e.g. an area range with no objects) is not valid JSON; store null instead."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, Mapping):
        return {k: _json_safe(x) for k, x in v.items()}
    return v


def _clean_metrics(metrics: Mapping[str, float]) -> dict:
    missing = [k for k in ("AP", "AP50", "AP75") if k not in metrics]
    if missing:
        raise SeedError(f"metrics lack {missing}; an evaluator must return AP, AP50 and AP75 "
                        f"(got keys {sorted(metrics)}).")
    out = {k: _json_safe(float(v) if k in METRIC_KEYS and v is not None else v) for k, v in metrics.items()}
    return out


def _fmt(v) -> str:
    return "" if v is None else f"{float(v):.2f}"


def record_run(output_dir, config_file, weights, metrics: Mapping[str, float], csv_path=None,
               engine: str = "", eval_only: bool = False, dataset: str = "") -> dict:
    """Write the run's metrics JSON (see `metrics_file`) and append one row to the detection
    results file. Returns the row."""
    metrics = _clean_metrics(metrics)
    row = OrderedDict(timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"),
                      output=os.path.abspath(os.fspath(output_dir)), weights=os.fspath(weights or ""),
                      engine=engine, mode="eval-only" if eval_only else "train", dataset=dataset,
                      config=os.fspath(config_file))
    for k in CSV_FIELDS[len(row):]:
        row[k] = _fmt(metrics.get(k))

    csv_path = os.fspath(csv_path) if csv_path else default_csv_path(output_dir)
    check_results_file(csv_path, KIND)  # another kind of ours: refuse before writing anything
    write_json(metrics_file(output_dir, eval_only), dict(row, metrics=metrics))
    append_row(csv_path, KIND, row)
    logger.info("results: %s -> %s", dict(row), csv_path)
    return dict(row)


def read_results(csv_path: str | os.PathLike) -> list[dict]:
    kind, rows = read_rows(csv_path)
    if kind != KIND:
        raise SeedError(f"{csv_path} holds {kind} results, not detection results")
    return rows


def split_config_name(config: str) -> tuple[str, str]:
    """'configs/voc_r18_seed.yaml' -> ('voc_r18', 'seed'); unknown variants -> (stem, 'other')."""
    stem = os.path.splitext(os.path.basename(config))[0]
    task, _, variant = stem.rpartition("_")
    if variant in VARIANTS and task:
        return task, variant
    return stem, "other"


def render_markdown(rows: Iterable[Mapping[str, str]]) -> str:
    """Baseline vs SEED side by side: one line per task, one column group per variant.

    The latest run of each (task, variant) wins, but an eval-only run never hides a training run;
    runs of different engines get separate lines.
    Box AP/AP50/AP75 per variant, plus mask AP when any run has one.
    """
    rows = list(rows)
    # Numbers from different engines are not comparable: keep them on separate lines.
    several_engines = len({r.get("engine", "") for r in rows}) > 1

    def task_variant(row):
        task, variant = split_config_name(row["config"])
        if several_engines:
            task = f"{task} ({row.get('engine') or 'unknown engine'})"
        return task, variant
    latest = latest_per_key(rows, task_variant)  # the file is appended in time order
    if not latest:
        return "_no results yet_\n"
    tasks = list(OrderedDict.fromkeys(t for t, _ in latest))
    present = {v for _, v in latest}
    variants = [v for v in VARIANTS + ("other",) if v in present]
    has_mask = any(r.get("mask_AP") for r in latest.values())
    metrics = ["AP", "AP50", "AP75"] + (["mask_AP"] if has_mask else [])

    header = ["task"] + [f"{VARIANT_TITLES.get(v, v)} {m.replace('_', ' ')}" for v in variants for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task in tasks:
        cells = [task]
        for v in variants:
            row = latest.get((task, v), {})
            cells += [row.get(m) or "–" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
