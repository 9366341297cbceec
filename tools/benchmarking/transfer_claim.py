"""Does pretraining transfer to detection, and does SEED beat MoCo-v2 at ResNet-18? Measured on the
handwritten-digit scenes: the demo's pretraining stages (teacher, SEED and MoCo-v2 students, cached),
then fine-tuning from each initialisation (and from the teacher itself, an upper reference) for
every detector, label fraction, engine and seed. Every run is a cached stage under the work folder.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from tools.pipeline.demo import det_stage_name, fine_tuning_step, load_preset, run_pipeline, summarise
from tools.pipeline.report import diverged_note, mean_std_text, metric_cell, seeds_note

logger = logging.getLogger(__name__)

class Detector(NamedTuple):
    config: str            # detection config in configs/demo/
    label: str
    schedule: int = 1      # iterations: this many times the preset's det_iters
    masks: bool = False    # trains instance masks: its table has mask AP
    input_scale: int = 1   # sees the scenes upscaled this many times (train and test)

    def iterations(self, preset: dict) -> int:
        return self.schedule * preset["det_iters"]

    def input_size(self, preset: dict) -> int:
        return self.input_scale * preset["scenes"]["canvas"]


DETECTORS = {
    "fpn": Detector("digits_r18_fpn.yaml", "Faster R-CNN R18-FPN"),
    # R18-C4 detects on the stride-16 res4 map alone: a 96 px scene gives it 6x6 cells, too few to
    # learn the digits at the preset's schedule. Upscaled 2x, as Detectron2 upscales VOC's ~500 px
    # images to 800, it learns them for a small extra step cost, where 4x the schedule at 96 px let
    # random init catch up (docs/RESULTS.md#faster-r-cnn-r18-c4).
    "c4": Detector("digits_r18_c4.yaml", "Faster R-CNN R18-C4", input_scale=2),
    # The mask head learns the digits' strokes long after the boxes: at the preset's schedule no
    # mask is learnt yet, hence 4x (docs/RESULTS.md#mask-r-cnn-r18-fpn).
    "fpn_mask": Detector("digits_r18_fpn_mask.yaml", "Mask R-CNN R18-FPN", schedule=4, masks=True),
}
INIT_LABELS = {"random": "random init", "moco": "MoCo-v2 R18", "seed": "SEED R18", "teacher": "teacher (reference)"}
SPLIT_LABELS = {"train": "all labels", "train_small": "10 % labels"}
DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50}


@dataclass(frozen=True)
class Settings:
    preset: str = "transfer"                 # pretraining and schedule: configs/demo/<preset>.yaml
    work_dir: str = "output/transfer_claim"
    seeds: tuple = (0, 1, 2, 3, 4)
    splits: tuple = ("train", "train_small")
    detectors: tuple = ("fpn", "c4", "fpn_mask")
    inits: tuple = ("random", "moco", "seed", "teacher")
    engines: tuple = ("torchvision",)
    workers: int = 2


def _extra(pre, init: str) -> dict:
    """The teacher may be deeper than the students: its runs name its depth."""
    if init != "teacher":
        return {}
    arch = pre.preset["teacher_arch"]
    if arch not in DEPTHS:
        raise ValueError(f"the teacher {arch} cannot be fine-tuned by the R-CNN configs (ResNets only); "
                         f"leave 'teacher' out of the inits")
    return {"MODEL.RESNETS.DEPTH": DEPTHS[arch]} if DEPTHS[arch] != 18 else {}


def _tag(engine: str, det: str, split: str, preset: dict) -> str:
    """Names the schedule (and an upscaled input) too: a run at another schedule or input size is
    another stage, and both stay cached."""
    d = DETECTORS[det]
    size = f"_{d.input_size(preset)}px" if d.input_scale != 1 else ""
    return f"_{engine}_{det}_{split}_{d.iterations(preset)}it{size}"


def run_claim(s: Settings) -> dict:
    start = time.time()
    p = load_preset(s.preset)
    cells = [(engine, det, split, init) for engine in s.engines for det in s.detectors for split in s.splits
             for init in s.inits]

    def runs_as(pre, init: str) -> str:
        """Whose fine-tunings `init` has: a teacher that is the MoCo-v2 student (same settings) has the
        MoCo-v2 student's, not a second, identical set."""
        return "moco" if init == "teacher" and pre.moco_is_teacher and "moco" in s.inits else init

    def fine_tunings(pre):
        return [fine_tuning_step(s.work_dir, pre, init, seed, engine, tag=_tag(engine, det, split, pre.preset),
                                 det_config=DETECTORS[det].config, split=split, extra=_extra(pre, init),
                                 det_iters=DETECTORS[det].iterations(pre.preset),
                                 input_scale=DETECTORS[det].input_scale)
                for engine, det, split, init in cells if runs_as(pre, init) == init for seed in s.seeds]

    pre, done = run_pipeline(s.work_dir, p, s.workers, fine_tunings, with_teacher_weights="teacher" in s.inits)
    rows = []
    for engine, det, split, init in cells:
        source = runs_as(pre, init)
        runs = [done[det_stage_name(source, seed, _tag(engine, det, split, p))] for seed in s.seeds]
        same = {"same_as": source} if source != init else {}
        rows.append({"engine": engine, "detector": det, "split": split, "init": init,
                     "iterations": DETECTORS[det].iterations(p), "input_size": DETECTORS[det].input_size(p),
                     **same, **summarise(runs)})
        logger.info("%s %s %s %s: AP50 %s%s", engine, det, split, init,
                    mean_std_text(rows[-1].get("AP50", float("nan")), rows[-1].get("AP50_std")), diverged_note(rows[-1]))
    d = asdict(s)
    return {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}, "preset": p,
            "knn": pre.knn, "counts": pre.data["counts"], "rows": rows, "wall_seconds": round(time.time() - start, 1)}


