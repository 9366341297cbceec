"""A clean stop on SIGTERM / SIGINT (preemption, scancel, Ctrl-C): the handler only records the
signal; the training loop stops at a step every process agrees on, writes its checkpoint, and
raises Interrupted (the tools exit with 128 + the signal's number)."""
from __future__ import annotations

import logging
import signal

logger = logging.getLogger(__name__)


class Interrupted(Exception):
    """Raised after a SIGTERM/SIGINT once a checkpoint is safely written."""

    def __init__(self, signum: int, iteration: int, path: str):
        super().__init__(f"stopped by signal {signal.Signals(signum).name} after iteration {iteration}; "
                         f"checkpoint written to {path}; continue with --resume")
        self.signum, self.iteration, self.path = signum, iteration, path


class StopSignals:
    """While active (a context manager), the first SIGTERM / SIGINT is recorded in `signum`; a
    second Ctrl-C stops at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _record(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signum = signum
        logger.warning("received %s: finishing this iteration, writing a checkpoint, then stopping",
                       signal.Signals(signum).name)

    def __enter__(self) -> "StopSignals":
        self._previous = {s: signal.signal(s, self._record) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
