"""SEED's premise on the digit scenes: does a teacher larger than its student make the SEED student a
better detection backbone than a MoCo-v2 student trained on the same data with the same budget?

The ladder: MoCo-v2 teachers of growing size (ResNet-18 = the MoCo-v2 student itself, the control;
ResNet-34 and ResNet-50 trained longer), a SEED ResNet-18 from each, L2 distillation (paper Table 4)
from the largest, a SEED ResNet-34 from the largest; every student at its method's own learning rate
(the lr sweep's winners). Each backbone is k-NN-checked on held-out digit crops, converted and
fine-tuned as Faster R-CNN R18-FPN and R18-C4 at both label fractions with the same fine-tuning seeds
for every backbone, so that differences are paired. Every stage is cached under the work folder.

An arm is `INIT:STUDENT[:TEACHER]`: `random:resnet18`, `mocov2:resnet18`, `seed:resnet18:resnet50`,
`l2:resnet18:resnet50`.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from tools.pipeline.demo import (Pretrained, _announce, _backbone_step, _converted, _file_digest, _knn, _stage,
                                 _trained, det_stage_name, finetune, load_preset, pretraining_opts, write_scenes)
from tools.pipeline.side_by_side import Step, run_steps
from .transfer_claim import DETECTORS, Detector, _tag

logger = logging.getLogger(__name__)

INITS = ("random", "mocov2", "seed", "l2")
INIT_LABELS = {"random": "random init", "mocov2": "MoCo-v2", "seed": "SEED", "l2": "L2 distillation"}
LABELS = {"train": "all", "train_small": "10%"}      # a run record's `labels`
DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50}  # what the R-CNN configs can fine-tune
RESULTS_NAME = "teacher_ladder"
# A timm student (MobileNetV3, EfficientNet, ...) is fine-tuned as Faster R-CNN with an FPN over its
# last stages (configs/demo/digits_mnv3s_fpn.yaml, MODEL.TIMM.ARCH set to the student): no C4 form.
TIMM_DETECTORS = {"fpn": Detector("digits_mnv3s_fpn.yaml", "Faster R-CNN timm-FPN")}


class Arm(NamedTuple):
    """One pretrained (or random) backbone of the ladder."""
    init: str
    student: str
    teacher: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Arm":
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"arm {text!r}: write INIT:STUDENT or INIT:STUDENT:TEACHER, "
                             f"e.g. mocov2:resnet18 or seed:resnet18:resnet50")
        return cls(*parts)

    @property
    def name(self) -> str:
        """Stage and weights name: mocov2_resnet18, seed_resnet18_from_resnet50, ..."""
        return f"{self.init}_{self.student}" + (f"_from_{self.teacher}" if self.teacher else "")

    def __str__(self) -> str:
        return ":".join(x for x in self if x)


def teacher_stage(arch: str) -> str:
    return f"teacher_moco_{arch}"


@dataclass(frozen=True)
class Settings:
    preset: str = "transfer"        # students' data and budget, detection schedule: configs/demo/<preset>.yaml
    work_dir: str = "output/teacher_ladder"
    arms: tuple = ("random:resnet18", "mocov2:resnet18", "seed:resnet18:resnet18", "seed:resnet18:resnet34",
                   "seed:resnet18:resnet50", "l2:resnet18:resnet50", "random:resnet34", "seed:resnet34:resnet50")
    # The larger teachers see 3x the students' epochs at batch 64 unless their recipes say more (both
    # say 6x: the paper's teachers trained far longer than their students); the ResNet-18 teacher is
    # the MoCo-v2 student itself (the control).
    teacher_epochs: int = 48
    teacher_batch: int = 64
    teacher_lr: float | None = None  # SOLVER.BASE_LR of the larger teachers; None: the preset's distill_base_lr
    # Further settings of the larger teachers: (("MODEL.STUDENT.ZERO_INIT_RESIDUAL", True),); a
    # changed recipe is another teacher, trained again.
    teacher_recipe: tuple = ()
    # Each larger teacher's own settings over the common recipe, as each student method has its own
    # lr: (("resnet50", (("SOLVER.OPTIMIZER", "lars"), ...)),). teacher_lr and teacher_recipe (probes
    # from the command line) override them.
    # The ResNet-50's: its first layers' gradients are huge against their weights
    # (benchmarks/gradient_scale.py); a BatchNorm head and LARS took it from 58.0 to 87.2 k-NN in 48
    # epochs, and to 93.4 in 96, past the bar (docs/RESULTS.md, the teacher ladder). The ResNet-34's:
    # the common recipe, still rising at 92.4 after 48 epochs (0.2 short of the bar); 97.6 after 96.
    teacher_recipes: tuple = (("resnet50", (("MODEL.STUDENT.HEAD_BATCH_NORM", True), ("SOLVER.OPTIMIZER", "lars"),
                                            ("SOLVER.BASE_LR", 4.0), ("SOLVER.EPOCHS", 96))),
                              ("resnet34", (("SOLVER.EPOCHS", 96),)))
    # Detection settings of every fine-tuning over the detector's config, e.g. a BatchNorm treatment:
    # (("MODEL.TIMM.NORM", "FrozenBN"),); they name the runs' stages (and their records), so that
    # they never replace the runs at the config's own settings. Write them to a results_name of their own.
    det_recipe: tuple = ()
    # Detection settings of one student's fine-tunings, over the detector's config (they name its runs'
    # stages too). R34-FPN diverged at the R18 lr 0.01 (batch 4) in 3 of 5 SEED seeds and 1 of 5 random
    # ones; at 0.005, Detectron2's 0.02 at batch 16 scaled to batch 4, none did (docs/RESULTS.md).
    student_det_recipes: tuple = (("resnet34", (("SOLVER.BASE_LR", 0.005),)),)
    l2_student_lr: float = 0.48     # ResNet-18 winner of benchmarks/lr_sweep.py (SEED 0.06, MoCo-v2 0.03: the preset's)
    # Settings of each method's students over the preset's, e.g. another student's lr-sweep winners:
    # (("mocov2", (("SOLVER.BASE_LR", 0.12),)), ...); L2 takes l2_student_lr unless named here.
    student_recipes: tuple = ()
    # The student every detector and label fraction fine-tunes, whose MoCo-v2 arm is the baseline and
    # whose SEED arm from the largest teacher is the decisive comparison.
    primary_student: str = "resnet18"
    results_name: str = RESULTS_NAME
    detectors: tuple = ("fpn", "c4")
    splits: tuple = ("train", "train_small")
    # A student other than ResNet-18 is fine-tuned only in these (detector, split) cells.
    other_student_cells: tuple = (("fpn", "train_small"),)
    seeds: tuple = (0, 1, 2, 3, 4)
    # The decisive comparison (SEED from the largest teacher vs MoCo-v2, 10 % labels, each detector)
    # gets these seeds on every engine.
    decisive_seeds: tuple = tuple(range(10))
    engines: tuple = ("torchvision",)
    # Detectron2 fine-tunes the first seed of every cell (and the decisive cells' seeds).
    workers: int = 2
    processes: int = 0               # stages side by side (0: the preset's setting)
    stages: tuple = field(default=(), compare=False)  # only these stage names (and what they need); () = all

    def arm_list(self) -> list[Arm]:
        return [Arm.parse(a) if isinstance(a, str) else Arm(*a) for a in self.arms]

    def student_recipe(self, init: str) -> dict:
        return dict(dict(self.student_recipes).get(init, ()))

    def det_settings(self, student: str) -> dict:
        """Detection settings of `student`'s fine-tunings over the detector's config."""
        return {**dict(dict(self.student_det_recipes).get(student, ())), **dict(self.det_recipe)}

    def teacher_overrides(self, arch: str) -> dict:
        """The larger teacher `arch`'s settings over the common teacher recipe."""
        out = dict(dict(self.teacher_recipes).get(arch, ()))
        if self.teacher_lr is not None:
            out["SOLVER.BASE_LR"] = self.teacher_lr
        return {**out, **dict(self.teacher_recipe)}