def _row(result: dict, engine, det, split, init) -> dict | None:
    for r in result["rows"]:
        if (r["engine"], r["detector"], r["split"], r["init"]) == (engine, det, split, init):
            return r
    return None


def _gap(a: dict, b: dict, key: str) -> str:
    """Difference of means, with the larger of the two seed spreads to judge it by (a cell of one
    seed has none)."""
    if not a or not b or key not in a or key not in b:
        return "—"
    spreads = [x[key + "_std"] for x in (a, b) if key + "_std" in x]
    judge = f"spread {max(spreads):.1f}" if spreads else "one seed: no spread"
    return f"{a[key] - b[key]:+.1f} ({judge})"


def claim_table(result: dict) -> str:
    s = result["settings"]
    metrics = ["AP", "AP50", "AP75"]
    lines = []
    for engine in s["engines"]:
        for det in s["detectors"]:
            ms = metrics + (["mask_AP"] if DETECTORS[det].masks else [])
            lines += [f"### {DETECTORS[det].label} ({engine} engine)", "",
                      "| labels | initialisation | " + " | ".join(ms) + " |", "|---|---|" + "---:|" * len(ms)]
            for split in s["splits"]:
                for init in s["inits"]:
                    r = _row(result, engine, det, split, init)
                    cells = [metric_cell(r, m) if r else "—" for m in ms]
                    label = INIT_LABELS[init] + (f" = {INIT_LABELS[r['same_as']]}" if r and r.get("same_as") else "")
                    label += diverged_note(r) if r else ""
                    lines.append(f"| {SPLIT_LABELS[split]} | {label} | " + " | ".join(cells) + " |")
            lines.append("")
            lines += ["| labels | SEED − random AP50 | MoCo − random AP50 | SEED − MoCo AP | SEED − MoCo AP50 | SEED − MoCo AP75 |",
                      "|---|---:|---:|---:|---:|---:|"]
            for split in s["splits"]:
                g = {i: _row(result, engine, det, split, i) for i in ("random", "moco", "seed")}
                lines.append(f"| {SPLIT_LABELS[split]} | {_gap(g['seed'], g['random'], 'AP50')} | "
                             f"{_gap(g['moco'], g['random'], 'AP50')} | {_gap(g['seed'], g['moco'], 'AP')} | "
                             f"{_gap(g['seed'], g['moco'], 'AP50')} | {_gap(g['seed'], g['moco'], 'AP75')} |")
            lines.append("")
    lines += _engine_comparison(result)
    p, c = result["preset"], result["counts"]
    canvas = p["scenes"]["canvas"]
    longer = "".join(f" ({DETECTORS[d].label}: {n})" for d, n in _recorded(result, "iterations", p["det_iters"]).items()
                     if n != p["det_iters"])
    larger = "".join(f" ({DETECTORS[d].label}: upscaled to {n} px)"
                     for d, n in _recorded(result, "input_size", canvas).items() if n != canvas)
    lines.append(f"{seeds_note(s['seeds'])}; {c['train']} labelled training scenes (10 %: {c['train_small']}), "
                 f"{c['test']} test scenes of {canvas} px{larger}, {p['det_iters']} iterations{longer} at batch "
                 f"{p['det_batch']}, lr {p['det_lr']}. Pretraining on {c['pretrain']} unlabelled digit crops: "
                 f"teacher {p['teacher_arch']} MoCo-v2 {p['teacher_epochs']} epochs, students {p['student_arch']} "
                 f"{p['student_epochs']} epochs. k-NN top-1 on held-out digit crops: "
                 + ", ".join(f"{k} {v:.1f}" for k, v in result["knn"].items()) + ".")
    if any(r.get("diverged") for r in result["rows"]):
        lines.append("\nA run that diverged (its loss became non-finite) is counted beside its initialisation and "
                     "left out of that cell's mean and std.")
    return "\n".join(lines) + "\n"


