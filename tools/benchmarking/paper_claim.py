"""SEED's central claim at small scale, on scikit-learn's real handwritten digits.

A wide/deep ResNet teacher is trained with MoCo-v2; each student architecture is then scored four
ways under the same budget and augmentation: (a) random init, (b) MoCo-v2 alone, (c) SEED from the
teacher, (d) L2 distillation from the teacher. Score: weighted k-NN top-1 on a held-out split,
mean +- std over seeds. Ablations vary SEED's teacher temperature and queue size.

Every run's distillation recipe is a YAML config (configs/paper_claim/digits.yaml, or tiny.yaml for
the pipeline check); the harness decides only what it varies: architectures, seeds, budgets, the data.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from seed_det.data.synthetic.digits import write_digits_imagefolder
from seed_core.config import load_cfg, validate_cfg
from seed_core.evaluation import load_backbone
from tools.pipeline.report import mean_std, mean_std_text
from tools.pipeline.run_cache import MARKER, DistillRun, cached_distill
from tools.pipeline.scoring import knn_accuracy

logger = logging.getLogger(__name__)

VARIANTS = ("random", "moco", "seed", "l2")
VARIANT_LABELS = {"random": "random init", "moco": "MoCo-v2 alone", "seed": "SEED", "l2": "L2 distillation"}
DISTILLED = ("seed", "l2")  # the variants that learn from the teacher
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "paper_claim"
RECIPE = str(CONFIG_DIR / "digits.yaml")
ABLATIONS = {
    # name: (config key or harness field, values, label, keys added to every non-zero point);
    # SEED students only; only teacher_epochs changes the teacher itself.
    "teacher_temp": ("LOSS.TEACHER_TEMP", (1e-3, 1e-2, 1e-1), "teacher temperature τ_T", {}),
    "queue_size": ("QUEUE.SIZE", (128, 512, 2048), "queue size K", {}),
    # Teacher strength (the paper varies the teacher's architecture): a longer-trained teacher.
    "teacher_epochs": ("teacher_epochs", (10, 20, 40, 80), "teacher MoCo-v2 epochs", {}),
    # SEED's multi-view variant: small patches per image (the official count is 6), the official
    # 96 px at 224 scaled to 32 px images.
    "small_patches": ("DATA.SMALL_PATCHES.NUM", (0, 6), "small patches per image", {"DATA.SMALL_PATCHES.SIZE": 14}),
    # The frozen teacher's dtype (fp16 on a CPU is emulated: seed_core.teacher_precision.HalfRounded).
    "teacher_precision": ("TRAIN.TEACHER_PRECISION", ("fp32", "bf16", "fp16"), "teacher precision", {}),
}
TEACHER_ABLATIONS = frozenset({"teacher_epochs"})
# The teacher must beat every random-init network by this many k-NN top-1 points to count as a teacher.
MIN_TEACHER_GAIN = 3.0
# Recipe keys the reports state.
REPORTED_KEYS = ("DATA.IMAGE_SIZE", "DATA.AUGMENTATION", "SOLVER.BATCH_SIZE", "SOLVER.BASE_LR", "QUEUE.SIZE",
                 "LOSS.TEACHER_TEMP", "LOSS.STUDENT_TEMP", "LOSS.MOCO_TEMP", "LOSS.MOCO_MOMENTUM")


@dataclass(frozen=True)
class Settings:
    """What the harness varies; everything a run learns with is `recipe` + `overrides`."""
    work_dir: str = "output/paper_claim"
    student_archs: tuple = ("resnet18", "mobilenetv3_small_050")
    teacher_arch: str = "resnet34"
    seeds: tuple = (0, 1, 2)
    val_fraction: float = 0.3
    max_per_class: int | None = None      # fewer digits per class (tiny runs)
    teacher_epochs: int = 40
    epochs: int = 20                       # every trained student variant
    max_iter: int = 0                      # > 0 replaces epochs for students (tiny runs)
    teacher_max_iter: int = 0
    recipe: str = RECIPE                   # the distillation config every run starts from
    overrides: dict = field(default_factory=dict)  # config KEY -> value on top of the recipe, every run
    teacher_run: str = ""                  # a finished teacher run folder (run.json) to reuse instead of training


# A few iterations on 12 digits per class: checks the whole pipeline, numbers mean nothing.
TINY = dict(recipe=str(CONFIG_DIR / "tiny.yaml"), seeds=(0,), max_per_class=12, teacher_arch="resnet18",
            teacher_max_iter=2, max_iter=2)


def recipe_value(s: Settings, key: str):
    """A config value every run of `s` trains with (the recipe with the overrides). Checked as a
    SEED student's config, the most constrained run, so bad settings fail before any work."""
    cfg = load_cfg(s.recipe, _flat({"LOSS.NAME": "seed", "MODEL.TEACHER.WEIGHTS": "teacher", **s.overrides}))
    validate_cfg(cfg)
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def choose_folders(args, results_dir: str, default_work: str, tiny_prefix: str) -> None:
    """Set args.out_dir / args.work_dir. Quick runs never write over the committed results:
    with args.tiny both go to a temporary folder unless given, and `results_dir` is refused."""
    if args.tiny:
        if args.out_dir and os.path.realpath(args.out_dir) == os.path.realpath(results_dir):
            raise SystemExit(f"error: --tiny would overwrite the committed results in {results_dir}; "
                             "leave --output-dir out (a temporary folder is used) or choose another folder")
        tmp = None if (args.out_dir and args.work_dir) else tempfile.mkdtemp(prefix=tiny_prefix)
        args.out_dir = args.out_dir or os.path.join(tmp, "results")
        args.work_dir = args.work_dir or os.path.join(tmp, "work")
    args.out_dir = args.out_dir or results_dir
    args.work_dir = args.work_dir or default_work


