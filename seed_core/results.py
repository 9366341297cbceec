"""Results files: one CSV per kind of result under an output root, every row naming the run it came
from, appended atomically under a lock; and metrics JSON files.

Every row starts with the run's identity (RUN_COLUMNS): when, which output folder, which weights,
which engine, `train` or `eval-only`, which dataset. The kind's own columns follow. A file whose
header is not one of ours is refused before anything is written.

The kinds of seed_core's own evaluations (knn, linear) are declared here; another package declares
its kind with `register_kind` where it defines its rows (seed_det.results: detection).
"""
from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
from typing import Callable, Hashable, Iterable, Mapping

from .checkpoint_io import atomic_write_text
from .errors import SeedError

try:  # POSIX advisory locks keep concurrent appenders from losing rows; absent on Windows
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

# A file's kind is read from its header, so no two kinds may share one.
RUN_COLUMNS = ("timestamp", "output", "weights", "engine", "mode", "dataset")
KIND_COLUMNS: dict[str, tuple[str, ...]] = {
    "knn": ("arch", "k", "temperature", "top1", "top5"),
    "linear": ("arch", "optimizer", "epochs", "top1", "top5"),
}
MODES = ("train", "eval-only")
FILE_PATTERN = "results_{kind}.csv"


class ResultsError(SeedError):
    """A results file that is not ours, or a row that does not fit its kind."""


def register_kind(kind: str, kind_columns) -> tuple[str, ...]:
    """Declare a kind of results file by its own columns (they follow RUN_COLUMNS); returns all its
    columns. Declaring a kind again with the same columns changes nothing."""
    kind_columns = tuple(kind_columns)
    if KIND_COLUMNS.get(kind, kind_columns) != kind_columns:
        raise ResultsError(f"results kind '{kind}' is declared already, with columns {KIND_COLUMNS[kind]}")
    if any(cols == kind_columns for k, cols in KIND_COLUMNS.items() if k != kind):
        raise ResultsError(f"results kind '{kind}' would share its columns with another kind; a file's kind "
                           "is read from its header, so give it columns of its own")
    KIND_COLUMNS[kind] = kind_columns
    return columns(kind)


def columns(kind: str) -> tuple[str, ...]:
    if kind not in KIND_COLUMNS:
        raise ResultsError(f"unknown kind of result '{kind}'; known: {', '.join(KIND_COLUMNS)}")
    return RUN_COLUMNS + KIND_COLUMNS[kind]


def results_path(root: str | os.PathLike, kind: str) -> str:
    """Where rows of `kind` go under the output root, e.g. output/results_detection.csv."""
    columns(kind)
    return os.path.join(os.fspath(root), FILE_PATTERN.format(kind=kind))


def write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", os.fspath(path))


@contextlib.contextmanager
def _folder_lock(folder: str):
    """Hold an exclusive lock on the CSV's folder: the file itself is replaced, so it cannot carry one."""
    os.makedirs(folder, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _kind_of_header(path: str, header: list[str]) -> str:
    for kind in KIND_COLUMNS:
        if tuple(header) == columns(kind):
            return kind
    raise ResultsError(f"{path} is not a results file of this project (its columns are {header[:8]}); "
                       "move it aside or choose another results path. Results files hold one kind each: "
                       + "; ".join(f"{k}: {','.join(columns(k))}" for k in KIND_COLUMNS))


def check_results_file(path: str | os.PathLike, kind: str) -> None:
    """Refuse, before any work, a results file that exists and is not a `kind` file of ours."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ResultsError(f"results file {path} is a directory; pass a .csv file path")
    if os.path.isfile(path):
        found = _kind_of_header(path, _header(path))
        if found != kind:
            raise ResultsError(f"{path} holds {found} results, not {kind}; choose another results path.")


def _header(path: str) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def append_row(path: str | os.PathLike, kind: str, row: Mapping[str, object]) -> dict:
    """Append one row of `kind` (keys = columns(kind)) to `path`, writing the header for a new file.

    The file is rewritten through a temporary copy, so a crash never leaves a truncated table.
    """
    path, cols = os.fspath(path), columns(kind)
    missing = [c for c in cols if c not in row]
    if missing:
        raise ResultsError(f"{kind} results row lacks columns {missing}")
    if row["mode"] not in MODES:
        raise ResultsError(f"results row mode must be one of {MODES}, not {row['mode']!r}")
    out = {c: "" if row[c] is None else str(row[c]) for c in cols}
    with _folder_lock(os.path.dirname(os.path.abspath(path))):
        check_results_file(path, kind)
        existing = ""
        if os.path.isfile(path):
            with open(path, newline="") as f:
                existing = f.read()
            if existing and not existing.endswith("\n"):
                existing += "\n"
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        if not existing:
            writer.writeheader()
        writer.writerow(out)
        atomic_write_text(existing + buf.getvalue(), path)
    return out


def read_rows(path: str | os.PathLike) -> tuple[str, list[dict]]:
    """(kind, rows) of one results file; a file that is not ours is an error naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ResultsError(f"results file not found: {path}. tools/train_net.py, tools/eval_knn.py and "
                           "tools/eval_linear.py write results_<kind>.csv under their output root.")
    kind = _kind_of_header(path, _header(path))
    with open(path, newline="") as f:
        return kind, list(csv.DictReader(f))


def find_results(root: str | os.PathLike) -> list[str]:
    """The results files under an output root (results_<kind>.csv), in the order of the kinds' names."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ResultsError(f"output root {root} is not a folder")
    found = [results_path(root, k) for k in sorted(KIND_COLUMNS) if os.path.isfile(results_path(root, k))]
    if not found:
        others = sorted(os.path.basename(p) for p in glob.glob(os.path.join(root, "*.csv")))
        raise ResultsError(f"no results files (results_<kind>.csv) in {root}"
                           + (f"; found {others}, which are not ours" if others else ""))
    return found


def latest_per_key(rows: Iterable[Mapping[str, str]], key: Callable[[Mapping[str, str]], Hashable]) -> dict:
    """The latest row for each key, rows being in time order, except that an eval-only row never
    replaces a training row (re-evaluating a model must not hide the run that trained it)."""
    chosen: dict = {}
    for row in rows:
        k = key(row)
        if k in chosen and row.get("mode") == "eval-only" and chosen[k].get("mode") != "eval-only":
            continue
        chosen[k] = row
    return chosen