def _recorded(result: dict, key: str, default) -> dict:
    """Each detector's `key` (its iterations, its input size) as its rows recorded it; a result
    written before rows carried it ran every detector at the preset's `default`, so an old result
    reads true after the detector's settings change."""
    found = {}
    for r in result["rows"]:
        found.setdefault(r["detector"], set()).add(r.get(key, default))
    return {d: "/".join(str(n) for n in sorted(ns)) if len(ns) > 1 else next(iter(ns)) for d, ns in found.items()}


def _engine_comparison(result: dict) -> list[str]:
    """Same config and weights on each engine: is the difference inside the seed-to-seed spread?"""
    s = result["settings"]
    if len(s["engines"]) < 2:
        return []
    first, *others = s["engines"]
    lines = ["### Engines compared (same config, weights and seeds)", "",
             "| detector | labels | initialisation | " + " | ".join(f"{e} − {first} AP50" for e in others) + " |",
             "|---|---|---|" + "---:|" * len(others)]
    for det in s["detectors"]:
        for split in s["splits"]:
            for init in s["inits"]:
                base = _row(result, first, det, split, init)
                if base.get("same_as"):
                    continue
                gaps = [_gap(_row(result, e, det, split, init), base, "AP50") for e in others]
                lines.append(f"| {DETECTORS[det].label} | {SPLIT_LABELS[split]} | {INIT_LABELS[init]} | "
                             + " | ".join(gaps) + " |")
    return lines + [""]


def _tick_label(det: str) -> str:
    """"Faster R-CNN" or "Mask R-CNN" above the backbone: two lines under a group of bars."""
    return DETECTORS[det].label.replace(" R18-", "\nR18-")


def claim_chart(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["settings"]
    groups = [(e, d, sp) for e in s["engines"] for d in s["detectors"] for sp in s["splits"]]
    # an init that only repeats another's runs (a teacher that is the MoCo-v2 student) gets no bars
    inits = [i for i in s["inits"] if not all(_row(result, *g, i).get("same_as") for g in groups)]
    width = 0.8 / len(inits)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(groups), 4.5))
    for i, init in enumerate(inits):
        rows = [_row(result, *g, init) for g in groups]
        xs = [j + (i - (len(inits) - 1) / 2) * width for j in range(len(groups))]
        ax.bar(xs, [r.get("AP50", 0.0) for r in rows], width, yerr=[r.get("AP50_std", 0.0) for r in rows], capsize=3,
               label=INIT_LABELS[init])
    ax.set_xticks(range(len(groups)), [f"{_tick_label(d)}\n{SPLIT_LABELS[sp]}" +
                                        (f"\n{e}" if len(s["engines"]) > 1 else "") for e, d, sp in groups],
                  fontsize=8)
    ax.set_ylabel("box AP50 (%)")
    ax.set_title("Digit scenes, fine-tuned from each initialisation\n(mean ± std over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(result: dict, out_dir: str | Path) -> dict:
    from seed_core.checkpoint_io import atomic_write_text
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "transfer_claim.json", "md": out / "transfer_claim.md", "png": out / "transfer_claim.png"}
    atomic_write_text(json.dumps(result, indent=1) + "\n", paths["json"])
    atomic_write_text(claim_table(result), paths["md"])
    claim_chart(result, paths["png"])
    return {k: str(v) for k, v in paths.items()}


