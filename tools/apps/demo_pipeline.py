"""The whole SEED transfer pipeline in one call, on handwritten-digit scenes, cached stage by stage:

  digit scenes + unlabelled digit crops -> MoCo-v2 teacher -> SEED ResNet-18 student  \\
                                                           -> MoCo-v2 ResNet-18 student -> Detectron2 .pkl
  random init / MoCo-v2 / SEED  -> Faster R-CNN fine-tuned with each of several seeds -> mean ± std table

Settings are a preset YAML (configs/demo/<name>.yaml, `_BASE_: Base-Demo.yaml`). Each stage writes
`<stage>/run.json` when it is done (tools.apps.run_cache); a rerun skips finished stages whose
parameters are unchanged and resumes an interrupted distillation from its checkpoint.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass

import torch

from seed_core.config import CfgNode, load_cfg
from tools.apps.run_cache import CachedRun, distill
from tools.apps.side_by_side import Step, default_processes, run_steps

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRESET_DIR = os.path.join(REPO, "configs", "demo")
BASE_PRESET = os.path.join(PRESET_DIR, "Base-Demo.yaml")
INITS = ("random", "moco", "seed")
LEARNING_RATES = ("distill_base_lr", "seed_student_lr", "moco_student_lr", "det_lr")


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
    return json.loads(json.dumps(cfg))  # plain dicts and lists


def _announce(msg: str) -> None:
    print(msg, flush=True)


def _stage(root: str, name: str, params: dict) -> CachedRun:
    return CachedRun(os.path.join(root, name), params, announce=_announce)


def _distill(stage: CachedRun, opts: dict) -> dict:
    flat = [repr(v) if isinstance(v, float) else str(v) for kv in opts.items() for v in kv]
    return distill(load_cfg(None, flat + ["OUTPUT_DIR", stage.dir]))


def _distill_stage(out_root: str, name: str, opts: dict) -> dict:
    """One cached distillation stage (a module-level function: it may run in a worker process)."""
    st = _stage(out_root, name, opts)
    return st.run(lambda: _distill(st, opts))


def _processes(p: dict) -> int:
    return int(p["processes"]) or default_processes()


def _detect(stage: CachedRun, weights: str, data: dict, p: dict, seed: int, engine: str,
            extra: dict | None = None) -> dict:
    from seed_det.engines import main as train_net
    size = p["scenes"]["canvas"]
    split = p["det_train_split"]
    opts = {
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
    flat = [str(x) if not isinstance(x, (list, tuple)) else repr(x) for kv in opts.items() for x in kv]
    args = argparse.Namespace(config_file=os.path.join(PRESET_DIR, p["det_config"]), engine=engine, opts=flat,
                              resume=False, eval_only=False, num_gpus=1, num_machines=1, machine_rank=0,
                              dist_url="auto")
    metrics = train_net(args)
    return {"metrics": {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}}


def _knn(backbone_path: str | None, arch: str, data: dict, image_size: int, cache: str) -> float:
    """k-NN top-1 on digit crops: does this backbone know digit shapes? (bank: pretraining crops)"""
    from seed_core.evaluation import load_backbone
    from tools.apps.experiments import knn_accuracy
    bb = load_backbone(backbone_path) if backbone_path else load_backbone(arch=arch, random_init=True, seed=0)
    return knn_accuracy(bb, data["pretrain"], data["knn_query"], image_size, cache)["top1"]


@dataclass
class Pretrained:
    """What the pretraining stages leave: the data, the converted backbones and how good they are."""
    preset: dict
    data: dict                  # write_digit_scenes result (paths, counts)
    weights: dict               # init name -> Detectron2 .pkl ("" for random init)
    knn: dict                   # backbone name -> k-NN top-1 on held-out digit crops
    curves: dict                # label -> metrics.jsonl of each pretraining run


def pretrain(out_root: str, p: dict, workers: int = 2, with_teacher_weights: bool = False) -> Pretrained:
    """Scenes, MoCo-v2 teacher, SEED and MoCo-v2 students, k-NN check, conversion (cached stages)."""
    from seed_det.convert import convert_to_d2
    from tools.apps.digit_scenes import SceneSpec, write_digit_scenes

    spec = SceneSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in p["scenes"].items()})
    spec.check()
    os.makedirs(out_root, exist_ok=True)
    torch.set_num_threads(p["threads"])

    data_stage = _stage(out_root, "data", p["scenes"])
    data = data_stage.run(lambda: write_digit_scenes(os.path.join(data_stage.dir, "scenes"), spec))

    common = {"DATA.ROOT": data["pretrain"], "DATA.IMAGE_SIZE": spec.crop_size, "DATA.NUM_WORKERS": workers,
              "DATA.AUGMENTATION": p["augmentation"], "SOLVER.BATCH_SIZE": p["distill_batch"],
              "QUEUE.SIZE": p["queue_size"], "SOLVER.BASE_LR": float(p["distill_base_lr"]),
              "LOSS.MOCO_MOMENTUM": float(p["moco_momentum"]), "SOLVER.WARMUP_EPOCHS": 1.0,
              "TRAIN.CHECKPOINT_PERIOD": 100, "SEED": p["seed"], "TRAIN.LOG_PERIOD": 5, "TRAIN.PROGRESS": False}
    teacher_opts = {**common, "LOSS.NAME": "moco", "MODEL.STUDENT.ARCH": p["teacher_arch"],
                    "SOLVER.EPOCHS": p["teacher_epochs"]}
    teacher_result = _distill_stage(out_root, "teacher_moco", teacher_opts)

    student_common = {**common, "MODEL.STUDENT.ARCH": p["student_arch"], "SOLVER.EPOCHS": p["student_epochs"]}
    stage_opts = {"seed": {**student_common, "LOSS.NAME": "seed", "MODEL.TEACHER.ARCH": p["teacher_arch"],
                           "MODEL.TEACHER.WEIGHTS": teacher_result["checkpoint"],
                           "SOLVER.BASE_LR": float(p["seed_student_lr"])},
                  "moco": {**student_common, "LOSS.NAME": "moco", "SOLVER.BASE_LR": float(p["moco_student_lr"])}}
    # The two students are independent: side by side, one process each.
    steps = [Step(f"student_{name}", _distill_stage, (out_root, f"student_{name}", opts))
             for name, opts in stage_opts.items()]
    done = run_steps(steps, _processes(p), os.path.join(out_root, "logs"), p["threads"], _announce)
    students = {name: done[f"student_{name}"] for name in stage_opts}

    # Does each backbone know digit shapes? k-NN on crops (cheap; tells a weak teacher at once).
    knn_stage = _stage(out_root, "knn", {"teacher": teacher_result["backbone"],
                                         **{n: r["backbone"] for n, r in students.items()}})
    knn = knn_stage.run(lambda: {
        "teacher": _knn(teacher_result["backbone"], p["teacher_arch"], data, spec.crop_size, knn_stage.dir),
        **{n: _knn(r["backbone"], p["student_arch"], data, spec.crop_size, knn_stage.dir) for n, r in students.items()},
        "random": _knn(None, p["student_arch"], data, spec.crop_size, knn_stage.dir)})
    knn = {k: v for k, v in knn.items() if k != "seconds"}

    to_convert = dict(students)
    if with_teacher_weights:
        to_convert["teacher"] = teacher_result
    weights = {"random": ""}
    for name, res in to_convert.items():
        conv = _stage(out_root, f"convert_{name}", {"backbone": res["backbone"], "trained_s": res["seconds"]})
        pkl = os.path.join(conv.dir, f"{name}.pkl")
        weights[name] = conv.run(lambda res=res, pkl=pkl: {"pkl": pkl, **convert_to_d2(res["backbone"], pkl, overwrite=True)})["pkl"]
    curves = {"teacher (MoCo-v2)": teacher_result["metrics"], "student SEED": students["seed"]["metrics"],
              "student MoCo-v2": students["moco"]["metrics"]}
    return Pretrained(p, data, weights, knn, curves)


def finetune(out_root: str, pre: Pretrained, init: str, seed: int, engine: str = "auto",
             det_config: str | None = None, split: str | None = None, extra: dict | None = None,
             tag: str = "") -> dict:
    """One cached fine-tuning run from `init`'s weights; returns its metrics."""
    p = dict(pre.preset, **({"det_config": det_config} if det_config else {}),
             **({"det_train_split": split} if split else {}))
    det_params = {k: p[k] for k in p if k.startswith("det_")}
    name = f"det{tag}_{init}_s{seed}"
    det = _stage(out_root, name, {**det_params, "seed": seed, "weights": pre.weights[init], "engine": engine,
                                  **({"extra": extra} if extra else {})})
    return det.run(lambda: _detect(det, pre.weights[init], pre.data, p, seed, engine, extra), fresh=True)["metrics"]