# The mobile students' teacher: the ResNet-34, at the ladder's recipe (the work folder holds one
# teacher per architecture). Its committed results were measured with the 48-epoch ResNet-34 (their
# backbone table says so); a run now trains the 96-epoch one.
MOBILE_TEACHER = "resnet34"


def mobile_settings(work_dir: str = Settings.work_dir, teacher: str = MOBILE_TEACHER) -> Settings:
    """The ladder's protocol with the digits harness's MobileNetV3-Small student (its lr-sweep winners:
    benchmarks/results/lr_sweep_mobilenetv3_small_050.md) taught by the ladder's largest working
    teacher, in the ladder's work folder so that the teacher is trained once."""
    student = "mobilenetv3_small_050"
    return Settings(work_dir=work_dir, results_name="mobile_students", primary_student=student,
                    arms=(f"random:{student}", f"mocov2:{student}", f"seed:{student}:{teacher}"),
                    student_recipes=(("mocov2", (("SOLVER.BASE_LR", 0.12), ("LOSS.MOCO_MOMENTUM", 0.999))),
                                     ("seed", (("SOLVER.BASE_LR", 0.24),)), ("l2", (("SOLVER.BASE_LR", 0.96),))),
                    detectors=("fpn",), decisive_seeds=())


def tiny_settings(work_dir: str, like: Settings | None = None) -> Settings:
    """Every kind of stage once, in seconds, on the tiny preset: a ResNet-34 teacher, SEED and L2
    students of the primary student of `like` (ResNet-18 by default), two paired fine-tuning seeds (the
    pipeline check `make test` runs)."""
    like = like or Settings()
    st = like.primary_student
    return Settings(preset="tiny", work_dir=work_dir, arms=(f"random:{st}", f"mocov2:{st}", f"seed:{st}:resnet34",
                                                            f"l2:{st}:resnet34"),
                    primary_student=st, results_name=like.results_name, student_recipes=like.student_recipes,
                    teacher_epochs=1, teacher_batch=16, teacher_recipes=(), detectors=("fpn",),
                    splits=("train_small",), seeds=(0, 1), decisive_seeds=(), workers=0, processes=1)


