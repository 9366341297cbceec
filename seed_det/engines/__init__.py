"""The detection engines behind tools/train_net.py: Detectron2 (`engines/d2/`, the reference) when it
is installed, else the portable torchvision engine (`engines/tv/`).

Both read the same YAML, take the same converted `.pkl`, and end the same way: metrics.json and one
results row from the main process. `main` parses the config once, runs the engine-independent
`preflight`, then calls the chosen engine's `run(cfg, args)`.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging

from seed_core.errors import SeedError
from seed_det.config import load_det_config
from seed_det.engines.preflight import check_for_detectron2, preflight

logger = logging.getLogger(__name__)

__all__ = ["ENGINES", "EngineUnavailable", "detectron2_available", "resolve_engine", "main"]

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


def main(args: argparse.Namespace) -> dict | None:
    """Run tools/train_net.py's arguments on the chosen engine; returns the metrics (main process)."""
    engine = resolve_engine(getattr(args, "engine", "auto"))
    cfg = load_det_config(args.config_file, args.opts)
    preflight(cfg, eval_only=args.eval_only, resume=getattr(args, "resume", False))
    logger.info("engine: %s", engine)
    if engine == "detectron2":
        check_for_detectron2(cfg, args.eval_only)
        from seed_det.engines.d2.engine import run  # Detectron2 imports stay behind this line
    else:
        from seed_det.engines.tv.engine import run  # lazy: pulls in the detection models
    return run(cfg, args)