@dataclass
class Digits:
    train_root: str
    val_root: str
    identity: str  # what DATA.ROOT holds, for cache keys
    image_size: int
    counts: dict


def prepare_digits(s: Settings) -> Digits:
    size = recipe_value(s, "DATA.IMAGE_SIZE")
    tag = f"digits-{size}px" + (f"-max{s.max_per_class}" if s.max_per_class else "")
    root = Path(s.work_dir) / tag
    info = write_digits_imagefolder(root, size=size, seed=0, val_fraction=s.val_fraction,
                                    max_per_class=s.max_per_class)
    identity = json.dumps({"dataset": "sklearn-digits", "split": "train", "size": size,
                           "val_fraction": s.val_fraction, "max_per_class": s.max_per_class}, sort_keys=True)
    return Digits(str(root / "train"), str(root / "val"), identity, size,
                  {"train": info["train"], "val": info["val"]})


def _fmt(v) -> str:
    # yacs checks types: floats must look like floats ("1.0", not "1").
    return repr(float(v)) if isinstance(v, float) else str(v)


def _flat(opts: dict) -> list[str]:
    return [item for k, v in opts.items() for item in (k, _fmt(v))]


def run_opts(s: Settings, data: Digits, arch: str, loss: str, seed: int, epochs: int, max_iter: int,
             teacher: DistillRun | None = None) -> list[str]:
    """`KEY VALUE` overrides of one run, on top of `s.recipe`."""
    opts = {"SEED": seed, "MODEL.STUDENT.ARCH": arch, "LOSS.NAME": loss, "DATA.ROOT": data.train_root,
            "SOLVER.EPOCHS": epochs, "SOLVER.MAX_ITER": max_iter}
    if teacher is not None:
        opts.update({"MODEL.TEACHER.ARCH": s.teacher_arch, "MODEL.TEACHER.WEIGHTS": teacher.checkpoint})  # format auto-detected
    opts.update(s.overrides)
    return _flat(opts)


def _identities(data: Digits, teacher: DistillRun | None) -> dict:
    ids = {"DATA.ROOT": data.identity}
    if teacher is not None:
        ids["MODEL.TEACHER.WEIGHTS"] = f"run:{teacher.key}"
    return ids


def train_teacher(s: Settings, data: Digits) -> DistillRun:
    if s.teacher_run:
        return reuse_run(s.teacher_run)
    opts = run_opts(s, data, s.teacher_arch, "moco", 0, s.teacher_epochs, s.teacher_max_iter)
    return cached_distill(f"teacher-{s.teacher_arch}-moco", opts, Path(s.work_dir) / "runs", _identities(data, None),
                          config_file=s.recipe)


def reuse_run(run_dir: str) -> DistillRun:
    """A finished run of the cache (its folder with run.json), read only."""
    marker = Path(run_dir) / MARKER
    try:
        record = json.loads(marker.read_text())
        result, key = record["result"], record["params"]["key"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{run_dir} is not a finished training run ({marker}: {e}); give a run folder "
                         f"of the harness' cache, e.g. <work-dir>/runs/teacher-resnet34-moco-<key>") from None
    return DistillRun(Path(run_dir).name, key, result["out_dir"], result["backbone"], result["checkpoint"],
                      result.get("seconds", 0.0), reused=True)


