#!/usr/bin/env python
"""The teacher's precision decided by its effect on the student (TRAIN.TEACHER_PRECISION auto).

SEED students of the digits harness (benchmarks/paper_claim.py: ResNet-18 and MobileNetV3-Small from
its MoCo-v2 ResNet-34 teacher, 3 seeds) with the teacher in fp32, bf16 and fp16 (fp16 emulated on a
CPU): k-NN top-1 mean ± std, the paired difference to the fp32 teacher's students with its 95 %
interval, and the training step each precision costs, timed side by side in one run. Writes
<output-dir>/teacher_precision_students.{md,json}.

    python benchmarks/teacher_precision.py                  # students (cached runs), then step times
    python benchmarks/teacher_precision.py --skip-timing    # students only (e.g. beside other work)
    python benchmarks/teacher_precision.py --tiny           # seconds: pipeline check in a temporary folder

The work folder is the digits harness's (default output/paper_claim): its teacher and runs are reused.
Time the steps on a quiet machine; the k-NN part may share it.
"""
import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from seed_core.config import ConfigError
from tools.benchmarking.paper_claim import TINY, Settings, _settings_dict, choose_folders
from tools.benchmarking.teacher_precision import PRECISIONS, STEM, score_students, table, time_steps, verdict
from tools.cli import add_results_dir

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
DEFAULT_WORK = os.path.join(os.path.dirname(HERE), "output", "paper_claim")


def parse_args(argv=None):
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_results_dir(p, help=f"table and JSON go here (default: {RESULTS}; with --tiny a temporary folder)")
    p.add_argument("--work-dir", default=None, help=f"the digits harness's cache (default: {DEFAULT_WORK})")
    p.add_argument("--archs", nargs="+", default=list(d.student_archs), help="student architectures")
    p.add_argument("--teacher-arch", default=d.teacher_arch)
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds))
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS),
                   help="teacher precisions (fp32 is the reference and always included)")
    p.add_argument("--skip-timing", action="store_true", help="k-NN of the students only")
    p.add_argument("--repeats", type=int, default=20, help="timed steps per precision")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the harness trains with 1)")
    p.add_argument("--tiny", action="store_true", help="a few iterations on a small subset, in a temporary folder")
    args = p.parse_args(argv)
    if "fp32" not in args.precisions:
        args.precisions = ["fp32"] + args.precisions
    choose_folders(args, RESULTS, DEFAULT_WORK, "teacher_precision_tiny-")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    s = Settings(work_dir=args.work_dir, student_archs=tuple(args.archs), teacher_arch=args.teacher_arch,
                 seeds=tuple(args.seeds))
    s = replace(s, **TINY) if args.tiny else s
    start = time.time()
    try:
        result = {"settings": _settings_dict(s), "precisions": args.precisions,
                  "students": {arch: score_students(s, arch, args.precisions) for arch in s.student_archs}}
    except (ConfigError, ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result["verdict"] = verdict(result)
    if not args.skip_timing:
        repeats = 2 if args.tiny else args.repeats
        result["timing"] = {arch: time_steps(s, arch, args.precisions, repeats, warmup=1 if args.tiny else 3)
                            for arch in s.student_archs}
    result["wall_seconds"] = round(time.time() - start, 1)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = table(result)
    (out / f"{STEM}.md").write_text(text)
    (out / f"{STEM}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    print(f"wrote {out / STEM}.{{md,json}} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