# --------------------------------------------------------------------------------------------- checks

def is_timm_student(arch: str) -> bool:
    """A student the ladder fine-tunes through timm (an FPN over its feature stages), not a ResNet."""
    from seed_det.timm_backbone import is_timm_arch
    return arch not in DEPTHS and is_timm_arch(arch)


def check_settings(s: Settings) -> list[Arm]:
    """Every way a ladder can be wrong, refused before any stage runs."""
    from seed_core.encoders import backbone_size
    from seed_core.errors import ConfigError
    arms = s.arm_list()
    if len(set(arms)) != len(arms):
        raise ValueError(f"an arm is named twice in {[str(a) for a in arms]}")
    sizes: dict[str, int] = {}

    def size(arch: str) -> int:
        if arch not in sizes:
            try:
                sizes[arch] = backbone_size(arch)
            except ConfigError as e:
                raise ValueError(f"arm architecture {arch!r} is unknown: {e}") from None
        return sizes[arch]

    for a in arms:
        if a.init not in INITS:
            raise ValueError(f"arm {a}: init {a.init!r} is not one of {', '.join(INITS)}")
        if not is_timm_student(a.student) and (a.student not in DEPTHS or a.student == "resnet50"):
            size(a.student)  # an unknown name is refused as unknown first
            raise ValueError(f"arm {a}: student {a.student!r} cannot be fine-tuned by the ladder's R-CNN configs "
                             f"(ResNet-18 or ResNet-34 with BasicBlocks, or a timm network such as "
                             f"mobilenetv3_small_050 on an FPN)")
        if a.init in ("seed", "l2"):
            if not a.teacher:
                raise ValueError(f"arm {a}: {a.init} needs a teacher (INIT:STUDENT:TEACHER)")
            if a.teacher not in DEPTHS:
                size(a.teacher)
                raise ValueError(f"arm {a}: teacher {a.teacher!r} is not a ResNet the ladder trains "
                                 f"({', '.join(DEPTHS)})")
            if size(a.teacher) < size(a.student):
                raise ValueError(f"arm {a}: the teacher {a.teacher} ({size(a.teacher) / 1e6:.1f} M parameters) is "
                                 f"smaller than its student {a.student} ({size(a.student) / 1e6:.1f} M): SEED "
                                 f"distils a larger network into a smaller one")
        elif a.teacher:
            raise ValueError(f"arm {a}: {a.init} has no teacher; write {a.init}:{a.student}")
    if not any(a.init == "mocov2" and a.student == s.primary_student for a in arms):
        raise ValueError(f"the ladder needs the arm mocov2:{s.primary_student}: it is the baseline"
                         + (" and the ResNet-18 teacher" if s.primary_student == "resnet18" else ""))
    if any(a.teacher == "resnet18" for a in arms) and Arm("mocov2", "resnet18") not in arms:
        raise ValueError("the ResNet-18 teacher is the MoCo-v2 ResNet-18 student: add the arm mocov2:resnet18")
    unknown = [d for d in s.detectors if d not in ("fpn", "c4")]
    if unknown:
        raise ValueError(f"detectors {unknown}: the ladder fine-tunes fpn and c4")
    if is_timm_student(s.primary_student) and "fpn" not in s.detectors:
        raise ValueError(f"the student {s.primary_student} is fine-tuned on an FPN only: include the detector fpn")
    bad_splits = [x for x in s.splits if x not in LABELS]
    if bad_splits:
        raise ValueError(f"splits {bad_splits}: choose from {', '.join(LABELS)}")
    if not s.seeds or s.teacher_epochs < 1 or s.teacher_batch < 1:
        raise ValueError("seeds must not be empty; teacher_epochs and teacher_batch must be >= 1")
    return arms