def train_student(s: Settings, data: Digits, arch: str, variant: str, seed: int,
                  teacher: DistillRun | None) -> DistillRun:
    distil = variant in DISTILLED
    opts = run_opts(s, data, arch, variant, seed, s.epochs, s.max_iter, teacher if distil else None)
    ids = _identities(data, teacher if distil else None)
    return cached_distill(f"{arch}-{variant}-s{seed}", opts, Path(s.work_dir) / "runs", ids, config_file=s.recipe)


def score(s: Settings, data: Digits, record: DistillRun | None = None, arch: str | None = None,
          seed: int = 0) -> dict:
    """k-NN of a trained run's backbone, or of a random-init `arch` when `record` is None."""
    if record is None:
        bb = load_backbone(arch=arch, random_init=True, seed=seed)
    else:
        bb = load_backbone(record.backbone)
    acc = knn_accuracy(bb, data.train_root, data.val_root, data.image_size, Path(s.work_dir) / "features")
    return {"top1": acc["top1"], "top5": acc["top5"]}


def _summarise(per_seed: list[dict]) -> dict:
    top1 = [r["top1"] for r in per_seed]
    mean, std = mean_std(top1)
    return {"top1_mean": mean, "top1_std": std, "per_seed": per_seed}


def evaluate_teacher(s: Settings, data: Digits, teacher: DistillRun, random_rows: dict) -> dict:
    """Teacher k-NN against random-init networks (its own arch and the students' random rows)."""
    acc = score(s, data, teacher)
    own_random = _summarise([{"seed": sd, **score(s, data, None, s.teacher_arch, sd)} for sd in s.seeds])
    best_random = max([own_random["top1_mean"]] + [r["top1_mean"] for r in random_rows.values()])
    gain = acc["top1"] - best_random
    ok = gain >= MIN_TEACHER_GAIN
    if not ok:
        logger.warning("the teacher's k-NN top-1 (%.2f) vs the best random-init network (%.2f): margin "
                       "%+.2f points, below the %.1f required; distillation results say little about SEED. "
                       "Train a better teacher (epochs, lr) first",
                       acc["top1"], best_random, gain, MIN_TEACHER_GAIN)
    return {"arch": s.teacher_arch, "run": teacher.out_dir, "train_seconds": teacher.seconds, **acc,
            "random_init_same_arch": own_random, "best_random_top1": best_random,
            "gain_over_best_random": gain, "clearly_beats_random": ok}


def run_main(s: Settings) -> dict:
    """Teacher, then every (arch, variant, seed); returns everything the reports need."""
    start = time.time()
    data = prepare_digits(s)
    logger.info("digits: %d train / %d val images at %d px", data.counts["train"], data.counts["val"], data.image_size)
    teacher = train_teacher(s, data)
    rows, runs = {}, []
    for arch in s.student_archs:
        for variant in VARIANTS:
            per_seed = []
            for seed in s.seeds:
                rec = None if variant == "random" else train_student(s, data, arch, variant, seed, teacher)
                per_seed.append({"seed": seed, **score(s, data, rec, arch, seed),
                                 "train_seconds": rec.seconds if rec else 0.0,
                                 "reused": rec.reused if rec else False})
                if rec:
                    runs.append(rec.out_dir)
            rows[f"{arch}/{variant}"] = {"arch": arch, "variant": variant, **_summarise(per_seed)}
            logger.info("%s %s: k-NN top-1 %s", arch, variant, _cell(rows[f"{arch}/{variant}"], 2))
    random_rows = {k: v for k, v in rows.items() if v["variant"] == "random"}
    teacher_info = evaluate_teacher(s, data, teacher, random_rows)
    return {"settings": _settings_dict(s), "data": data.counts, "teacher": teacher_info, "rows": rows,
            "wall_seconds": round(time.time() - start, 1)}


