"""The one run cache of the applications: a step whose result is kept in `<dir>/run.json` together
with the parameters that produced it. Running it again with the same parameters reuses the result;
different parameters, or a step that never finished, run again (a distillation resumes from its
checkpoint, unless the attempt that wrote it had other parameters: see `outdated`). A step that cannot resume
starts in an empty folder: a finished run it replaces is moved to `previous-<time>/`, not deleted.
A step runs holding its folder's lock (seed_core.run_dir): two processes sharing a cache folder never
write one step at once; the second is refused, or reuses the result if the first has finished.

Used by the demo pipeline (one folder per stage) and the benchmarks (one folder per training run,
named by a hash of every setting that changes its result).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable

from seed_core.checkpoint_io import atomic_write_text
from seed_core.config import CfgNode, flatten_cfg, load_cfg
from seed_core.constants import CHECKPOINT_FILE, METRICS_LOG_FILE
from seed_core.run_dir import LOCK_FILE, claim_run_dir, move_aside

logger = logging.getLogger(__name__)

MARKER = "run.json"
ATTEMPT = "attempt.json"  # the parameters of the attempt under way (or killed), until its result is recorded
# Settings that change how a run is executed or logged, not what it learns.
NOT_IN_KEY = frozenset({"OUTPUT_DIR", "DATA.NUM_WORKERS", "TRAIN.PROGRESS", "TRAIN.LOG_PERIOD",
                        "TRAIN.CHECKPOINT_PERIOD", "TRAIN.DIST_TIMEOUT", "TRAIN.KEEP_EPOCH_CHECKPOINTS"})
# Settings added after runs were cached: at these values (their defaults, which is how every earlier
# run trained) they stay out of the key, so that earlier runs keep matching.
OMITTED_AT = {"MODEL.STUDENT.HEAD_BATCH_NORM": False, "SOLVER.OPTIMIZER": "sgd", "SOLVER.LARS_ETA": 0.001}
# Paths whose value is not their meaning: callers pass an identity for them instead.
PATH_KEYS = ("DATA.ROOT", "MODEL.TEACHER.WEIGHTS")


class CachedRun:
    """A step kept in `directory`: `run(fn)` returns the cached result or runs `fn()` (which
    returns a JSON-able dict) and records it with `params`."""

    def __init__(self, directory: str | os.PathLike, params: dict, announce: Callable[[str], None] | None = None):
        self.dir = os.fspath(directory)
        self.name = os.path.basename(self.dir)
        self.params = json.loads(json.dumps(params, default=str))  # compare as they are stored
        self.marker = os.path.join(self.dir, MARKER)
        self.attempt = os.path.join(self.dir, ATTEMPT)
        self.announce = announce or (lambda msg: logger.info("%s", msg))

    def cached(self) -> dict | None:
        try:
            with open(self.marker) as f:
                record = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            logger.warning("ignoring damaged %s (%s); the step runs again", self.marker, e)
            return None
        return record.get("result") if record.get("params") == self.params else None

    def outdated(self) -> bool:
        """Whether the folder holds work made with other parameters than these: a finished run, or
        an attempt killed midway (whose checkpoint must then not be resumed: say its teacher changed)."""
        if self.cached() is not None:
            return False
        # An attempt's record is newer than any finished run's marker (it is removed when its run
        # finishes), so it decides: a killed attempt with these parameters resumes.
        try:
            with open(self.attempt) as f:
                return json.load(f).get("params") != self.params
        except FileNotFoundError:
            return os.path.isfile(self.marker)
        except (OSError, ValueError):
            return True  # unreadable: what it was made with is unknown, so it is not resumed

    def run(self, fn: Callable[[], dict], fresh: bool = False) -> dict:
        """`fresh`: the step cannot resume, so leftovers of an interrupted attempt are removed first."""
        result = self.cached()
        if result is not None:
            self.announce(f"[{self.name}] done before: reusing {self.dir}")
            return result
        with claim_run_dir(self.dir, what=f"the folder of step {self.name}"):
            result = self.cached()  # another process may have finished it while we looked
            if result is not None:
                self.announce(f"[{self.name}] done before: reusing {self.dir}")
                return result
            self.announce(f"[{self.name}] running ...")
            start = time.time()
            if fresh:
                self._clear()
            atomic_write_text(json.dumps({"params": self.params}, indent=2) + "\n", self.attempt)
            result = dict(fn())
            result["seconds"] = round(time.time() - start, 1)
            atomic_write_text(json.dumps({"params": self.params, "result": result}, indent=2) + "\n", self.marker)
            os.remove(self.attempt)
        self.announce(f"[{self.name}] finished in {result['seconds']:.0f} s")
        return result

    def _clear(self) -> None:
        """Before a fresh attempt: a finished run made with other parameters is moved to
        `previous-<time>/` (never deleted); leftovers of an attempt that never finished are removed."""
        names = [n for n in os.listdir(self.dir) if not n.startswith("previous-") and n != LOCK_FILE]
        if not os.path.exists(self.marker):
            for name in names:
                path = os.path.join(self.dir, name)
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
            return
        target = move_aside(self.dir, names)
        logger.warning("[%s] its settings changed: the earlier run was moved to %s", self.name, target)


def run_key(cfg: CfgNode, identities: dict[str, str]) -> str:
    """Hash of the settings that determine a distillation run's result.

    `identities` maps path keys (DATA.ROOT, MODEL.TEACHER.WEIGHTS) to what they contain, so a moved
    cache still matches and a different dataset or teacher at the same path does not.
    """
    flat = {k: v for k, v in flatten_cfg(cfg).items()
            if k not in NOT_IN_KEY and not (k in OMITTED_AT and v == OMITTED_AT[k])}
    for key in PATH_KEYS:
        if flat.get(key) and key not in identities:
            raise ValueError(f"run_key: {key} = {flat[key]!r} is a path; pass an identity for it "
                             f"(what the path holds) so the cache key does not depend on where it lives")
    flat.update(identities)
    text = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def distill(cfg: CfgNode, restart: bool = False) -> dict:
    """Train the run `cfg` describes in cfg.OUTPUT_DIR, resuming from its checkpoint if one is there
    (leftovers of an attempt killed before its first checkpoint are moved aside). `restart`: the run
    there is outdated (its caller's settings changed); its files are moved aside and it starts over."""
    from seed_core.trainer import train
    resume = not restart and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, CHECKPOINT_FILE))
    summary = train(cfg, resume=resume, restart=not resume)
    if not summary.get("backbone"):
        raise RuntimeError(f"the run in {cfg.OUTPUT_DIR} stopped after {summary.get('iterations')} iterations "
                           f"without exporting a backbone; run again to resume it")
    return {"out_dir": cfg.OUTPUT_DIR, "backbone": summary["backbone"], "checkpoint": summary["checkpoint"],
            "metrics": os.path.join(cfg.OUTPUT_DIR, METRICS_LOG_FILE)}


@dataclass
class DistillRun:
    name: str
    key: str
    out_dir: str
    backbone: str      # exported student_backbone.pth
    checkpoint: str    # OUTPUT_DIR/checkpoint.pth (a moco run's is usable as a teacher)
    seconds: float     # training time when it ran
    reused: bool


def cached_distill(name: str, opts: list[str], cache_dir: str | os.PathLike, identities: dict[str, str],
                   config_file: str | None = None) -> DistillRun:
    """Train the run described by `config_file` + `KEY VALUE` overrides, or reuse the finished one in
    `<cache_dir>/<name>-<key>`."""
    cfg = load_cfg(config_file, opts)
    key = run_key(cfg, identities)
    cfg.OUTPUT_DIR = os.path.join(os.fspath(cache_dir), f"{name}-{key}")
    step = CachedRun(cfg.OUTPUT_DIR, {"key": key})
    before = step.cached()
    if before is not None and not os.path.isfile(before["backbone"]):
        logger.warning("%s names %s, which is gone; training again", step.marker, before["backbone"])
        os.unlink(step.marker)
        before = None
    result = step.run(lambda: distill(cfg))
    return DistillRun(name, key, result["out_dir"], result["backbone"], result["checkpoint"], result["seconds"],
                      reused=before is not None)
