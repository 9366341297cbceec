"""The command line of the benchmarks that follow the teacher-ladder protocol
(benchmarks/teacher_ladder.py, benchmarks/mobile_students.py): the same flags, each script its own
defaults (`Settings`)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import replace

from seed_core.errors import SeedError
from tools.cli import add_results_dir

from .teacher_ladder import Settings, render_report, run_ladder, tiny_settings, write_report


def run_cli(argv, defaults: Settings, description: str, results_dir: str) -> int:
    d = defaults
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default=d.work_dir, help="cached stages (keep it: the benchmark resumes from it)")
    add_results_dir(p, help="report (md, png) and results JSON go here", default=results_dir)
    p.add_argument("--arms", nargs="+", default=list(d.arms), metavar="INIT:STUDENT[:TEACHER]",
                   help="init one of random, mocov2, seed, l2; e.g. seed:resnet18:resnet50")
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds))
    p.add_argument("--decisive-seeds", nargs="+", type=int, default=list(d.decisive_seeds),
                   help="SEED from the largest teacher and MoCo-v2, 10 %% labels, every engine")
    p.add_argument("--detectors", nargs="+", default=list(d.detectors), choices=["fpn", "c4"])
    p.add_argument("--splits", nargs="+", default=list(d.splits), choices=["train", "train_small"])
    p.add_argument("--engines", nargs="+", default=list(d.engines), choices=["torchvision", "detectron2"])
    p.add_argument("--teacher-epochs", type=int, default=d.teacher_epochs)
    p.add_argument("--teacher-lr", type=float, default=d.teacher_lr, help="the larger teachers' SOLVER.BASE_LR (default: the preset's distill_base_lr)")
    p.add_argument("--teacher-set", nargs="+", default=[], metavar="KEY VALUE",
                   help="further distillation settings of the larger teachers, e.g. MODEL.STUDENT.ZERO_INIT_RESIDUAL True")
    p.add_argument("--det-set", nargs="+", default=[], metavar="KEY VALUE",
                   help="detection settings of every fine-tuning, e.g. MODEL.TIMM.NORM FrozenBN (runs of their own: "
                        "give them a --results-name of their own)")
    p.add_argument("--results-name", default=d.results_name, help="results file name (without .json)")
    p.add_argument("--stages", nargs="+", default=[], metavar="STAGE",
                   help="only these stages and what they need, e.g. knn_teacher_moco_resnet50 (a teacher-recipe probe)")
    p.add_argument("--processes", type=int, default=d.processes, help="stages side by side (0: one per core)")
    p.add_argument("--render", action="store_true", help="only render the md and png from the results json")
    p.add_argument("--tiny", action="store_true",
                   help="tiny preset, two seeds, into a temporary folder (never the committed results)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out_dir = args.out_dir
    try:
        if args.render:
            render_report(os.path.join(out_dir, f"{args.results_name}.json"))
            print(f"rendered {out_dir}/{args.results_name}.md and .png")
            return 0
        if args.det_set and args.results_name == d.results_name:
            raise ValueError(f"--det-set: give these runs a --results-name of their own (not {d.results_name}), "
                             f"so that they sit beside the runs at the configs' own settings")
        s = replace(d, teacher_recipe=_pairs("--teacher-set", args.teacher_set),
                    det_recipe=_pairs("--det-set", args.det_set), results_name=args.results_name,
                    stages=tuple(args.stages), work_dir=args.work_dir, arms=tuple(args.arms), seeds=tuple(args.seeds),
                    decisive_seeds=tuple(args.decisive_seeds), detectors=tuple(args.detectors),
                    splits=tuple(args.splits), engines=tuple(args.engines), teacher_epochs=args.teacher_epochs,
                    teacher_lr=args.teacher_lr, processes=args.processes)
        if args.tiny:
            tmp = tempfile.mkdtemp(prefix=f"{d.results_name}_tiny-")
            s = tiny_settings(os.path.join(tmp, "work"), like=d)
            out_dir = os.path.join(tmp, "results")
        start = time.time()
        result = run_ladder(s, on_progress=lambda r: write_report(r, out_dir))
        paths = write_report(result, out_dir)
    except (SeedError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(open(paths["md"]).read())
    print("wrote " + ", ".join(paths.values()))
    print(f"total {time.time() - start:.0f} s")
    return 0


def _typed(text: str):
    """A command-line value as the config schema types it: True, 0.5, 3, or the text itself."""
    import ast
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _pairs(flag: str, words: list) -> tuple:
    """KEY VALUE KEY VALUE ... as ((KEY, typed VALUE), ...)."""
    if len(words) % 2:
        raise ValueError(f"{flag} takes KEY VALUE pairs, got {words}")
    return tuple((k, _typed(v)) for k, v in zip(words[::2], words[1::2]))
