"""The detection engines behind tools/train_net.py: Detectron2 (`engines/d2/`, the reference) when it
is installed, else the portable torchvision engine (`engines/tv/`).

Both read the same YAML, take the same converted `.pkl`, and end the same way: metrics.json and one
results row from the main process. `main` parses the config once, runs the engine-independent
`preflight`, then calls the chosen engine's `run(cfg, args)`.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import logging
from pathlib import Path

from seed_core.errors import SeedError
from seed_det.config import load_det_config
from seed_det.engines.preflight import check_for_detectron2, preflight

logger = logging.getLogger(__name__)

__all__ = ["ENGINES", "EngineUnavailable", "detectron2_available", "resolve_engine", "engine_identity", "main"]

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


_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # seed_det/
_ENGINE_CODE = {"detectron2": "d2", "torchvision": "tv"}  # engine -> its subpackage of seed_det/engines


def engine_identity(name: str) -> dict:
    """What a fine-tuning's result depends on beyond its config, weights and data: the engine that
    `name` resolves to, its library's version and a digest of the seed_det sources it runs (every
    module but the other engine's). Cached runs keyed on it are redone after a change to either."""
    engine = resolve_engine(name)
    others = [_PACKAGE_DIR / "engines" / d for e, d in _ENGINE_CODE.items() if e != engine]
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE_DIR.rglob("*.py")):
        if not any(other in path.parents for other in others):
            digest.update(path.relative_to(_PACKAGE_DIR).as_posix().encode() + b"\0" + path.read_bytes())
    return {"engine": engine, "library": importlib.metadata.version(engine),
            "code_sha256": digest.hexdigest()[:16]}


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
