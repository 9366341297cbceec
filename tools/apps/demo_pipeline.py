"""The whole SEED transfer pipeline in one call, on generated shapes data, cached stage by stage:

  shapes data -> MoCo-v2 teacher -> SEED ResNet-18 student  \
                                 -> MoCo-v2 ResNet-18 baseline -> Detectron2 .pkl -> Faster R-CNN
                                    random init ---------------------------------> (each) -> AP table

Each stage writes `<stage>/stage.json` when it is done; a rerun skips finished stages whose
parameters are unchanged and resumes an interrupted distillation from its checkpoint.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Callable

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


class Stage:
    """A cached step: `run()` executes `fn` unless `<dir>/stage.json` records the same params."""

    def __init__(self, root: str, name: str, params: dict):
        self.dir = os.path.join(root, name)
        self.name, self.params = name, params
        self.marker = os.path.join(self.dir, "stage.json")

    def done(self) -> dict | None:
        if not os.path.exists(self.marker):
            return None
        try:
            with open(self.marker) as f:
                record = json.load(f)
        except (OSError, ValueError):
            return None
        return record["result"] if record.get("params") == self.params else None

    def run(self, fn: Callable[[], dict], fresh: bool = False) -> dict:
        """`fresh`: the stage cannot resume, so leftovers of an interrupted attempt are removed."""
        cached = self.done()
        if cached is not None:
            print(f"[{self.name}] done before: reusing {self.dir}")
            return cached
        print(f"[{self.name}] running ...", flush=True)
        t0 = time.time()
        if fresh and os.path.isdir(self.dir):
            shutil.rmtree(self.dir)
        os.makedirs(self.dir, exist_ok=True)
        result = fn()
        result["seconds"] = round(time.time() - t0, 1)
        from seed_core.checkpoint_io import atomic_write_text
        atomic_write_text(json.dumps({"params": self.params, "result": result}, indent=2), self.marker)
        print(f"[{self.name}] finished in {result['seconds']:.0f} s")
        return result


def _distill(stage: Stage, opts: dict) -> dict:
    from seed_core.config import load_cfg
    from seed_core.trainer import CHECKPOINT_FILE, train
    flat = [str(x) for kv in opts.items() for x in kv] + ["OUTPUT_DIR", stage.dir]
    cfg = load_cfg(None, flat)
    resume = os.path.exists(os.path.join(stage.dir, CHECKPOINT_FILE))
    if resume:
        print(f"[{stage.name}] resuming from {stage.dir}/{CHECKPOINT_FILE}")
    summary = train(cfg, resume=resume)
    return {"checkpoint": summary["checkpoint"], "backbone": summary["backbone"], "metrics": os.path.join(stage.dir, "metrics.jsonl")}


def _detect(stage: Stage, weights: str, data_root: str, p: DemoPreset, engine: str) -> dict:
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
        "OUTPUT_DIR": stage.dir, "RESULTS_CSV": os.path.join(os.path.dirname(stage.dir), "results.csv"),
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
    data = Stage(out_root, "data", {k: params[k] for k in ("unlabeled_images", "unlabeled_size", "det_train",
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
    teacher = Stage(out_root, "teacher_moco", teacher_opts)
    teacher_result = teacher.run(lambda: _distill(teacher, teacher_opts))

    student_common = {**common, "MODEL.STUDENT.ARCH": p.student_arch, "SOLVER.EPOCHS": p.student_epochs}
    seed_opts = {**student_common, "LOSS.NAME": "seed", "MODEL.TEACHER.ARCH": p.teacher_arch,
                 "MODEL.TEACHER.WEIGHTS": teacher_result["checkpoint"]}
    moco_opts = {**student_common, "LOSS.NAME": "moco"}
    students = {}
    for name, opts in (("seed", seed_opts), ("moco", moco_opts)):
        st = Stage(out_root, f"student_{name}", opts)
        students[name] = st.run(lambda st=st, opts=opts: _distill(st, opts))

    from seed_det.convert import convert_to_d2
    weights = {"random": ""}
    for name, res in students.items():
        conv = Stage(out_root, f"convert_{name}", {"backbone": res["backbone"], "trained_s": res["seconds"]})
        pkl = os.path.join(conv.dir, f"{name}_{p.student_arch}.pkl")
        weights[name] = conv.run(lambda res=res, pkl=pkl: {"pkl": pkl, **convert_to_d2(res["backbone"], pkl)})["pkl"]

    results = {}
    for name in ("random", "moco", "seed"):
        det = Stage(out_root, f"det_{name}", {**{k: params[k] for k in params if k.startswith("det_")},
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
