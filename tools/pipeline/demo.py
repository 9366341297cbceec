"""The whole SEED transfer pipeline in one call, on handwritten-digit scenes, cached stage by stage:

  digit scenes + unlabelled digit crops -> MoCo-v2 ResNet-34 teacher -> SEED ResNet-18 student -> Detectron2 .pkl
                                        -> MoCo-v2 ResNet-18 student (same budget)            -> Detectron2 .pkl
  random init / MoCo-v2 / SEED  -> Faster R-CNN fine-tuned with each of several seeds -> mean ± std table

The stages are steps of one schedule (tools.pipeline.side_by_side): each starts, two at a time on a
2-core machine, as soon as what it needs is done. Settings are a preset YAML
(configs/demo/<name>.yaml, `_BASE_: Base-Demo.yaml`). Each stage writes
`<stage>/run.json` when it is done (tools.pipeline.run_cache); a rerun skips finished stages whose
parameters are unchanged and resumes an interrupted distillation from its checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch

from seed_core.config import CfgNode, load_cfg
from seed_core.constants import METRICS_LOG_FILE
from seed_core.encoders import backbone_size
from seed_core.errors import ConfigError, NonFiniteLossError
from seed_core.run_dir import claim_run_dir
from seed_det.config import load_det_config
from seed_det.engines import RunOptions, engine_identity, run_config
from tools.pipeline.run_cache import CachedRun, distill
from tools.pipeline.side_by_side import Step, default_processes, run_steps

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRESET_DIR = os.path.join(REPO, "configs", "demo")
BASE_PRESET = os.path.join(PRESET_DIR, "Base-Demo.yaml")
INITS = ("random", "moco", "seed")
LEARNING_RATES = ("distill_base_lr", "seed_student_lr", "moco_student_lr", "det_lr")
PRECISIONS = ("fp32", "bf16", "auto")  # of the pretraining on CPU (TRAIN.PRECISION; fp16 needs CUDA)


def preset_names() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(PRESET_DIR)
                  if f.endswith(".yaml") and not f.startswith(("Base-", "digits_", "shapes_")))


def load_preset(preset: str) -> dict:
    """A preset by name (configs/demo/<name>.yaml) or path, merged over Base-Demo.yaml; unknown
    keys and wrong types are refused by the merge."""
    path = preset if preset.endswith(".yaml") else os.path.join(PRESET_DIR, preset + ".yaml")
    if not os.path.isfile(path):
        raise ValueError(f"demo preset {preset!r} not found ({path}); choose one of {', '.join(preset_names())} "
                         f"or pass a YAML file that has `_BASE_` {BASE_PRESET}")
    with open(BASE_PRESET) as f:
        cfg = CfgNode(CfgNode.load_cfg(f))
    try:
        cfg.merge_from_file(path)
    except OSError as e:  # a `_BASE_` that does not exist
        raise ValueError(f"demo preset {path}: {e} (`_BASE_` must name {BASE_PRESET} or a preset that "
                         "inherits it; a relative `_BASE_` is read from the preset's own folder)") from None
    except (KeyError, ValueError, AssertionError) as e:
        raise ValueError(f"demo preset {path}: {e.args[0] if e.args else e} (the known keys and their types "
                         f"are those of {BASE_PRESET})") from None
    # A bad student lr would otherwise surface only after the teacher has trained.
    bad = [k for k in LEARNING_RATES if not float(cfg[k]) > 0]
    if bad:
        raise ValueError(f"demo preset {path}: {', '.join(f'{k} = {cfg[k]}' for k in bad)}; learning rates "
                         "must be > 0 (per 256 images, e.g. 0.03)")
    if int(cfg.threads) < 1 or int(cfg.processes) < 0:
        raise ValueError(f"demo preset {path}: threads = {cfg.threads}, processes = {cfg.processes}; threads must "
                         "be >= 1 and processes >= 0 (0: one per core, 1: every stage in this process)")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"demo preset {path}: precision = {cfg.precision}; choose one of {', '.join(PRECISIONS)}")
    _check_teacher_size(path, cfg.teacher_arch, cfg.student_arch)
    return json.loads(json.dumps(cfg))  # plain dicts and lists


def _check_teacher_size(path: str, teacher: str, student: str) -> None:
    """SEED distils a larger network into a smaller one (or one of its size): refuse the reverse, and
    unknown architectures, before the teacher trains."""
    try:
        sizes = {arch: backbone_size(arch) for arch in dict.fromkeys((teacher, student))}  # one network built once
    except ConfigError as e:
        raise ValueError(f"demo preset {path}: {e}") from None
    if sizes[teacher] < sizes[student]:
        raise ValueError(f"demo preset {path}: teacher_arch {teacher} ({sizes[teacher] / 1e6:.1f} M parameters) is "
                         f"smaller than student_arch {student} ({sizes[student] / 1e6:.1f} M): SEED distils a "
                         f"larger teacher into a smaller student")


def _announce(msg: str) -> None:
    print(msg, flush=True)


def _stage(root: str, name: str, params: dict) -> CachedRun:
    return CachedRun(os.path.join(root, name), params, announce=_announce)


def _settings(values: dict) -> list:
    """{"SECTION.KEY": value} as the config's `KEY value` pairs, the values kept typed (never
    stringified): the config schema merges them and refuses unknown keys and wrong types."""
    return [x for key_value in values.items() for x in key_value]


def _distill(stage: CachedRun, opts: dict, restart: bool) -> dict:
    return distill(load_cfg(None, _settings({**opts, "OUTPUT_DIR": stage.dir})), restart=restart)


def _distill_stage(out_root: str, name: str, opts: dict, identity: dict | None = None) -> dict:
    """One cached distillation stage. `identity`: what else the result depends on (the teacher's
    settings), so a changed teacher retrains the student instead of reusing it."""
    st = _stage(out_root, name, {**opts, **({"identity": identity} if identity else {})})
    outdated = st.outdated()  # finished or begun with other settings: not resumed, moved aside
    return st.run(lambda: _distill(st, opts, restart=outdated))


def _trained(out_root: str, name: str, opts: dict, teacher: tuple | None = None) -> dict:
    """The distillation stage `name`, trained or reused; with `teacher` = (stage name, opts) of a
    finished stage, it distils from that stage's checkpoint."""
    if not teacher:
        return _distill_stage(out_root, name, opts)
    opts = {**opts, "MODEL.TEACHER.WEIGHTS": _distill_stage(out_root, *teacher)["checkpoint"]}
    return _distill_stage(out_root, name, opts, identity={"teacher": teacher[1]})


