"""Each student method at its own best settings on the digits harness (tools/benchmarking/paper_claim.py).

A sweep point is a YAML config variant (configs/paper_claim/sweep/*.yaml, with `_BASE_`): its keys
are applied on top of the harness' recipe (configs/paper_claim/digits.yaml) to every run of that point, and its LOSS.NAME says
which method (moco, seed or l2) it trains. Every point is trained with `sweep_seeds`; per method the
point with the highest k-NN top-1 on the held-out split wins (the rule the teacher's lr was picked
by), and the winner is then run with every seed of `final_seeds`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from seed_core.config import load_cfg
from seed_core.yaml_config import flatten_cfg, read_config_file
from .paper_claim import (DISTILLED, VARIANT_LABELS as METHOD_LABELS, VARIANTS, Settings, _settings_dict,
                          _summarise, prepare_digits, score, train_student, train_teacher)
from tools.pipeline.report import mean_std_text

logger = logging.getLogger(__name__)

METHODS = tuple(v for v in VARIANTS if v != "random")  # the variants a sweep point can train
# Keys the harness sets per run; a sweep point must not change them.
HARNESS_KEYS = frozenset({"SEED", "MODEL.STUDENT.ARCH", "DATA.ROOT", "MODEL.TEACHER.ARCH", "MODEL.TEACHER.WEIGHTS",
                          "OUTPUT_DIR"})


def read_point(path: str | Path) -> dict:
    """One sweep point: {"name", "file", "method", "overrides" (flat KEY -> value)}. Bad files (unknown
    keys, wrong types, no or another LOSS.NAME, harness keys) are refused by name."""
    path = Path(path)
    load_cfg(str(path))  # unknown keys and wrong types: the config's own error, naming the file
    flat = flatten_cfg(read_config_file(path))
    method = flat.pop("LOSS.NAME", None)
    if method not in METHODS:
        raise ValueError(f"{path}: a sweep point must set LOSS.NAME to one of {', '.join(METHODS)} "
                         f"(got {method!r})")
    clash = sorted(HARNESS_KEYS & set(flat))
    if clash:
        raise ValueError(f"{path}: {', '.join(clash)} are set by the harness per run; remove them from the file")
    return {"name": path.stem, "file": str(path), "method": method, "overrides": flat}


def _point_settings(s: Settings, point: dict) -> Settings:
    return replace(s, overrides={**s.overrides, **point["overrides"]})


def _run_point(s: Settings, data, arch: str, point: dict, seeds, teacher) -> dict:
    sp = _point_settings(s, point)
    per_seed = []
    for seed in seeds:
        rec = train_student(sp, data, arch, point["method"], seed, teacher)  # used only by distilled methods
        per_seed.append({"seed": seed, **score(sp, data, rec), "train_seconds": rec.seconds, "reused": rec.reused})
    row = {"point": point["name"], "file": point["file"], "method": point["method"],
           "overrides": point["overrides"], **_summarise(per_seed)}
    logger.info("%s %s: k-NN top-1 %s over seeds %s", arch, point["name"],
                mean_std_text(row["top1_mean"], row["top1_std"], 2), list(seeds))
    return row


def pick_best(rows: list[dict]) -> dict:
    """Per method, the sweep row with the highest mean k-NN top-1 (ties: the first listed)."""
    best = {}
    for row in rows:
        if row["method"] not in best or row["top1_mean"] > best[row["method"]]["top1_mean"]:
            best[row["method"]] = row
    return best


def run_sweep(s: Settings, arch: str, point_files, sweep_seeds=(0,), final_seeds=None) -> dict:
    """Sweep every point with `sweep_seeds`, then run each method's best point with `final_seeds`
    (default: the settings' seeds). Returns everything the report needs."""
    points = [read_point(f) for f in point_files]  # every file checked before any training
    if not points:
        raise ValueError("no sweep points given")
    final_seeds = tuple(final_seeds if final_seeds is not None else s.seeds)
    start = time.time()
    data = prepare_digits(s)
    teacher = train_teacher(s, data) if any(p["method"] in DISTILLED for p in points) else None
    sweep = [_run_point(s, data, arch, p, tuple(sweep_seeds), teacher) for p in points]
    best = pick_best(sweep)
    by_name = {p["name"]: p for p in points}
    final = {m: _run_point(s, data, arch, by_name[row["point"]], final_seeds, teacher) for m, row in best.items()}
    return {"arch": arch, "sweep_seeds": list(sweep_seeds), "final_seeds": list(final_seeds), "sweep": sweep,
            "best": {m: row["point"] for m, row in best.items()}, "final": final,
            "teacher_top1": score(s, data, teacher)["top1"] if teacher else None,
            "settings": _settings_dict(s), "wall_seconds": round(time.time() - start, 1)}


def _series(row: dict) -> tuple:
    """What a row shares with the other lrs of its series: the method and every non-lr setting."""
    return row["method"], tuple(sorted((k, str(v)) for k, v in row["overrides"].items() if k != "SOLVER.BASE_LR"))


def at_lr_edge(row: dict, rows: list[dict]) -> int:
    """+1 / -1 when `row` has the highest / lowest SOLVER.BASE_LR among the rows of its series (same
    method, same other settings) and the series has more than one lr; else 0."""
    lrs = [r["overrides"]["SOLVER.BASE_LR"] for r in rows
           if _series(r) == _series(row) and "SOLVER.BASE_LR" in r["overrides"]]
    lr = row["overrides"].get("SOLVER.BASE_LR")
    if lr is None or len(set(lrs)) < 2:
        return 0
    return 1 if lr == max(lrs) else -1 if lr == min(lrs) else 0


def _overrides_text(row: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in row["overrides"].items()) or "harness defaults"


def sweep_grid(result: dict) -> str:
    """Markdown: one row per lr, one column per series (method + its other settings), each method's
    best point in bold; a point the series did not run is blank."""
    rows = [r for r in result["sweep"] if "SOLVER.BASE_LR" in r["overrides"]]
    series = list(dict.fromkeys(_series(r) for r in rows))
    lrs = sorted({r["overrides"]["SOLVER.BASE_LR"] for r in rows})
    cell = {(_series(r), r["overrides"]["SOLVER.BASE_LR"]): r for r in rows}

    def label(key):
        method, rest = key
        return ", ".join([METHOD_LABELS[method]] + [f"{k} {v}" for k, v in rest])

    def text(row):
        if row is None:
            return ""
        value = mean_std_text(row["top1_mean"], row["top1_std"])
        return f"**{value}**" if result["best"].get(row["method"]) == row["point"] else value

    lines = ["| lr (per 256 images) | " + " | ".join(label(k) for k in series) + " |",
             "|---" * (len(series) + 1) + "|"]
    for lr in lrs:
        lines.append(f"| {lr:g} | " + " | ".join(text(cell.get((k, lr))) for k in series) + " |")
    return "\n".join(lines) + "\n"


def sweep_table(result: dict) -> str:
    """Markdown: the sweep (one row per point), then each method's best point over the final seeds."""
    lines = [f"| point | method | settings | {result['arch']} k-NN top-1 (seeds {result['sweep_seeds']}) |",
             "|---|---|---|---|"]
    for row in result["sweep"]:
        mark = " **(best)**" if result["best"].get(row["method"]) == row["point"] else ""
        lines.append(f"| {row['point']}{mark} | {METHOD_LABELS[row['method']]} | {_overrides_text(row)} | "
                     f"{mean_std_text(row['top1_mean'], row['top1_std'])} |")
    lines += ["", f"The same, one row per lr (k-NN top-1, seeds {result['sweep_seeds']}):", "",
              sweep_grid(result).rstrip("\n")]
    lines += ["", f"| method | best point | k-NN top-1, seeds {result['final_seeds']} |", "|---|---|---|"]
    for m, row in result["final"].items():
        lines.append(f"| {METHOD_LABELS[m]} | {row['point']} | {mean_std_text(row['top1_mean'], row['top1_std'])} |")
    if result.get("teacher_top1") is not None:
        lines += ["", f"The distilled students' teacher: k-NN top-1 {result['teacher_top1']:.1f}."]
    for m, name in result["best"].items():
        row = next(r for r in result["sweep"] if r["point"] == name)
        edge = at_lr_edge(row, result["sweep"])
        if edge:
            lines += ["", f"{METHOD_LABELS[m]}: the best point has the {'highest' if edge > 0 else 'lowest'} lr "
                          "of its series; the best lr may lie beyond the swept range."]
    lines += ["", "Pick rule: per method the point with the highest k-NN top-1 on the held-out digits split "
                  "(as the teacher's lr was picked). Other settings as in the main table."]
    return "\n".join(lines) + "\n"
