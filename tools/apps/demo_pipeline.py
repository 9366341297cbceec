"""The whole SEED transfer pipeline in one call, on generated shapes data, cached stage by stage:

  shapes data -> MoCo-v2 teacher -> SEED ResNet-18 student  \
                                 -> MoCo-v2 ResNet-18 baseline -> Detectron2 .pkl -> Faster R-CNN
                                    random init ---------------------------------> (each) -> AP table

Each stage writes `<stage>/run.json` when it is done (tools.apps.run_cache); a rerun skips finished stages whose
parameters are unchanged and resumes an interrupted distillation from its checkpoint.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import asdict, dataclass

from seed_core.config import load_cfg
from tools.apps.run_cache import CachedRun, distill

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_DET_CONFIG = os.path.join(REPO, "configs", "demo", "shapes_r18_fpn.yaml")


@dataclass(frozen=True)
class DemoPreset:
    # unlabeled images for self-supervised training (a stand-in for ImageNet), cropped to 32 px
    unlabeled_images: int = 1536
    unlabeled_size: int = 64
    distill_image_size: int = 32
    teacher_arch: str = "resnet34"
    student_arch: str = "resnet18"
    teacher_epochs: int = 30
    student_epochs: int = 20
    distill_batch: int = 64
    distill_base_lr: float = 0.24   # x batch/256: 0.06, what short MoCo runs on small data need
    queue_size: int = 256           # small data: a large queue would hold stale, near-duplicate keys
    # detection data and fine-tuning
    det_train: int = 192
    det_val: int = 64
    det_image_size: int = 128
    det_iters: int = 150
    det_batch: int = 4
    det_lr: float = 0.01            # batch 4 (Detectron2 uses 0.02 at batch 16)
    seed: int = 0


PRESETS = {
    "default": DemoPreset(),
    # for tests: every stage runs, in well under a few minutes
    "tiny": DemoPreset(unlabeled_images=64, unlabeled_size=32, distill_image_size=32, teacher_arch="resnet18",
                       teacher_epochs=1, student_epochs=1, distill_batch=16, queue_size=64,
                       det_train=8, det_val=4, det_image_size=64, det_iters=2, det_batch=2),
}


def _stage(root: str, name: str, params: dict) -> CachedRun:
    return CachedRun(os.path.join(root, name), params, announce=lambda msg: print(msg, flush=True))


def _distill(stage: CachedRun, opts: dict) -> dict:
    flat = [str(x) for kv in opts.items() for x in kv] + ["OUTPUT_DIR", stage.dir]
    return distill(load_cfg(None, flat))


def _detect(stage: CachedRun, weights: str, data_root: str, p: DemoPreset, engine: str) -> dict:
    from seed_det.engines import main as train_net
    opts = {
        "MODEL.WEIGHTS": weights,
        "DATASETS.VOC": [["shapes_train", data_root, "train", 2007], ["shapes_val", data_root, "val", 2007]],
        "DATASETS.TRAIN": ("shapes_train",), "DATASETS.TEST": ("shapes_val",),
        "INPUT.MIN_SIZE_TRAIN": (p.det_image_size,), "INPUT.MAX_SIZE_TRAIN": p.det_image_size,
        "INPUT.MIN_SIZE_TEST": p.det_image_size, "INPUT.MAX_SIZE_TEST": p.det_image_size,
        "SOLVER.MAX_ITER": p.det_iters, "SOLVER.IMS_PER_BATCH": p.det_batch, "SOLVER.BASE_LR": p.det_lr,
        "SOLVER.STEPS": (int(p.det_iters * 0.75),), "SOLVER.WARMUP_ITERS": min(50, p.det_iters // 3),
        "SOLVER.CHECKPOINT_PERIOD": max(1, p.det_iters), "SEED": p.seed,
        "OUTPUT_DIR": stage.dir, "RESULTS_CSV": os.path.join(os.path.dirname(stage.dir), "results_detection.csv"),
    }
    flat = [str(x) if not isinstance(x, (list, tuple)) else repr(x) for kv in opts.items() for x in kv]
    args = argparse.Namespace(config_file=DEMO_DET_CONFIG, engine=engine, opts=flat, resume=False,
                              eval_only=False, num_gpus=1, num_machines=1, machine_rank=0, dist_url="auto")
    metrics = train_net(args)
    return {"metrics": {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}}


def run_demo(out_root: str = "demo_output", preset: str | DemoPreset = "default", engine: str = "auto",
             workers: int = 2) -> dict:
    """Run (or continue) the demo; returns {init name: metrics} and writes table + plots."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    os.makedirs(out_root, exist_ok=True)
    params = asdict(p)

    from tools.apps.shapes import write_shapes_dataset
    data = _stage(out_root, "data", {k: params[k] for k in ("unlabeled_images", "unlabeled_size", "det_train",
                                                           "det_val", "det_image_size", "seed")})
    data_result = data.run(lambda: {
        "unlabeled": write_shapes_dataset(os.path.join(data.dir, "unlabeled"), num_train=p.unlabeled_images,
                                          num_val=1, size=p.unlabeled_size, seed=p.seed + 1000)["image_root"],
        "detection": write_shapes_dataset(os.path.join(data.dir, "shapes"), num_train=p.det_train,
                                          num_val=p.det_val, size=p.det_image_size, seed=p.seed)["root"],
    })

    common = {"DATA.ROOT": data_result["unlabeled"], "DATA.IMAGE_SIZE": p.distill_image_size,
              "DATA.NUM_WORKERS": workers, "SOLVER.BATCH_SIZE": p.distill_batch, "QUEUE.SIZE": p.queue_size,
              "SOLVER.BASE_LR": p.distill_base_lr,
              "SOLVER.WARMUP_EPOCHS": 1.0, "TRAIN.CHECKPOINT_PERIOD": 50, "SEED": p.seed, "TRAIN.LOG_PERIOD": 5}
    teacher_opts = {**common, "LOSS.NAME": "moco", "MODEL.STUDENT.ARCH": p.teacher_arch,
                    "SOLVER.EPOCHS": p.teacher_epochs}
    teacher = _stage(out_root, "teacher_moco", teacher_opts)
    teacher_result = teacher.run(lambda: _distill(teacher, teacher_opts))

    student_common = {**common, "MODEL.STUDENT.ARCH": p.student_arch, "SOLVER.EPOCHS": p.student_epochs}
    seed_opts = {**student_common, "LOSS.NAME": "seed", "MODEL.TEACHER.ARCH": p.teacher_arch,
                 "MODEL.TEACHER.WEIGHTS": teacher_result["checkpoint"]}
    moco_opts = {**student_common, "LOSS.NAME": "moco"}
    students = {}
    for name, opts in (("seed", seed_opts), ("moco", moco_opts)):
        st = _stage(out_root, f"student_{name}", opts)
        students[name] = st.run(lambda st=st, opts=opts: _distill(st, opts))

    from seed_det.convert import convert_to_d2
    weights = {"random": ""}
    for name, res in students.items():
        conv = _stage(out_root, f"convert_{name}", {"backbone": res["backbone"], "trained_s": res["seconds"]})
        pkl = os.path.join(conv.dir, f"{name}_{p.student_arch}.pkl")
        weights[name] = conv.run(lambda res=res, pkl=pkl: {"pkl": pkl, **convert_to_d2(res["backbone"], pkl, overwrite=True)})["pkl"]

    results = {}
    for name in ("random", "moco", "seed"):
        det = _stage(out_root, f"det_{name}", {**{k: params[k] for k in params if k.startswith("det_")},
                                              "weights": weights[name], "engine": engine})
        results[name] = det.run(lambda det=det, name=name: _detect(det, weights[name], data_result["detection"],
                                                                    p, engine), fresh=True)["metrics"]

    from .report import loss_curves_png, metrics_bar_png, results_markdown
    labels = {"random": "random init", "moco": f"MoCo-v2 {p.student_arch}", "seed": f"SEED {p.student_arch} (teacher {p.teacher_arch})"}
    table = results_markdown({labels[k]: v for k, v in results.items()})
    with open(os.path.join(out_root, "results.md"), "w") as f:
        f.write(table)
    metrics_bar_png({labels[k]: v for k, v in results.items()}, os.path.join(out_root, "results.png"))
    curves = {"teacher (MoCo-v2)": teacher_result["metrics"], "student SEED": students["seed"]["metrics"],
              "student MoCo-v2": students["moco"]["metrics"]}
    curves.update({f"detection {k}": os.path.join(out_root, f"det_{k}") for k in results})
    loss_curves_png(curves, os.path.join(out_root, "loss_curves.png"))
    print("\n" + table)
    print(f"table: {out_root}/results.md   chart: {out_root}/results.png   losses: {out_root}/loss_curves.png")
    return results