# --------------------------------------------------------------------------------------------- stages

def backbone_stages(p: dict, data: dict, arms: list[Arm], s: Settings) -> dict:
    """{stage name: (opts, teacher (stage, opts) or None)} of every network the arms need."""
    common = pretraining_opts(p, data, s.workers)
    student = {**common, "SOLVER.EPOCHS": p["student_epochs"]}
    lrs = {"mocov2": float(p["moco_student_lr"]), "seed": float(p["seed_student_lr"]), "l2": float(s.l2_student_lr)}
    stages: dict = {}

    def student_opts(a: Arm) -> dict:
        return {**student, "MODEL.STUDENT.ARCH": a.student, "SOLVER.BASE_LR": lrs[a.init],
                "LOSS.NAME": "moco" if a.init == "mocov2" else a.init, **s.student_recipe(a.init)}

    def teacher(arch: str) -> tuple[str, dict]:
        if arch == "resnet18":  # the control: the MoCo-v2 student is the ResNet-18 teacher
            moco18 = Arm("mocov2", "resnet18")
            return moco18.name, stages.setdefault(moco18.name, (student_opts(moco18), None))[0]
        opts = {**common, "LOSS.NAME": "moco", "MODEL.STUDENT.ARCH": arch, "SOLVER.EPOCHS": s.teacher_epochs,
                "SOLVER.BATCH_SIZE": s.teacher_batch, **s.teacher_overrides(arch)}
        stages[teacher_stage(arch)] = (opts, None)
        return teacher_stage(arch), opts

    for a in sorted((a for a in arms if a.init != "random"), key=lambda a: a.init != "mocov2"):
        if a.name not in stages:
            stages[a.name] = (student_opts(a), None) if a.init == "mocov2" else (
                {**student_opts(a), "MODEL.TEACHER.ARCH": a.teacher}, teacher(a.teacher))
    return stages