def run_ablation(s: Settings, name: str, arch: str, values=None, with_moco: bool = True) -> dict:
    """SEED students of `arch` at each value of one setting (others at their defaults), and (with
    `with_moco`) MoCo-v2 students of `arch` for scale."""
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}: choose from {', '.join(ABLATIONS)}")
    attr, default_values, label, with_value = ABLATIONS[name]
    values = tuple(values or default_values)
    start = time.time()
    data = prepare_digits(s)
    points = []
    for value in values:
        if hasattr(s, attr):
            sv = replace(s, **{attr: type(getattr(s, attr))(value)})
        else:
            kind = type(recipe_value(s, attr))
            sv = replace(s, overrides={**s.overrides, attr: kind(value), **(with_value if value else {})})
            recipe_value(sv, attr)  # a bad point (e.g. a queue smaller than the batch) fails before training
        # SEED's queue and temperatures are the student's: the teacher stays the main table's.
        teacher = train_teacher(sv if name in TEACHER_ABLATIONS else s, data)
        per_seed = [{"seed": seed, **score(sv, data, train_student(sv, data, arch, "seed", seed, teacher))}
                    for seed in s.seeds]
        points.append({"value": value, "teacher_top1": score(s, data, teacher)["top1"], **_summarise(per_seed)})
        logger.info("ablation %s = %s: k-NN top-1 %s (teacher %.2f)", name, value, _cell(points[-1], 2),
                    points[-1]["teacher_top1"])
    moco = [score(s, data, train_student(s, data, arch, "moco", seed, None)) for seed in s.seeds] if with_moco else []
    return {"ablation": name, "label": label, "arch": arch, "points": points,
            "moco_alone": _summarise([{"seed": sd, **m} for sd, m in zip(s.seeds, moco)]) if moco else None,
            "teacher_top1": score(s, data, train_teacher(s, data))["top1"], "settings": _settings_dict(s),
            "wall_seconds": round(time.time() - start, 1)}


def _settings_dict(s: Settings) -> dict:
    d = asdict(s)
    d["student_archs"], d["seeds"] = list(s.student_archs), list(s.seeds)
    d["recipe_values"] = {k: recipe_value(s, k) for k in REPORTED_KEYS}
    return d


# ----------------------------------------------------------------------------- reports
def _cell(row: dict, digits: int = 1) -> str:
    """k-NN top-1 'mean ± std' over seeds (the mean alone for one seed)."""
    return mean_std_text(row["top1_mean"], row["top1_std"], digits)


def main_table(result: dict) -> str:
    """Markdown: one row per student architecture, one column per variant, plus SEED - MoCo."""
    s, t = result["settings"], result["teacher"]
    lines = ["| student | " + " | ".join(VARIANT_LABELS[v] for v in VARIANTS) + " | SEED − MoCo |",
             "|---" * (len(VARIANTS) + 2) + "|"]
    for arch in s["student_archs"]:
        rows = [result["rows"][f"{arch}/{v}"] for v in VARIANTS]
        gap = result["rows"][f"{arch}/seed"]["top1_mean"] - result["rows"][f"{arch}/moco"]["top1_mean"]
        lines.append(f"| {arch} | " + " | ".join(_cell(r) for r in rows) + f" | {gap:+.1f} |")
    own = t["random_init_same_arch"]
    verdict = "clearly beats" if t["clearly_beats_random"] else "does NOT clearly beat"
    lines += [
        "",
        f"Teacher: {t['arch']} trained with MoCo-v2 for {s['teacher_max_iter'] or s['teacher_epochs']} "
        f"{'iterations' if s['teacher_max_iter'] else 'epochs'}: k-NN top-1 **{t['top1']:.1f}** "
        f"(random-init {t['arch']}: {_cell(own)}); it {verdict} the best "
        f"random-init network ({t['best_random_top1']:.1f}, margin {t['gain_over_best_random']:+.1f} points, "
        f"required ≥ {MIN_TEACHER_GAIN:.0f}).",
        "",
        _protocol(result),
    ]
    return "\n".join(lines) + "\n"


def _protocol(result: dict) -> str:
    s, d = result["settings"], result["data"]
    r = s["recipe_values"]
    budget = f"{s['max_iter']} iterations" if s["max_iter"] else f"{s['epochs']} epochs"
    return (f"k-NN top-1 (%) on the held-out digits split ({d['val']} val images; {d['train']} train images are "
            f"both the unlabelled training set and the labelled k-NN bank), weighted k-NN k=200, T=0.07 on "
            f"backbone features; mean ± sample std over seeds {s['seeds']}. Every trained student: {budget}, "
            f"batch {r['SOLVER.BATCH_SIZE']}, lr {r['SOLVER.BASE_LR']} × batch/256, {r['DATA.AUGMENTATION']} "
            f"augmentation at {r['DATA.IMAGE_SIZE']} px, queue K={r['QUEUE.SIZE']}; SEED τ_T={r['LOSS.TEACHER_TEMP']}, "
            f"τ_S={r['LOSS.STUDENT_TEMP']}; MoCo τ={r['LOSS.MOCO_TEMP']}, key momentum {r['LOSS.MOCO_MOMENTUM']}; "
            f"recipe {Path(s['recipe']).name}.")


