"""Run pipeline steps side by side in worker processes, each as soon as the steps it needs are done.

A 2-core laptop runs two one-thread trainings of small images almost twice as fast as one
two-thread training: small convolutions leave a second thread waiting. Each step runs in a spawned
worker process (a fresh torch, no state shared with the caller); its console output goes to a log
file, so two progress bars never interleave. A step starts when every step named in its `after`
has finished; among the steps that could start, the earlier in the list goes first. With
`processes` 1 the steps run in this process, in list order, with their output on the console.

A failed step is reported as one line: its name, the message it would have printed itself and its
log, which holds the traceback (`StepFailed`, a SeedError, so a tool prints it as `error: ...`).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, Callable, Dict, List, Tuple

from seed_core.errors import SeedError
from seed_core.worker_errors import one_line, original_message, with_details


@dataclass
class Step:
    name: str                     # shown in messages, names the log file
    fn: Callable[..., Any]        # a module-level function (it is pickled into the worker)
    args: tuple = ()
    kwargs: Dict[str, Any] = field(default_factory=dict)
    after: Tuple[str, ...] = ()   # names of earlier steps that must finish first


class StepFailed(SeedError, RuntimeError):
    """One or more steps failed: one line naming each, its own message and its log."""


_PARENT = {"pid": None, "busy": False}


def _die_with_parent(parent_pid: int) -> None:
    """A worker whose scheduler is gone must not train on into the same folders as the next run.
    On Linux the kernel sends it SIGTERM when its parent dies (a distillation then checkpoints and
    stops); a watchdog ends a worker that is idle once its parent is gone (the signal can arrive
    before the new parent is visible, so a step that stops at once may still see the old one)."""
    import threading
    import time
    _PARENT["pid"] = parent_pid
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG

    def watch():
        while True:
            if os.getppid() != parent_pid and not _PARENT["busy"]:
                os._exit(1)  # nobody will collect a result or send more work
            time.sleep(0.5)
    threading.Thread(target=watch, name="exit-with-scheduler", daemon=True).start()


def _in_worker(step: Step, log_path: str, threads: int):
    import torch
    torch.set_num_threads(threads)
    _PARENT["busy"] = True
    try:
        with open(log_path, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                return step.fn(*step.args, **step.kwargs)
            except BaseException:
                traceback.print_exc(file=log)  # the details; the scheduler reports one line
                raise
    finally:
        _PARENT["busy"] = False


def _check_order(steps: List[Step]) -> None:
    seen: set = set()
    for s in steps:
        if s.name in seen:
            raise ValueError(f"two steps are named {s.name!r}")
        late = [a for a in s.after if a not in seen]
        if late:
            raise ValueError(f"step {s.name!r} runs after {late}, which must be earlier steps in the list")
        seen.add(s.name)


def run_steps(steps: List[Step], processes: int, log_dir: str, threads: int = 1,
              announce: Callable[[str], None] = lambda msg: None,
              on_done: Callable[[str, Any], None] = lambda name, result: None) -> Dict[str, Any]:
    """{step name: its return value}. With processes > 1 each step's output goes to
    `<log_dir>/<name>.log`; failed steps (and the steps that needed them) are reported with their
    logs after every step that could run has finished. `on_done(name, result)` is called in this
    process as each step finishes (a long benchmark writes its report as it grows)."""
    _check_order(steps)
    if processes <= 1 or len(steps) <= 1:
        results: Dict[str, Any] = {}
        for s in steps:
            results[s.name] = s.fn(*s.args, **s.kwargs)
            on_done(s.name, results[s.name])
        return results
    os.makedirs(log_dir, exist_ok=True)
    results: Dict[str, Any] = {}
    failed: Dict[str, str] = {}
    logs = {s.name: os.path.join(log_dir, f"{s.name}.log") for s in steps}
    waiting = list(steps)
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn"), initializer=_die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        running: Dict[Any, str] = {}

        def start_ready():
            for s in list(waiting):
                if len(running) >= processes:
                    return
                lost = [a for a in s.after if a in failed]
                if lost:
                    waiting.remove(s)
                    failed[s.name] = f"not run: it needs {', '.join(lost)}"
                elif all(a in results for a in s.after):
                    waiting.remove(s)
                    running[pool.submit(_in_worker, s, logs[s.name], threads)] = s.name

        start_ready()
        announce(f"{len(steps)} steps, up to {processes} at a time; their output: {log_dir}/<step>.log")
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                name = running.pop(fut)
                try:
                    results[name] = fut.result()
                    announce(f"[{name}] done ({len(results)}/{len(steps)})")
                    on_done(name, results[name])
                except Exception as e:  # noqa: BLE001 - reported below with its log
                    failed[name] = with_details(_failure_message(e), logs[name])
            start_ready()
    if len(failed) == 1:
        (name, why), = failed.items()
        raise StepFailed(f"step {name} failed: {why}")
    if failed:
        raise StepFailed(f"{len(failed)} steps failed: " + "; ".join(f"{n}: {why}" for n, why in failed.items()))
    return results


def _failure_message(e: BaseException) -> str:
    """What the step would have printed itself: a SeedError's message (unwrapped from a DataLoader
    worker's traceback text), or the type and first line of any other error."""
    message = original_message(e) or str(e)
    if isinstance(e, SeedError):
        return one_line(message)
    return f"{type(e).__name__}: {(message.strip().splitlines() or [''])[0]}"


def default_processes() -> int:
    """One process per core the caller may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)

