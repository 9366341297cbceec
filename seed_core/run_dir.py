"""Output folders of runs: checked before any work starts, a run already in them never overwritten
without being asked, and the run's log file (OUTPUT_DIR/log.txt)."""
from __future__ import annotations

import logging
import os
import time
from typing import Iterable

from .constants import LOG_FILE
from .errors import ConfigError


def ensure_output_dir(path: str, what: str) -> None:
    """Create `path` if needed and prove a file can be written there; `what` names the setting in
    the error (e.g. "OUTPUT_DIR", "--cache-dir")."""
    if not path:
        raise ConfigError(f"{what} is empty: name a folder to write to")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{what} {path} is a file, not a folder: choose a folder (it is created if missing)")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test.{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{what} {path} is not writable ({e.strerror or e}): choose another folder "
                          f"or fix its permissions") from None


def existing_run(folder: str, markers: Iterable[str]) -> list[str]:
    """The files among `markers` that `folder` holds with some content: a run was started there
    (an empty file holds nothing to lose)."""
    found = []
    for name in markers:
        try:
            if os.path.getsize(os.path.join(folder, name)) > 0:
                found.append(name)
        except OSError:  # absent
            continue
    return found


def move_aside(folder: str, names: Iterable[str]) -> str:
    """Move `names` (files or folders inside `folder`, those that exist) into a new
    `folder/previous-<time>/`, never deleting anything; returns that folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = os.path.join(folder, f"previous-{stamp}")
    n = 1
    while os.path.exists(target):  # two restarts within a second
        n += 1
        target = os.path.join(folder, f"previous-{stamp}-{n}")
    os.makedirs(target)
    for name in names:
        src = os.path.join(folder, name)
        if os.path.lexists(src):
            os.replace(src, os.path.join(target, name))
    return target


class RunLog:
    """While active, the records of the `loggers` (INFO and above) also go to `folder/log.txt`,
    appended, so a resumed run continues its log. Both the distillation trainer and the detection
    engines keep their run's log this way.

    `enabled` False (a process other than the main one of a multi-process run) writes no file;
    with `quiet` the loggers then pass warnings and errors only, so N processes do not repeat
    every line."""

    def __init__(self, folder: str, loggers: Iterable[str], enabled: bool = True, quiet: bool = False):
        self.loggers = [logging.getLogger(name) for name in loggers]
        self.handler = logging.FileHandler(os.path.join(folder, LOG_FILE)) if enabled else None
        if self.handler is not None:
            self.handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s"))
        self.quiet = quiet and not enabled
        self.levels: list[int] = []

    def __enter__(self) -> "RunLog":
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            if self.quiet:
                lg.setLevel(logging.WARNING)
            elif self.handler is not None and lg.getEffectiveLevel() > logging.INFO:
                lg.setLevel(logging.INFO)
            if self.handler is not None:
                lg.addHandler(self.handler)
        return self

    def __exit__(self, *exc) -> None:
        for lg, level in zip(self.loggers, self.levels):
            if self.handler is not None:
                lg.removeHandler(self.handler)
            lg.setLevel(level)
        if self.handler is not None:
            self.handler.close()