def _backbone_step(out_root: str, name: str, opts: dict, teacher: tuple | None, convert_as: str | None) -> dict:
    """A pipeline step (module level: it runs in a worker process): the stage `name`, and with
    `convert_as` its backbone converted to `<out_root>/convert_<convert_as>/<convert_as>.pkl`."""
    from seed_det.convert import convert_to_d2
    res = _trained(out_root, name, opts, teacher)
    if convert_as:
        pkl = _converted(out_root, convert_as)
        # Keyed by the backbone's content: a retrained backbone at the same path is converted again.
        conv = _stage(out_root, f"convert_{convert_as}", {"backbone": res["backbone"],
                                                          "backbone_sha256": _file_digest(res["backbone"])})
        conv.run(lambda: {"pkl": pkl, **convert_to_d2(res["backbone"], pkl, overwrite=True)})
    return res


def _converted(out_root: str, name: str) -> str:
    return os.path.join(out_root, f"convert_{name}", f"{name}.pkl")


def _processes(p: dict) -> int:
    return int(p["processes"]) or default_processes()


def _detect(stage: CachedRun, weights: str, data: dict, p: dict, seed: int, engine: str,
            extra: dict | None = None) -> dict:
    size = p["scenes"]["canvas"] * p.get("det_input_scale", 1)
    split = p["det_train_split"]
    settings = {
        "MODEL.WEIGHTS": weights,
        "DATASETS.COCO_JSON": [[f"scenes_{split}", data[f"{split}_json"], data["image_root"]],
                               ["scenes_test", data["test_json"], data["image_root"]]],
        "DATASETS.TRAIN": (f"scenes_{split}",), "DATASETS.TEST": ("scenes_test",),
        "INPUT.MIN_SIZE_TRAIN": (size,), "INPUT.MAX_SIZE_TRAIN": size,
        "INPUT.MIN_SIZE_TEST": size, "INPUT.MAX_SIZE_TEST": size,
        "SOLVER.MAX_ITER": p["det_iters"], "SOLVER.IMS_PER_BATCH": p["det_batch"], "SOLVER.BASE_LR": p["det_lr"],
        "SOLVER.STEPS": (int(p["det_iters"] * 0.8),), "SOLVER.WARMUP_ITERS": min(20, p["det_iters"] // 3),
        "SOLVER.CHECKPOINT_PERIOD": max(1, p["det_iters"]), "SEED": seed,
        "OUTPUT_DIR": stage.dir, "RESULTS_CSV": os.path.join(os.path.dirname(stage.dir), "results_detection.csv"),
        **(extra or {}),
    }
    config_file = os.path.join(PRESET_DIR, p["det_config"])
    metrics = run_config(load_det_config(config_file, _settings(settings)), RunOptions(config_file, engine=engine))
    return {"metrics": {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}}


def _knn(backbone_path: str | None, arch: str, data: dict, image_size: int, cache: str) -> float:
    """k-NN top-1 on digit crops: does this backbone know digit shapes? (bank: pretraining crops)"""
    from seed_core.evaluation import load_backbone
    from tools.pipeline.scoring import knn_accuracy
    bb = load_backbone(backbone_path) if backbone_path else load_backbone(arch=arch, random_init=True, seed=0)
    return knn_accuracy(bb, data["pretrain"], data["knn_query"], image_size, cache)["top1"]


def _knn_step(out_root: str, p: dict, data: dict, backbones: dict) -> dict:
    """k-NN of each trained backbone ({name: (stage name, opts, teacher)}) and of random init."""
    paths = {n: _trained(out_root, *stage)["backbone"] for n, stage in backbones.items()}
    archs = {n: p["teacher_arch"] if n == "teacher" else p["student_arch"] for n in paths}
    # Keyed by the backbones' content: a retrained backbone at the same path is scored again.
    st = _stage(out_root, "knn", {**paths, "sha256": {n: _file_digest(path) for n, path in paths.items()},
                                  "archs": archs, "random_arch": p["student_arch"]})
    size = p["scenes"]["crop_size"]
    res = st.run(lambda: {**{n: _knn(path, archs[n], data, size, st.dir) for n, path in paths.items()},
                          "random": _knn(None, p["student_arch"], data, size, st.dir)})
    return {k: v for k, v in res.items() if k != "seconds"}


def pretraining_opts(p: dict, data: dict, workers: int) -> dict:
    """The distillation settings every pretraining stage of preset `p` shares (data, batch, queue,
    schedule, student's and teacher's precision); a stage adds its loss, architecture, epochs and learning rate."""
    return {"DATA.ROOT": data["pretrain"], "DATA.IMAGE_SIZE": p["scenes"]["crop_size"], "DATA.NUM_WORKERS": workers,
            "DATA.AUGMENTATION": p["augmentation"], "SOLVER.BATCH_SIZE": p["distill_batch"],
            "QUEUE.SIZE": p["queue_size"], "SOLVER.BASE_LR": float(p["distill_base_lr"]),
            "LOSS.MOCO_MOMENTUM": float(p["moco_momentum"]), "SOLVER.WARMUP_EPOCHS": 1.0,
            "TRAIN.CHECKPOINT_PERIOD": 100, "SEED": p["seed"], "TRAIN.LOG_PERIOD": 5, "TRAIN.PROGRESS": False,
            # The teacher computes in the preset's precision too: its `auto` would pick bf16 on CPUs
            # with native bf16 only, and the students would then differ between machines.
            "TRAIN.PRECISION": p["precision"], "TRAIN.TEACHER_PRECISION": p["precision"]}


def write_scenes(out_root: str, p: dict) -> dict:
    """The preset's digit scenes and pretraining crops, written once (cached stage `data`)."""
    from seed_det.data.synthetic.digit_scenes import SceneSpec, write_digit_scenes
    spec = SceneSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in p["scenes"].items()})
    spec.check()
    os.makedirs(out_root, exist_ok=True)
    data_stage = _stage(out_root, "data", p["scenes"])
    return data_stage.run(lambda: write_digit_scenes(os.path.join(data_stage.dir, "scenes"), spec))


