"""Atomic outputs: a metrics JSON file and one row appended to a shared results CSV."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from pathlib import Path

try:  # POSIX advisory locks keep concurrent appenders from losing rows; absent on Windows
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

RESULTS_COLUMNS = ("timestamp", "tool", "backbone", "arch", "top1", "top5")


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: str | Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def _locked(path: Path):
    if fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
        write_text_atomic(path, existing + buf.getvalue())
