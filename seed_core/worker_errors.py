"""Errors raised in another process reach the user as the one line the main process would print.

torch re-raises an exception of a DataLoader worker in the main process as the same type, but with a
message that wraps the worker's traceback ("Caught DatasetError in DataLoader worker process 0.
Original Traceback (most recent call last): ..."). `plain_worker_errors` turns such a SeedError back
into its original message, followed by `(details: <log>)`, and appends the worker's traceback to that
log. The other cases (a side-by-side step, a rank of a multi-process run) hand over the exception
itself; `one_line` and `with_details` give them the same form, and `plain_process_errors` turns an
error that is not a SeedError, raised in one process of a multi-process run, into that one line
(its traceback into the run log) instead of N interleaved tracebacks.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
import traceback
from typing import Iterator, Optional

from .errors import ProcessFailedError, SeedError

logger = logging.getLogger(__name__)

_WRAPPED = re.compile(r"\ACaught \w+ in [^\n]*\.\s*\nOriginal Traceback")


def original_message(error: BaseException) -> Optional[str]:
    """The message `error` had in the DataLoader worker that raised it; None when it was not raised
    in one (it carries its own message)."""
    text = str(error)
    if not _WRAPPED.match(text):
        return None
    # The wrapped traceback ends with "<module>.<TypeName>: <message>", the line the worker would print.
    ends = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(type(error).__name__)}: ", text, re.MULTILINE))
    return text[ends[-1].end():].strip() if ends else None


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def with_details(message: str, log_path: Optional[str]) -> str:
    """`message (details: <log>)`, on one line; the message alone without a log."""
    return one_line(message) + (f" (details: {log_path})" if log_path else "")


def _append(log_path: str, text: str) -> bool:
    """Append `text` to the log; False when it cannot be written (the message still reaches the
    user, only the details are missing)."""
    if not os.path.isdir(os.path.dirname(os.path.abspath(log_path))):
        return False  # never create a folder for a log: the run did not get that far
    try:
        with open(log_path, "a") as f:
            f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {text.rstrip()}\n")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def plain_process_errors(rank: int, world_size: int, log_path: Optional[str],
                         passing: tuple = ()) -> Iterator[None]:
    """Around the work of one process of a multi-process run: an error that is not a SeedError
    becomes ProcessFailedError, `the process of rank <r> failed: <Type>: <first line> (details:
    <log_path>)`, with the traceback appended to `log_path`. SeedErrors pass unchanged, and so does
    everything in a single-process run, whose one traceback is not mixed with others, and the
    exceptions in `passing`, which the caller handles (e.g. a stop signal)."""
    try:
        yield
    except (SeedError, *passing):
        raise
    except Exception as e:  # noqa: BLE001 - any failure of a rank, reported in one line
        if world_size <= 1:
            raise
        written = bool(log_path) and _append(log_path, f"the process of rank {rank} failed:\n{traceback.format_exc()}")
        if not written:
            logger.debug("the process of rank %d failed", rank, exc_info=True)
        first = (str(e).strip().splitlines() or [""])[0][:300]
        message = f"the process of rank {rank} failed: {type(e).__name__}" + (f": {first}" if first else "")
        raise ProcessFailedError(with_details(message, log_path if written else None)) from None


@contextlib.contextmanager
def plain_worker_errors(log_path: Optional[str] = None) -> Iterator[None]:
    """Around code that iterates a DataLoader: a SeedError a worker raised is raised again as the same
    type with its original message and `(details: <log_path>)`; the worker's traceback goes to
    `log_path` (without one, to this module's logger at DEBUG level). Other errors pass unchanged."""
    try:
        yield
    except SeedError as e:
        message = original_message(e)
        if message is None:
            raise
        if log_path:
            _append(log_path, f"a data loading worker failed:\n{e}")
        else:
            logger.debug("a data loading worker failed:\n%s", e)
        try:
            plain = type(e)(with_details(message, log_path))
        except Exception:  # noqa: BLE001 - a subclass with another constructor: keep the message
            plain = SeedError(with_details(message, log_path))
        raise plain from None


_RAISED = re.compile(r"^(?P<type>[A-Za-z_][\w.]*\.[A-Za-z_]\w*): (?P<message>.*)$")


def raised_in_spawned_process(error: BaseException) -> Optional[SeedError]:
    """The SeedError a process started by torch.multiprocessing raised (Detectron2's launcher starts
    its processes so), rebuilt from the traceback text torch puts in the message of its
    ProcessRaisedException ("-- Process 1 terminated with the following error: Traceback ...
    <module>.<Type>: <message>"); None when that process raised something else."""
    lines = str(error).rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        match = _RAISED.match(lines[i])
        if not match:
            continue
        module, _, name = match["type"].rpartition(".")
        cls = getattr(sys.modules.get(module), name, None)
        if not (isinstance(cls, type) and issubclass(cls, SeedError)):
            return None
        message = one_line(" ".join([match["message"], *lines[i + 1:]]))
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 - a subclass with another constructor: keep the message
            return SeedError(message)
    return None
