"""Errors raised in another process reach the user as the one line the main process would print.

torch re-raises an exception of a DataLoader worker in the main process as the same type, but with a
message that wraps the worker's traceback ("Caught DatasetError in DataLoader worker process 0.
Original Traceback (most recent call last): ..."). `plain_worker_errors` turns such a SeedError back
into its original message, followed by `(details: <log>)`, and appends the worker's traceback to that
log. The other cases (a side-by-side step, a rank of a multi-process run) hand over the exception
itself; `one_line` and `with_details` give them the same form.
"""
from __future__ import annotations

import contextlib
import logging
import re
import time
from typing import Iterator, Optional

from .errors import SeedError

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


def _append(log_path: str, text: str) -> None:
    try:
        with open(log_path, "a") as f:
            f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {text.rstrip()}\n")
    except OSError:  # the message still reaches the user; only the details are missing
        pass


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