@dataclass
class Pretrained:
    """What the pretraining stages leave: the data, the converted backbones and how good they are."""
    preset: dict
    data: dict                  # write_digit_scenes result (paths, counts)
    weights: dict               # init name -> Detectron2 .pkl ("" for random init)
    knn: dict                   # backbone name -> k-NN top-1 on held-out digit crops
    curves: dict                # label -> metrics.jsonl of each pretraining run
    moco_is_teacher: bool = False   # the MoCo-v2 student has the teacher's settings: one network, trained once


def plan_pretraining(out_root: str, p: dict, workers: int = 2, with_teacher_weights: bool = False
                     ) -> tuple[list[Step], Pretrained]:
    """Writes the scenes (cheap; everything needs them) and returns the steps that train, convert and
    k-NN-check the backbones (the "knn" step last), with the Pretrained whose `knn` that step fills
    in. `run_pipeline` runs them (with no fine-tunings: pretraining alone); a fine-tuning goes after its backbone's step (BACKBONE_STEP)."""
    torch.set_num_threads(p["threads"])
    data = write_scenes(out_root, p)

    common = pretraining_opts(p, data, workers)
    teacher = ("teacher_moco", {**common, "LOSS.NAME": "moco", "MODEL.STUDENT.ARCH": p["teacher_arch"],
                                "SOLVER.EPOCHS": p["teacher_epochs"]})
    student_common = {**common, "MODEL.STUDENT.ARCH": p["student_arch"], "SOLVER.EPOCHS": p["student_epochs"]}
    seed_opts = {**student_common, "LOSS.NAME": "seed", "MODEL.TEACHER.ARCH": p["teacher_arch"],
                 "SOLVER.BASE_LR": float(p["seed_student_lr"])}
    moco = ("student_moco", {**student_common, "LOSS.NAME": "moco", "SOLVER.BASE_LR": float(p["moco_student_lr"])})
    # A MoCo-v2 student with the teacher's architecture, recipe and budget is the teacher: train it once.
    if moco[1] == teacher[1]:
        moco = teacher

    backbones = {"teacher": (*teacher, None), "seed": ("student_seed", seed_opts, teacher), "moco": (*moco, None)}
    steps = [Step("teacher_moco", _backbone_step, (out_root, *backbones["teacher"],
                                                   "teacher" if with_teacher_weights else None)),
             Step("student_seed", _backbone_step, (out_root, *backbones["seed"], "seed"), after=("teacher_moco",)),
             Step("student_moco", _backbone_step, (out_root, *backbones["moco"], "moco"),
                  after=("teacher_moco",) if moco is teacher else ())]
    steps.append(Step("knn", _knn_step, (out_root, p, data, backbones), after=tuple(s.name for s in steps)))

    weights = {"random": "", "seed": _converted(out_root, "seed"), "moco": _converted(out_root, "moco")}
    if with_teacher_weights:
        weights["teacher"] = _converted(out_root, "teacher")
    curves = {"teacher = student MoCo-v2" if moco is teacher else "teacher (MoCo-v2)":
              os.path.join(out_root, teacher[0], METRICS_LOG_FILE),
              "student SEED": os.path.join(out_root, "student_seed", METRICS_LOG_FILE)}
    if moco is not teacher:
        curves["student MoCo-v2"] = os.path.join(out_root, moco[0], METRICS_LOG_FILE)
    return steps, Pretrained(p, data, weights, {}, curves, moco_is_teacher=moco is teacher)


