"""Run independent pipeline steps side by side in worker processes.

A 2-core laptop runs two one-thread trainings of small images almost twice as fast as one
two-thread training: small convolutions leave a second thread waiting. Each step runs in its own
spawned process (a fresh torch, no state shared with the caller); its console output goes to a log
file, so two progress bars never interleave. With `processes` 1 the steps run in this process,
one after the other, with their output on the console.
"""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, Callable, Dict, List


@dataclass
class Step:
    name: str                     # shown in messages, names the log file
    fn: Callable[..., Any]        # a module-level function (it is pickled into the worker)
    args: tuple = ()
    kwargs: Dict[str, Any] = field(default_factory=dict)


class StepFailed(RuntimeError):
    pass


def _in_worker(step: Step, log_path: str, threads: int):
    import torch
    torch.set_num_threads(threads)
    with open(log_path, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        return step.fn(*step.args, **step.kwargs)


def run_steps(steps: List[Step], processes: int, log_dir: str, threads: int = 1,
              announce: Callable[[str], None] = lambda msg: None) -> Dict[str, Any]:
    """{step name: its return value}. With processes > 1 each step's output goes to
    `<log_dir>/<name>.log`; a failed step is reported with its log after the others have finished."""
    if processes <= 1 or len(steps) <= 1:
        return {s.name: s.fn(*s.args, **s.kwargs) for s in steps}
    os.makedirs(log_dir, exist_ok=True)
    results: Dict[str, Any] = {}
    failed: List[str] = []
    logs = {s.name: os.path.join(log_dir, f"{s.name}.log") for s in steps}
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn")) as pool:
        pending = {}
        for s in steps:
            pending[pool.submit(_in_worker, s, logs[s.name], threads)] = s.name
        announce(f"{len(steps)} steps, {processes} at a time; their output: {log_dir}/<step>.log")
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                name = pending.pop(fut)
                try:
                    results[name] = fut.result()
                    announce(f"[{name}] done ({len(results)}/{len(steps)})")
                except Exception as e:  # noqa: BLE001 - reported below with its log
                    failed.append(f"{name}: {type(e).__name__}: {e} (log: {logs[name]})")
    if failed:
        raise StepFailed("steps failed:\n  " + "\n  ".join(failed))
    return results


def default_processes() -> int:
    """One process per core the caller may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)