def _knn_backbone(out_root: str, p: dict, data: dict, name: str, arch: str, stage: tuple | None) -> dict:
    """k-NN top-1 on held-out digit crops of one backbone (random init when `stage` is None)."""
    path = _trained(out_root, *stage)["backbone"] if stage else None
    # Keyed by the backbone's content: a teacher retrained with another recipe at the same path is scored again.
    st = _stage(out_root, f"knn_{name}", {"backbone": path, "arch": arch,
                                          "backbone_sha256": _file_digest(path) if path else ""})
    res = st.run(lambda: {"top1": _knn(path, arch, data, p["scenes"]["crop_size"], st.dir)})
    return {"top1": res["top1"]}


def _ordered(stages: dict) -> list[str]:
    """Teachers before students, and the costliest teacher first (it is the longest chain)."""
    teachers = sorted((n for n in stages if n.startswith("teacher_")), key=lambda n: -int(n.rsplit("resnet", 1)[1]))
    return teachers + [n for n in stages if n not in teachers]


class Cell(NamedTuple):
    engine: str
    detector: str
    split: str
    arm: Arm


def plan_cells(s: Settings, arms: list[Arm]) -> dict[Cell, tuple]:
    """{cell: its fine-tuning seeds}: every ResNet-18 arm in every detector and split, other students
    in `other_student_cells`; Detectron2 the first seed of every cell; the decisive cells all their seeds."""
    largest = max((a.teacher for a in arms if a.init == "seed" and a.student == s.primary_student),
                  key=lambda t: DEPTHS[t], default=None)
    decisive = {Arm("mocov2", s.primary_student), Arm("seed", s.primary_student, largest)}
    cells = {}
    for engine in s.engines:
        for det in s.detectors:
            for split in s.splits:
                for a in arms:
                    if a.student != s.primary_student and (det, split) not in s.other_student_cells:
                        continue
                    if is_timm_student(a.student) and det not in TIMM_DETECTORS:
                        continue
                    if a in decisive and split == "train_small" and s.decisive_seeds:
                        seeds = tuple(dict.fromkeys(s.seeds + s.decisive_seeds))
                    else:
                        seeds = s.seeds if engine == "torchvision" else s.seeds[:1]
                    cells[Cell(engine, det, split, a)] = seeds
    return cells


def _extra(a: Arm) -> dict:
    if is_timm_student(a.student):
        return {"MODEL.TIMM.ARCH": a.student}
    return {"MODEL.RESNETS.DEPTH": DEPTHS[a.student]} if a.student != "resnet18" else {}


def detector_of(det: str, a: Arm) -> Detector:
    """The detection config that fine-tunes `a`'s student as detector `det`."""
    return (TIMM_DETECTORS if is_timm_student(a.student) else DETECTORS)[det]


def _weights_name(a: Arm) -> str:
    return "random" if a.init == "random" else a.name


def _run_tag(engine: str, det: str, split: str, p: dict) -> str:
    return _tag(engine, det, split, p)


