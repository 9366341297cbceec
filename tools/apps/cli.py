"""Shared command-line plumbing: logging setup, `KEY VALUE` config overrides among the flags, and
turning known errors into clean exits."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn


def setup_logging(level: str | None = None) -> None:
    rank = os.environ.get("RANK", "0")
    level = level or os.environ.get("SEED_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level if rank == "0" else "WARNING",
                        format=f"[%(asctime)s rank{rank} %(name)s] %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S")


def parse_with_overrides(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse the parser's flags wherever they stand, also after the overrides
    (`... MODEL.WEIGHTS m.pth --eval-only`, as Detectron2 users type); every other word is one of
    the `KEY VALUE` config overrides, in `args.opts`. Unknown flags are an error."""
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE",
                        help="config overrides, e.g. SOLVER.BASE_LR 0.01; flags may come before or after them")
    return parser.parse_intermixed_args(argv)


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
