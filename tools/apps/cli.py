"""Shared command-line plumbing: logging setup and turning known errors into clean exits."""
from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str | None = None) -> None:
    rank = os.environ.get("RANK", "0")
    level = level or os.environ.get("SEED_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level if rank == "0" else "WARNING",
                        format=f"[%(asctime)s rank{rank} %(name)s] %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S")


def fail(message: str, code: int = 2) -> "NoReturn":  # noqa: F821
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