def run_ladder(s: Settings, on_progress=lambda result: None) -> dict:
    """Plan and run (or reuse) every stage; `on_progress(result)` is called with the result so far
    each time a k-NN check or fine-tuning finishes."""
    start = time.time()
    arms = check_settings(s)
    p = load_preset(s.preset)
    data = write_scenes(s.work_dir, p)
    stages = backbone_stages(p, data, arms, s)
    pkl = {name: _converted(s.work_dir, name) for name in stages}
    pre = Pretrained(p, data, {"random": "", **pkl}, {}, {})

    steps = [Step(name, _backbone_step, (s.work_dir, name, *stages[name], name),
                  after=(stages[name][1][0],) if stages[name][1] else ()) for name in _ordered(stages)]
    archs = {a.student: a.student for a in arms} | {a.teacher: a.teacher for a in arms if a.teacher}
    knn_of = {name: (opts["MODEL.STUDENT.ARCH"], name) for name, (opts, _) in stages.items()}
    knn_of.update({f"random_{arch}": (arch, None) for arch in archs if any(
        a.init == "random" and a.student == arch for a in arms)})
    for name, (arch, stage) in knn_of.items():
        steps.append(Step(f"knn_{name}", _knn_backbone,
                          (s.work_dir, p, data, name, arch, (name, *stages[name]) if stage else None),
                          after=(stage,) if stage else ()))
    cells = plan_cells(s, arms)
    runs = sorted(((seed, c) for c, seeds in cells.items() for seed in seeds),
                  key=lambda x: (x[1].engine != "torchvision", x[0], x[1].detector, x[1].split))
    ft_names = {}
    for seed, c in runs:
        det_settings = s.det_settings(c.arm.student)
        tag = _run_tag(c.engine, c.detector, c.split, p) + "".join(f"_{k}-{v}" for k, v in det_settings.items())
        name = det_stage_name(c.arm.name, seed, tag)
        ft_names[name] = (c, seed, det_settings)
        d = detector_of(c.detector, c.arm)
        steps.append(Step(name, _finetune_arm, (s.work_dir, pre, _weights_name(c.arm), seed, c.engine),
                          dict(tag=tag, det_config=d.config, split=c.split, extra={**_extra(c.arm), **det_settings},
                               det_iters=d.iterations(p), input_scale=d.input_scale, stage_init=c.arm.name),
                          after=(c.arm.name,) if c.arm.init != "random" else ()))
    if s.stages:
        steps = _only(steps, set(s.stages))

    result = {"settings": _settings_dict(s), "preset": p, "counts": data["counts"], "runs": [], "backbones": []}
    knn = {}

    def on_done(name: str, value) -> None:
        if name.startswith("knn_"):
            knn[name[4:]] = value["top1"]
            result["backbones"] = _backbone_records(stages, knn, s)
        elif name in ft_names:
            c, seed, det_settings = ft_names[name]
            result["runs"].append(_run_record(c, seed, value, name, det_settings))
        else:
            return
        result["wall_seconds"] = round(time.time() - start, 1)
        on_progress(result)

    processes = s.processes or int(p["processes"]) or _default_processes()
    run_steps(steps, processes, os.path.join(s.work_dir, "logs"), p["threads"], _announce, on_done)
    result["wall_seconds"] = round(time.time() - start, 1)
    return result


def _default_processes() -> int:
    from tools.pipeline.side_by_side import default_processes
    return default_processes()


def _only(steps: list[Step], names: set) -> list[Step]:
    """The steps named and every step they need, in their order."""
    by_name = {st.name: st for st in steps}
    unknown = names - set(by_name)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; the ladder's stages are {sorted(by_name)}")
    keep: set = set()
    todo = list(names)
    while todo:
        n = todo.pop()
        if n not in keep:
            keep.add(n)
            todo += list(by_name[n].after)
    return [st for st in steps if st.name in keep]


def _finetune_arm(out_root: str, pre: Pretrained, weights_name: str, seed: int, engine: str, stage_init: str,
                  **kwargs) -> dict:
    """One fine-tuning: `finetune` from the arm's weights, in a stage named after the arm (random init
    of a ResNet-34 is another stage than of a ResNet-18)."""
    if stage_init != weights_name:
        pre = Pretrained(pre.preset, pre.data, {**pre.weights, stage_init: pre.weights[weights_name]}, {}, {})
    return finetune(out_root, pre, stage_init, seed, engine, **kwargs)


def _settings_dict(s: Settings) -> dict:
    return {k: [list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple) else v
            for k, v in asdict(s).items() if k != "stages"}


