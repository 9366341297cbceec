"""The detection engines behind tools/train_net.py: Detectron2 (`engines/d2/`, the reference) when it
is installed, else the portable torchvision engine (`engines/tv/`).

Both read the same YAML, take the same converted `.pkl`, and end the same way: metrics.json and one
results row from the main process. `main` parses the config once (`run_config` takes one already
built), runs the engine-independent `preflight`, then calls the chosen engine's `run(cfg, options)`
with the launch options (`RunOptions`).
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import logging
import os

from fvcore.common.config import CfgNode

from seed_core.constants import (EVAL_METRICS_FILE, FINAL_MODEL_FILE, LAST_CHECKPOINT_FILE, METRICS_FILE,
                                  TRAIN_LOG_FILE)
from seed_core.distributed import is_main_process
from seed_core.errors import SeedError
from seed_core.run_dir import LOCK_FILE, claim_if_main
from seed_det.config import load_det_config
from seed_det.engines.options import RunOptions
from seed_det.engines.preflight import check_for_detectron2, preflight

logger = logging.getLogger(__name__)

__all__ = ["ENGINES", "EngineUnavailable", "RunOptions", "detectron2_available", "resolve_engine", "engine_identity",
           "main", "run_config"]

ENGINES = ("auto", "detectron2", "torchvision")

INSTALL_D2 = ("Detectron2 is not installed. Install it from source (it has no release on PyPI): "
              "`pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'` "
              "(see https://detectron2.readthedocs.io/en/latest/tutorials/install.html), "
              "or run the portable engine with `--engine torchvision`.")


class EngineUnavailable(SeedError):
    """The requested engine cannot run in this environment."""


def detectron2_available() -> bool:
    return importlib.util.find_spec("detectron2") is not None


def resolve_engine(name: str) -> str:
    if name not in ENGINES:
        raise EngineUnavailable(f"unknown engine '{name}'; choose one of {ENGINES}.")
    if name == "auto":
        return "detectron2" if detectron2_available() else "torchvision"
    if name == "detectron2" and not detectron2_available():
        raise EngineUnavailable(INSTALL_D2)
    return name


PACKAGE = "seed-transfer"  # the distribution seed_det ships in


def package_version() -> str:
    """The installed seed-transfer version (`pip show seed-transfer`); seed_det's own when it runs
    from a checkout that was not installed."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        from seed_det import __version__
        return __version__


def engine_identity(name: str) -> dict:
    """What a fine-tuning's result depends on beyond its config, weights and data: the engine that
    `name` resolves to, that engine's library version and the seed-transfer version running it.
    Cached runs keyed on it are redone after an upgrade of either; a change to the engines that
    changes results comes with a new seed-transfer version."""
    engine = resolve_engine(name)
    return {"engine": engine, "library": importlib.metadata.version(engine), PACKAGE: package_version()}


def main(options: RunOptions) -> dict | None:
    """Read `options.config_file` with its `options.opts` overrides and run it on the chosen engine;
    returns the metrics (main process)."""
    resolve_engine(options.engine)  # an engine that cannot run is reported before the config is read
    return run_config(load_det_config(options.config_file, options.opts), options)


# A folder holding one of these (not empty) holds a fine-tuning; an --eval-only run only refuses an
# earlier evaluation (it is meant to write eval_metrics.json beside a training run's metrics.json).
TRAIN_MARKERS = (METRICS_FILE, LAST_CHECKPOINT_FILE, FINAL_MODEL_FILE, TRAIN_LOG_FILE)
EVAL_MARKERS = (EVAL_METRICS_FILE,)
EVAL_OUTPUTS = (EVAL_METRICS_FILE, "inference")


def _launching_process(options: RunOptions) -> bool:
    """The process that claims OUTPUT_DIR: the one started on machine 0 (under torchrun, rank 0)."""
    return options.machine_rank == 0 and is_main_process()


def claim_output_dir(cfg: CfgNode, options: RunOptions):
    """OUTPUT_DIR for this run, on both engines: a writable folder no other run is writing, whose
    run is continued (--resume), moved aside (--overwrite) or refused - Detectron2 itself would
    silently train over it. Returns its lock (held by the launching process only)."""
    out = cfg.OUTPUT_DIR
    if options.eval_only:
        markers, outputs = EVAL_MARKERS, EVAL_OUTPUTS
    else:
        markers = TRAIN_MARKERS
        outputs = [n for n in os.listdir(out) if n != LOCK_FILE and not n.startswith("previous-")] \
            if os.path.isdir(out) else []
    return claim_if_main(_launching_process(options), out, markers, resume=options.resume,
                         overwrite=options.overwrite, outputs=outputs)


def run_config(cfg: CfgNode, options: RunOptions) -> dict | None:
    """Run a detection config already built (`seed_det.config.load_det_config`) on the engine
    `options.engine`; `options.opts` is not read. Returns the metrics (main process)."""
    engine = resolve_engine(options.engine)
    unreadable = preflight(cfg, eval_only=options.eval_only, resume=options.resume)  # reads only: creates nothing
    if unreadable is not None:  # the engine leaves these out without reading their headers again
        options = dataclasses.replace(options, unreadable_training_images=tuple(sorted(unreadable.items())))
    logger.info("engine: %s", engine)
    if engine == "detectron2":
        check_for_detectron2(cfg, options.eval_only, options.num_gpus * options.num_machines)
        from seed_det.engines.d2.engine import run  # Detectron2 imports stay behind this line
    else:
        from seed_det.engines.tv.engine import run  # lazy: pulls in the detection models
    with claim_output_dir(cfg, options):
        return run(cfg, options)