BACKBONE_STEP = {"teacher": "teacher_moco", "seed": "student_seed", "moco": "student_moco", "random": None}


def run_pipeline(out_root: str, p: dict, workers: int = 2,
                 fine_tunings: Callable[[Pretrained], list[Step]] = lambda pre: [],
                 with_teacher_weights: bool = False) -> tuple[Pretrained, dict]:
    """The pretraining steps and the `fine_tunings` (`fine_tuning_step`s) in one schedule: each
    fine-tuning starts as soon as its backbone is converted (random init's beside the teacher).
    Returns the filled-in Pretrained and {step name: result}."""
    steps, pre = plan_pretraining(out_root, p, workers, with_teacher_weights)
    knn = steps.pop()  # only the report needs it: last, so it never holds up a fine-tuning
    steps += fine_tunings(pre) + [knn]
    done = run_steps(steps, _processes(p), os.path.join(out_root, "logs"), p["threads"], _announce)
    pre.knn = done["knn"]
    return pre, done


def det_stage_name(init: str, seed: int, tag: str = "") -> str:
    """The folder, step and log name of one fine-tuning."""
    return f"det{tag}_{init}_s{seed}"


def fine_tuning_step(out_root: str, pre: Pretrained, init: str, seed: int, engine: str, tag: str = "",
                     **kwargs) -> Step:
    """`finetune` as a step named like its stage, after the step that makes `init`'s backbone."""
    needs = BACKBONE_STEP[init]
    return Step(det_stage_name(init, seed, tag), finetune, (out_root, pre, init, seed, engine), dict(kwargs, tag=tag),
                after=(needs,) if needs else ())