def _save_fig(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt
    plt.close(fig)


def main_chart(result: dict, path: Path) -> None:
    """Grouped bars (variant per architecture) with std error bars and the teacher as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = result["settings"]["student_archs"]
    width = 0.8 / len(VARIANTS)
    fig, ax = plt.subplots(figsize=(1.8 + 2.6 * len(archs), 4.6))
    for i, v in enumerate(VARIANTS):
        rows = [result["rows"][f"{a}/{v}"] for a in archs]
        xs = [j + (i - (len(VARIANTS) - 1) / 2) * width for j in range(len(archs))]
        ax.bar(xs, [r["top1_mean"] for r in rows], width, yerr=[r["top1_std"] or 0.0 for r in rows],
               capsize=3, label=VARIANT_LABELS[v])
        for x, r in zip(xs, rows):  # above the error bar, where bar_label would sit on it
            ax.text(x, r["top1_mean"] + (r["top1_std"] or 0.0) + 0.8, f"{r['top1_mean']:.1f}", ha="center", fontsize=7,
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=0.5))
    t = result["teacher"]
    ax.axhline(t["top1"], color="k", ls="--", lw=1, zorder=0, label=f"teacher {t['arch']} ({t['top1']:.1f})")
    ax.set_xticks(range(len(archs)), archs)
    ax.set_ylabel("k-NN top-1 (%)")
    lo = min(r["top1_mean"] - (r["top1_std"] or 0.0) for r in result["rows"].values())
    ax.set_ylim(max(0.0, lo - 10), 100)
    ax.set_title("Digits: student k-NN top-1, mean ± std over seeds")
    # Below the axes: inside, it would hide the bars whatever corner it took.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    _save_fig(fig, path)


def _value_text(v) -> str:
    return v if isinstance(v, str) else f"{v:g}"


def ablation_table(result: dict) -> str:
    lines = [f"| {result['label']} | SEED {result['arch']} k-NN top-1 | teacher k-NN top-1 |", "|---|---|---|"]
    lines += [f"| {_value_text(p['value'])} | {_cell(p)} | {p['teacher_top1']:.1f} |" for p in result["points"]]
    lines += ["", f"MoCo-v2 alone ({result['arch']}): {_cell(result['moco_alone'])}; teacher of the main "
                  f"table: {result['teacher_top1']:.1f}. Other settings as in the main table."]
    return "\n".join(lines) + "\n"


def ablation_chart(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    categorical = any(isinstance(p["value"], str) for p in pts)  # e.g. teacher precisions
    xs = list(range(len(pts))) if categorical else [p["value"] for p in pts]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.errorbar(xs, [p["top1_mean"] for p in pts], yerr=[p["top1_std"] or 0.0 for p in pts],
                marker="o", capsize=3, label=f"SEED {result['arch']}")
    ax.axhline(result["moco_alone"]["top1_mean"], color="tab:orange", ls=":", label="MoCo-v2 alone")
    ax.plot(xs, [p["teacher_top1"] for p in pts], "k--", marker=".", lw=1, label="teacher")
    if not categorical:
        ax.set_xscale("log", base=10 if result["ablation"] == "teacher_temp" else 2)
    ax.set_xticks(xs, [_value_text(p["value"]) for p in pts])
    ax.minorticks_off()
    ax.set_xlabel(result["label"])
    ax.set_ylabel("k-NN top-1 (%)")
    ax.set_title(f"SEED {result['arch']} on digits: {result['label']}", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    _save_fig(fig, path)


def write_report(result: dict, out_dir: str | Path, stem: str, table: str, chart) -> dict[str, str]:
    """<stem>.md, <stem>.png and <stem>.json in `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: str(out / f"{stem}.{ext}") for ext in ("md", "png", "json")}
    Path(paths["md"]).write_text(table)
    chart(result, Path(paths["png"]))
    Path(paths["json"]).write_text(json.dumps(result, indent=2) + "\n")
    logger.info("wrote %s", ", ".join(paths.values()))
    return paths
