"""Run results: `metrics.json` per run, one row per run in a results CSV, and a markdown table.

Metrics are percentages (0..100) like Detectron2 prints them: "AP", "AP50", "AP75" for boxes and
optionally "mask_AP", "mask_AP50", "mask_AP75" for masks.

The CSV defaults to `<OUTPUT_DIR>/../results.csv`, so runs whose output directories share a parent
(e.g. output/voc_r18_seed, output/voc_r18_mocov2) land in one table.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import time
from collections import OrderedDict
from typing import Iterable, Mapping

from seed_core.checkpoint_io import atomic_write_text
from seed_core.errors import SeedError

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock; concurrent runs may then lose a row
    fcntl = None

logger = logging.getLogger(__name__)

__all__ = ["CSV_FIELDS", "record_run", "default_csv_path", "read_results", "split_config_name",
           "render_markdown"]

CSV_FIELDS = ("timestamp", "config", "weights", "engine", "AP", "AP50", "AP75", "mask_AP")
METRIC_KEYS = ("AP", "AP50", "AP75", "mask_AP", "mask_AP50", "mask_AP75")
# Last `_`-separated token of a config file name -> column of the comparison table.
VARIANTS = ("random", "supervised", "mocov2", "seed")
VARIANT_TITLES = {"random": "Random init", "supervised": "Supervised", "mocov2": "MoCo-v2 student",
                  "seed": "SEED student"}


def default_csv_path(output_dir: str | os.PathLike) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(os.fspath(output_dir))), "results.csv")


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
               engine: str = "") -> dict:
    """Write `output_dir/metrics.json` and append one row to the results CSV. Returns the row."""
    metrics = _clean_metrics(metrics)
    row = OrderedDict(timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"), config=os.fspath(config_file),
                      weights=os.fspath(weights or ""), engine=engine)
    for k in CSV_FIELDS[4:]:
        row[k] = _fmt(metrics.get(k))

    record = dict(row, metrics=metrics)
    atomic_write_text(json.dumps(record, indent=2) + "\n", os.path.join(output_dir, "metrics.json"))

    csv_path = os.fspath(csv_path) if csv_path else default_csv_path(output_dir)
    with _folder_lock(os.path.dirname(os.path.abspath(csv_path))):
        _append_row(csv_path, row)
    logger.info("results: %s -> %s", dict(row), csv_path)
    return dict(row)


@contextlib.contextmanager
def _folder_lock(folder: str):
    """Serialise read-append-replace of one CSV across runs finishing at the same time (POSIX)."""
    os.makedirs(folder, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _append_row(csv_path: str, row: Mapping[str, str]) -> None:
    existing = ""
    if os.path.exists(csv_path):
        with open(csv_path, newline="") as f:
            existing = f.read()
        header = existing.splitlines()[0].split(",") if existing.strip() else []
        if header and tuple(header) != CSV_FIELDS:
            raise SeedError(f"{csv_path} has columns {header}, expected {list(CSV_FIELDS)}; "
                               "move it aside or pass another results CSV.")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    if not existing.strip():
        writer.writeheader()
    elif not existing.endswith("\n"):
        buf.write("\n")
    writer.writerow(row)
    atomic_write_text(existing + buf.getvalue(), csv_path)


def read_results(csv_path: str | os.PathLike) -> list[dict]:
    if not os.path.isfile(csv_path):
        raise SeedError(f"results CSV not found: {csv_path}. Runs of tools/train_net.py write it "
                           "(default: next to their OUTPUT_DIR).")
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def split_config_name(config: str) -> tuple[str, str]:
    """'configs/voc_r18_seed.yaml' -> ('voc_r18', 'seed'); unknown variants -> (stem, 'other')."""
    stem = os.path.splitext(os.path.basename(config))[0]
    task, _, variant = stem.rpartition("_")
    if variant in VARIANTS and task:
        return task, variant
    return stem, "other"


def render_markdown(rows: Iterable[Mapping[str, str]]) -> str:
    """Baseline vs SEED side by side: one line per task, one column group per variant.

    The latest run of each (task, variant) wins; runs of different engines get separate lines.
    Box AP/AP50/AP75 per variant, plus mask AP when any run has one.
    """
    rows = list(rows)
    # Numbers from different engines are not comparable: keep them on separate lines.
    several_engines = len({r.get("engine", "") for r in rows}) > 1
    latest: dict[tuple[str, str], Mapping[str, str]] = {}
    for row in rows:
        task, variant = split_config_name(row["config"])
        if several_engines:
            task = f"{task} ({row.get('engine') or 'unknown engine'})"
        latest[(task, variant)] = row  # the CSV is appended in time order
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