def finetune(out_root: str, pre: Pretrained, init: str, seed: int, engine: str = "auto",
             det_config: str | None = None, split: str | None = None, extra: dict | None = None,
             tag: str = "", det_iters: int | None = None, input_scale: int = 1) -> dict:
    """One cached fine-tuning run from `init`'s weights; returns its metrics, or {"diverged": why}
    for a run whose loss became non-finite: an outcome of the recipe, recorded like a score (the
    same settings diverge again), so one such seed neither stops a benchmark nor goes unreported."""
    p = dict(pre.preset, **({"det_config": det_config} if det_config else {}),
             **({"det_train_split": split} if split else {}), **({"det_iters": det_iters} if det_iters else {}),
             # only when upscaled: the demo's cached fine-tunings keep their identity
             **({"det_input_scale": input_scale} if input_scale != 1 else {}))
    det_params = {k: p[k] for k in p if k.startswith("det_")}
    name = det_stage_name(init, seed, tag)
    weights = pre.weights[init]
    det = _stage(out_root, name, {**det_params, "seed": seed, "weights": weights,
                                  "engine": engine_identity(engine),  # resolved, with library and package versions
                                  "weights_sha256": _file_digest(weights) if weights else "",
                                  "det_config_sha256": _config_digest(p["det_config"]),
                                  **({"extra": extra} if extra else {})})
    def attempt() -> dict:
        try:
            return _detect(det, weights, pre.data, p, seed, engine, extra)
        except NonFiniteLossError as e:
            logger.warning("%s diverged: %s", name, e)
            return {"metrics": {"diverged": str(e)}}

    return det.run(attempt, fresh=True)["metrics"]


