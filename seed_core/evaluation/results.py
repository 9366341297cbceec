"""Atomic outputs: a metrics JSON file and one row appended to a shared results CSV."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path

from ..checkpoint_io import atomic_write_text

try:  # POSIX advisory locks keep concurrent appenders from losing rows; absent on Windows
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

RESULTS_COLUMNS = ("timestamp", "tool", "backbone", "arch", "top1", "top5")


def write_json_atomic(path: str | Path, obj) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", str(path))


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on the CSV's directory: the file itself is replaced, so it cannot carry one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def append_results_row(path: str | Path, row: dict) -> None:
    """Append `row` (keys = RESULTS_COLUMNS) to the CSV, writing the header for a new file.

    The file is rewritten through a temporary copy so a crash never leaves a truncated table.
    """
    path = Path(path)
    missing = [c for c in RESULTS_COLUMNS if c not in row]
    if missing:
        raise ValueError(f"results row lacks columns {missing}")
    with _locked(path):
        existing = path.read_text() if path.is_file() else ""
        if existing:
            header = next(csv.reader(io.StringIO(existing)), [])
            if tuple(header) != RESULTS_COLUMNS:
                raise ValueError(f"{path} has columns {header}, expected {list(RESULTS_COLUMNS)}: "
                                 f"choose another --results-csv or move the old file away.")
            if not existing.endswith("\n"):
                existing += "\n"
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        if not existing:
            writer.writerow(RESULTS_COLUMNS)
        writer.writerow([row[c] for c in RESULTS_COLUMNS])
        atomic_write_text(existing + buf.getvalue(), str(path))