def run_demo(out_root: str = "demo_output", preset: str = "default", engine: str = "auto",
             workers: int = 2) -> dict:
    """Run (or continue) the demo; returns {init: {"runs": [metrics per seed], "AP": mean, "AP_std": ..}}
    and writes the table, bar chart and loss curves."""
    p = load_preset(preset)
    pre = pretrain(out_root, p, workers)
    runs = [(init, seed) for init in INITS for seed in p["det_seeds"]]
    steps = [Step(f"det_{init}_s{seed}", finetune, (out_root, pre, init, seed, engine)) for init, seed in runs]
    metrics = run_steps(steps, _processes(p), os.path.join(out_root, "logs"), p["threads"], _announce)
    results = {init: summarise([metrics[f"det_{init}_s{seed}"] for seed in p["det_seeds"]]) for init in INITS}

    from .report import loss_curves_png, metrics_bar_png, results_markdown
    labels = {"random": "random init", "moco": f"MoCo-v2 {p['student_arch']}",
              "seed": f"SEED {p['student_arch']} (teacher {p['teacher_arch']})"}
    table = results_markdown({labels[k]: v for k, v in results.items()})
    notes = (f"\nmean ± std over fine-tuning seeds {p['det_seeds']}; test: {pre.data['counts']['test']} scenes, "
             f"train: {pre.data['counts'][p['det_train_split']]} labelled scenes ({p['det_train_split']}).\n"
             "k-NN top-1 on held-out digit crops (bank: pretraining crops): "
             + ", ".join(f"{k} {v:.1f}" for k, v in pre.knn.items()) + "\n")
    with open(os.path.join(out_root, "results.md"), "w") as f:
        f.write(table + notes)
    with open(os.path.join(out_root, "results.json"), "w") as f:
        json.dump({"preset": p, "results": results, "knn": pre.knn}, f, indent=1)
    metrics_bar_png({labels[k]: v for k, v in results.items()}, os.path.join(out_root, "results.png"))
    first = p["det_seeds"][0]
    curves = dict(pre.curves, **{f"detection {k} (seed {first})": os.path.join(out_root, f"det_{k}_s{first}")
                                 for k in INITS})
    loss_curves_png(curves, os.path.join(out_root, "loss_curves.png"))
    print("\n" + table + notes)
    print(f"table: {out_root}/results.md   chart: {out_root}/results.png   losses: {out_root}/loss_curves.png")
    return results


def summarise(runs: list[dict]) -> dict:
    """{"runs": [...], "AP": mean, "AP_std": std, ...} for every numeric metric the runs share."""
    from .experiments import mean_std
    out = {"runs": runs}
    for key in sorted(set.intersection(*(set(r) for r in runs))):
        vals = [r[key] for r in runs]
        if all(v == v for v in vals):  # NaN (no object of that size) stays out
            out[key], out[key + "_std"] = mean_std(vals)
    return out