def _config_digest(det_config: str) -> str:
    """The detection config as merged (its `_BASE_` chain included): an edited YAML is not the same
    fine-tuning, even under the same file name."""
    from seed_det.config import get_det_cfg, merge_det_config
    text = merge_det_config(get_det_cfg(), os.path.join(PRESET_DIR, det_config)).dump()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_digest(path: str) -> str:
    """The weights' identity: a retrained backbone at the same path is not the same fine-tuning."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def run_demo(out_root: str = "demo_output", preset: str = "default", engine: str = "auto",
             workers: int = 2) -> dict:
    """Run (or continue) the demo; returns {init: {"runs": [metrics per seed], "AP": mean, "AP_std": ..}}
    and writes the table, bar chart and loss curves. `out_root` is locked meanwhile: a second demo
    on the same folder is refused (its finished stages are reused by the next run, not shared)."""
    p = load_preset(preset)
    with claim_run_dir(out_root, what="--output-dir"):
        return _run_demo(out_root, p, engine, workers)


def _run_demo(out_root: str, p: dict, engine: str, workers: int) -> dict:
    # SEED's fine-tunings first: they wait longest for their backbone (teacher, then student)
    pre, done = run_pipeline(out_root, p, workers, lambda pre: [
        fine_tuning_step(out_root, pre, init, seed, engine) for init in ("seed", "moco", "random")
        for seed in p["det_seeds"]])
    results = {init: summarise([done[det_stage_name(init, seed)] for seed in p["det_seeds"]]) for init in INITS}

    from .report import loss_curves_png, metrics_bar_png, results_markdown, seeds_note
    labels = {"random": "random init", "moco": f"MoCo-v2 {p['student_arch']}",
              "seed": f"SEED {p['student_arch']} (teacher {p['teacher_arch']})"}
    table = results_markdown({labels[k]: v for k, v in results.items()})
    notes = (f"\n{seeds_note(p['det_seeds'])}; test: {pre.data['counts']['test']} scenes, "
             f"train: {pre.data['counts'][p['det_train_split']]} labelled scenes ({p['det_train_split']}).\n"
             "k-NN top-1 on held-out digit crops (bank: pretraining crops): "
             + ", ".join(f"{k} {v:.1f}" for k, v in pre.knn.items()) + "\n")
    with open(os.path.join(out_root, "results.md"), "w") as f:
        f.write(table + notes)
    with open(os.path.join(out_root, "results.json"), "w") as f:
        json.dump({"preset": p, "results": results, "knn": pre.knn}, f, indent=1)
    metrics_bar_png({labels[k]: v for k, v in results.items()}, os.path.join(out_root, "results.png"))
    first = p["det_seeds"][0]
    curves = dict(pre.curves, **{f"detection {k} (seed {first})": os.path.join(out_root, det_stage_name(k, first))
                                 for k in INITS})
    loss_curves_png(curves, os.path.join(out_root, "loss_curves.png"))
    print("\n" + table + notes)
    print(f"table: {out_root}/results.md   chart: {out_root}/results.png   losses: {out_root}/loss_curves.png")
    return results


def summarise(runs: list[dict]) -> dict:
    """{"runs": [...], "AP": mean, "AP_std": std, ...} for every numeric metric the finished runs
    share, and "diverged": how many runs stopped on a non-finite loss (left out of the means)."""
    from .report import mean_std
    finished = [r for r in runs if "diverged" not in r]
    out = {"runs": runs, "diverged": len(runs) - len(finished)}
    for key in sorted(set.intersection(*(set(r) for r in finished))) if finished else []:
        vals = [r[key] for r in finished]
        if all(v == v for v in vals):  # NaN (no object of that size) stays out
            out[key], std = mean_std(vals)
            if std is not None:  # one run has no spread to report: no "± 0.0"
                out[key + "_std"] = std
    return out
