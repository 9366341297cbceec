"""Results files: one CSV per kind of result under an output root, every row naming the run it came
from, appended atomically under a lock; and metrics JSON files.

Every row starts with the run's identity (RUN_COLUMNS): when, which output folder, which weights,
which engine, `train` or `eval-only`, which dataset. The kind's own columns follow.

A file in the way is never overwritten and never stops a finished run from recording its row. When a
row is appended, a damaged file of ours (bytes that are not text, a torn or short row) is moved aside
to `<name>.damaged-<time>` and a new file is started with its good rows; a file of another schema is
moved aside to `<name>.foreign-<time>`; both with a warning naming where it went. A file of another of
our kinds is refused before work (a results path given for the wrong tool).

The kinds of seed_core's own evaluations (knn, linear) are declared here; another package declares
its kind with `register_kind` where it defines its rows (seed_det.results: detection).
"""
from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Mapping

from .checkpoint_io import atomic_write_text, folder_lock
from .errors import SeedError

logger = logging.getLogger(__name__)

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
    """Write `obj` atomically. An existing file that is not valid JSON text is moved aside to
    `<name>.damaged-<time>`, and one holding JSON of another schema (not an object with the same
    keys) to `<name>.foreign-<time>`, with a warning: neither is overwritten."""
    path = os.fspath(path)
    with folder_lock(os.path.dirname(os.path.abspath(path))):
        if os.path.isfile(path) and os.path.getsize(path):
            try:
                with open(path, encoding="utf-8") as f:
                    old = json.load(f)
            except (UnicodeDecodeError, ValueError):
                move_aside(path, "damaged", "it is not valid JSON text")
            else:
                if not (isinstance(old, dict) and isinstance(obj, Mapping) and set(old) == set(obj)):
                    move_aside(path, "foreign", "it holds JSON of another schema")
        atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def move_aside(path: str, why: str, reason: str) -> str:
    """Rename `path` to `<path>.<why>-<time>` (never over another file), log a warning naming it and
    `reason`, and return the new name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = f"{path}.{why}-{stamp}", 1
    while os.path.lexists(target):
        n += 1
        target = f"{path}.{why}-{stamp}-{n}"
    os.replace(path, target)
    logger.warning("%s: %s; moved it aside to %s and started a new file", path, reason, target)
    return target


def _other_kinds_message() -> str:
    return "Results files hold one kind each: " + "; ".join(f"{k}: {','.join(columns(k))}" for k in KIND_COLUMNS)


@dataclass
class ResultsFile:
    """What an existing results file holds: its kind (None when it is not a results file of ours:
    `problem` says why), its good rows, and the lines that are damaged."""
    path: str
    kind: str | None = None
    problem: str = ""
    rows: list = field(default_factory=list)
    good_lines: list = field(default_factory=list)   # the text of the good rows, as in the file
    damaged: list = field(default_factory=list)      # "line 7: torn (3 of 11 columns)", ...
    empty: bool = False
    not_text: bool = False

    def damage_summary(self) -> str:
        shown = "; ".join(self.damaged[:3]) + (f"; +{len(self.damaged) - 3} more" if len(self.damaged) > 3 else "")
        return f"{len(self.damaged)} damaged line{'s' if len(self.damaged) > 1 else ''} ({shown})"


def _text(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text.rstrip("\r")


def _fields(text: str) -> list[str] | None:
    try:
        return next(csv.reader([text], strict=True), [])
    except csv.Error:
        return None


def inspect_results_file(path: str | os.PathLike) -> ResultsFile:
    """Read an existing results file line by line, keeping every row that is whole. A row is damaged
    when it is not UTF-8 text, has another number of columns than the header, has no valid mode, or
    is the last line and lacks its end of line (a torn write: this project's writes always end one)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    out = ResultsFile(path)
    if not data.strip():
        out.empty = True
        return out
    lines = data.split(b"\n")
    last = lines.pop()  # b"" when the file ends with its end of line
    if not lines:
        lines, last = [last], b""
    header_text = _text(lines[0])
    header = _fields(header_text) if header_text is not None else None
    if header is None:
        out.not_text, out.problem = True, "its first line is not text"
        return out
    out.kind = next((k for k in KIND_COLUMNS if tuple(header) == columns(k)), None)
    if out.kind is None:
        out.problem = f"its columns are {header[:8]}, not those of a results file of this project"
        return out
    cols = columns(out.kind)
    for number, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        text = _text(raw)
        fields = _fields(text) if text is not None else None
        if text is None:
            out.damaged.append(f"line {number}: not text")
        elif fields is None:
            out.damaged.append(f"line {number}: not a CSV row")
        elif len(fields) != len(cols):
            out.damaged.append(f"line {number}: torn ({len(fields)} of {len(cols)} columns)")
        elif fields[cols.index("mode")] not in MODES:
            out.damaged.append(f"line {number}: not a row of this file (mode {fields[cols.index('mode')][:20]!r})")
        else:
            out.rows.append(dict(zip(cols, fields)))
            out.good_lines.append(text)
    if last.strip():
        out.damaged.append(f"line {len(lines) + 1}: torn (no end of line)")
    return out


def check_results_file(path: str | os.PathLike, kind: str) -> None:
    """Before any work: refuse a results path that is a directory or holds another kind of our
    results (the path of another tool's file). A damaged file, or one of another schema, is not
    refused: it is moved aside when the row is appended (see `append_row`)."""
    path = os.fspath(path)
    columns(kind)
    if os.path.isdir(path):
        raise ResultsError(f"results file {path} is a directory; pass a .csv file path")
    if os.path.isfile(path):
        found = inspect_results_file(path)
        if found.kind is not None and found.kind != kind:
            raise ResultsError(f"{path} holds {found.kind} results, not {kind}; choose another results path. "
                               + _other_kinds_message())
        if found.kind is None and not found.empty:
            logger.warning("%s: %s; it will be moved aside when this run records its result", path, found.problem)
        elif found.damaged:
            logger.warning("%s: %s; it will be moved aside, keeping its %d good rows, when this run records its "
                           "result", path, found.damage_summary(), len(found.rows))


def _one_line(value) -> str:
    return "" if value is None else " ".join(str(value).splitlines())


def append_row(path: str | os.PathLike, kind: str, row: Mapping[str, object]) -> dict:
    """Append one row of `kind` (keys = columns(kind)) to `path`, writing the header for a new file.

    The file is rewritten through a temporary copy, so a crash never leaves a truncated table. A file
    in the way is moved aside, never overwritten and never a reason to lose the row: a damaged file of
    ours to `<name>.damaged-<time>` (the new file starts with its good rows), a file of another schema
    or kind to `<name>.foreign-<time>`.
    """
    path, cols = os.fspath(path), columns(kind)
    missing = [c for c in cols if c not in row]
    if missing:
        raise ResultsError(f"{kind} results row lacks columns {missing}")
    if row["mode"] not in MODES:
        raise ResultsError(f"results row mode must be one of {MODES}, not {row['mode']!r}")
    out = {c: _one_line(row[c]) for c in cols}  # one row, one line: a torn row is then a short line
    with folder_lock(os.path.dirname(os.path.abspath(path))):
        if os.path.isdir(path):
            raise ResultsError(f"results file {path} is a directory; pass a .csv file path")
        kept: list[str] = []
        if os.path.isfile(path):
            found = inspect_results_file(path)
            if found.kind == kind:
                kept = found.good_lines
                if found.damaged:
                    move_aside(path, "damaged", f"{found.damage_summary()}; its {len(kept)} good rows are kept "
                                                "in the new file")
            elif found.not_text:
                move_aside(path, "damaged", found.problem)
            elif found.kind is not None:
                move_aside(path, "foreign", f"it holds {found.kind} results, not {kind}")
            elif not found.empty:
                move_aside(path, "foreign", found.problem)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        buf.writelines(line + "\n" for line in kept)
        writer.writerow(out)
        atomic_write_text(buf.getvalue(), path)
    return out


def read_rows(path: str | os.PathLike) -> tuple[str, list[dict]]:
    """(kind, good rows) of one results file; a file that is not ours is an error naming it, and
    damaged lines are skipped with a warning."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ResultsError(f"results file not found: {path}. tools/train_net.py, tools/eval_knn.py and "
                           "tools/eval_linear.py write results_<kind>.csv under their output root.")
    found = inspect_results_file(path)
    if found.kind is None:
        raise ResultsError(f"{path} is not a results file of this project ({found.problem or 'it is empty'}). "
                           + _other_kinds_message())
    if found.damaged:
        logger.warning("%s: %s; using its %d good rows", path, found.damage_summary(), len(found.rows))
    return found.kind, found.rows


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