def _backbone_records(stages: dict, knn: dict, s: Settings) -> list[dict]:
    out = []
    for name, top1 in sorted(knn.items()):
        if name.startswith("random_"):
            out.append({"arch": name[len("random_"):], "method": "random", "teacher_arch": None, "epochs": 0,
                        "knn": top1})
            continue
        opts, teacher = stages[name]
        method = {"moco": "mocov2"}.get(opts["LOSS.NAME"], opts["LOSS.NAME"])
        recipe = {k: v for k, v in s.teacher_overrides(opts["MODEL.STUDENT.ARCH"]).items()
                  if k != "SOLVER.BASE_LR"} if name.startswith("teacher_") else {}  # the lr has its own field
        out.append({"arch": opts["MODEL.STUDENT.ARCH"], "method": method,
                    "teacher_arch": opts.get("MODEL.TEACHER.ARCH") if teacher else None,
                    "epochs": opts["SOLVER.EPOCHS"], "batch": opts["SOLVER.BATCH_SIZE"],
                    "lr": opts["SOLVER.BASE_LR"], "role": "teacher" if name.startswith("teacher_") else "student",
                    **({"recipe": recipe} if recipe else {}),
                    "knn": top1})
    return out


def _run_record(c: Cell, seed: int, metrics: dict, stage: str, det_settings: dict | None = None) -> dict:
    rec = {"detector": c.detector, "labels": LABELS[c.split], "init": c.arm.init, "teacher_arch": c.arm.teacher,
           "student_arch": c.arm.student, "seed": seed, "engine": c.engine,
           **({"det_settings": det_settings} if det_settings else {})}
    if "diverged" in metrics:
        return {**rec, "ap": None, "ap50": None, "ap75": None, "diverged": metrics["diverged"], "stage": stage}
    return {**rec, "ap": metrics.get("AP"), "ap50": metrics.get("AP50"), "ap75": metrics.get("AP75"), "stage": stage}


# --------------------------------------------------------------------------------------------- results

RUN_KEY = ("engine", "detector", "labels", "init", "teacher_arch", "student_arch", "seed")
BACKBONE_KEY = ("arch", "method", "teacher_arch")


def merge_results(old: dict | None, new: dict) -> dict:
    """`new` over `old`: a run or backbone measured again replaces its record, the others stay (a
    results file grows across invocations: torchvision today, Detectron2 tomorrow)."""
    if not old:
        return new
    merged = dict(new)
    for key, ident in (("runs", RUN_KEY), ("backbones", BACKBONE_KEY)):
        recs = {tuple(r.get(k) for k in ident): r for r in old.get(key, [])}
        recs.update({tuple(r.get(k) for k in ident): r for r in new.get(key, [])})
        merged[key] = sorted(recs.values(), key=lambda r: tuple(str(r.get(k)) for k in ident))
    return merged


def read_results(path: str | Path) -> dict | None:
    """The results json at `path`, or None where there is none yet."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def write_report(result: dict, out_dir: str | Path) -> dict:
    """Merge `result` into `<out_dir>/<results name>.json` (teacher_ladder.json unless the settings name
    another) and render its md and png from that json. Ladders running side by side (the torchvision
    and Detectron2 engines, other arms or seeds) may share `out_dir`: each merge holds the folder's
    lock from reading the json to writing it, so no process drops another's records."""
    from seed_core.checkpoint_io import atomic_write_text, folder_lock
    out = Path(out_dir)
    name = result.get("settings", {}).get("results_name") or RESULTS_NAME
    paths = {k: out / f"{name}.{k}" for k in ("json", "md", "png")}
    with folder_lock(str(out)):
        merged = merge_results(read_results(paths["json"]), result)
        atomic_write_text(json.dumps(merged, indent=1) + "\n", paths["json"])
        render_report(paths["json"])
    return {k: str(v) for k, v in paths.items()}


def render_report(json_path: str | Path) -> None:
    """The md and png beside `json_path`, made from it alone."""
    from seed_core.checkpoint_io import atomic_write_text
    from .ladder_report import ladder_chart, ladder_table
    result = read_results(json_path)
    if result is None:
        raise ValueError(f"{json_path} does not exist: run the ladder first")
    base = Path(json_path).with_suffix("")
    atomic_write_text(ladder_table(result), f"{base}.md")
    ladder_chart(result, f"{base}.png")
