"""Output folders of runs: checked before any work starts, a run already in them never overwritten
without being asked, never written by two runs at once, and the run's log file (OUTPUT_DIR/log.txt).

The policy every tool and both detection engines follow is `claim_run_dir`:

    with claim_run_dir(out, markers=(CHECKPOINT_FILE,), resume=args.resume, overwrite=args.overwrite):
        ...  # the run; no other run can write into `out` meanwhile

- a path that is a file, or a folder that cannot be written, is refused (`ConfigError`);
- a folder holding a run (one of `markers`, not empty) is refused unless `resume` (continue it) or
  `overwrite` (its files are moved to `previous-<time>/`, nothing is deleted) - `RunFolderError`;
- a folder another run is writing is refused whatever the flags: the lock file `<folder>/.lock`
  (created atomically) names its owner's pid, host and start time. A lock left by a process that
  died on this host is taken over with a warning; one of another host is never guessed at - the
  message says how to remove it once that run is known to be over.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from typing import Iterable, Iterator, Optional, Sequence

from .constants import LOG_FILE
from .errors import ConfigError, RunFolderError

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _read_lock(path: str) -> Optional[dict]:
    """The owner recorded in a lock file; {} for a file that cannot be parsed (being written, or
    damaged); None when it is gone."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
        return owner if isinstance(owner, dict) else {}
    except ValueError:
        return {}


def _describe(owner: dict) -> str:
    return (f"process {owner.get('pid', '?')} on {owner.get('host', '?')}, started "
            f"{owner.get('started', '?')}")


# Locks this process holds (lock path -> pid): a step of this process that claims the folder its
# caller already claimed (a cached stage running a distillation into it) shares the caller's lock.
# The pid keeps a forked child from taking its parent's locks for its own.
_HELD: dict = {}


class RunLock:
    """The exclusive lock of one run folder: `<folder>/.lock`, holding the owner's pid, host and
    start time, created with O_CREAT|O_EXCL so that of two runs started at once exactly one gets it.
    `acquire` raises RunFolderError when another live run holds it; `release` removes it."""

    def __init__(self, folder: str, what: str = "OUTPUT_DIR", name: str = LOCK_FILE, label: str = ""):
        self.folder = folder
        self.label = label or f"{what} {folder}"  # what the messages call it
        self.path = os.path.join(folder, name)
        self.held = False
        self.nested = False

    def acquire(self) -> "RunLock":
        key = os.path.realpath(self.path)
        if _HELD.get(key) == os.getpid():  # already ours: this process's caller claimed the folder
            self.nested = True
            return self
        host = socket.gethostname()
        owner = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_stale(host)
                continue
            except OSError as e:
                raise ConfigError(f"{self.label}: cannot create its lock file {self.path} "
                                  f"({e.strerror or e}); choose another folder or fix its permissions") from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(owner) + "\n")
            self.held = True
            _HELD[key] = os.getpid()
            return self
        raise RunFolderError(f"{self.label}: could not take its lock {self.path}; another run keeps "
                             "starting there. Wait for it, or choose another folder.")

    def _take_over_stale(self, host: str) -> None:
        """Remove the lock at self.path if its owner died on this host; otherwise refuse."""
        owner = _read_lock(self.path)
        if owner is None:
            return  # released meanwhile: try again
        if not owner:  # being written by a run that just took it, or damaged
            time.sleep(0.2)
            owner = _read_lock(self.path)
            if owner is None:
                return
        pid, owner_host = owner.get("pid"), owner.get("host")
        if owner_host and owner_host != host:
            raise RunFolderError(
                f"{self.label} is in use by another run ({_describe(owner)}): its lock file "
                f"{self.path} is from another machine, so whether that run is alive cannot be checked from "
                f"here. Wait for it or choose another folder; if that run is over, delete {self.path}.")
        if isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid):
            raise RunFolderError(
                f"{self.label} is in use by another run ({_describe(owner)}); two runs cannot "
                f"write there at once. Wait for it to finish, or choose another folder.")
        if not isinstance(pid, int):
            raise RunFolderError(f"{self.label}: its lock file {self.path} is not readable as a lock; "
                                 f"if no run is writing there, delete {self.path}.")
        # Stale: its owner is dead. Move it away under a name of our own, then check that what we
        # moved is that stale lock (another run may have replaced it in between; give that one back).
        aside = f"{self.path}.stale-{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read_lock(aside) == owner:
            os.unlink(aside)
            logger.warning("%s: removed the lock left by %s, which is no longer running",
                           self.label, _describe(owner))
            return
        with contextlib.suppress(OSError):
            os.link(aside, self.path)  # fails if yet another run holds the lock now: fine, it is held
        os.unlink(aside)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        _HELD.pop(os.path.realpath(self.path), None)
        owner = _read_lock(self.path)
        if owner and owner.get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def __enter__(self) -> "RunLock":
        return self.acquire() if not (self.held or self.nested) else self

    def __exit__(self, *exc) -> None:
        self.release()


class _NoLock:
    """What a process other than the main one of a multi-process run holds: nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def release(self) -> None:
        pass


def claim_run_dir(folder: str, markers: Sequence[str] = (), resume: bool = False, overwrite: bool = False,
                  outputs: Optional[Iterable[str]] = None, what: str = "OUTPUT_DIR",
                  resume_flag: str = "--resume", overwrite_flag: str = "--overwrite"):
    """Claim `folder` for a run, before any work: a writable folder (created if missing), locked
    against other runs, and not holding a run (`markers`: files that, not empty, mean one was
    started there) unless `resume` or `overwrite`. With `overwrite` the run's `outputs` (default
    `markers`; files or folders) are moved to `folder/previous-<time>/`. Returns the RunLock, to be
    released when the run ends (a context manager); every refusal is a ConfigError (RunFolderError)
    naming the folder and what to do."""
    if resume and overwrite:
        raise ConfigError(f"{resume_flag} continues the run in {what} and {overwrite_flag} moves it aside: "
                          "choose one")
    ensure_output_dir(folder, what)
    lock = RunLock(folder, what).acquire()
    try:
        found = existing_run(folder, markers)
        if found and not resume:
            if not overwrite:
                raise RunFolderError(
                    f"{what} {folder} already holds a run ({', '.join(found)}). Continue it with {resume_flag}, "
                    f"or start over with {overwrite_flag} (its files are moved to "
                    f"{os.path.join(folder, 'previous-<time>')}, nothing is deleted), or choose another {what}.")
            target = move_aside(folder, list(outputs if outputs is not None else markers))
            logger.warning("%s: the previous run's files in %s were moved to %s", overwrite_flag, folder, target)
    except BaseException:
        lock.release()
        raise
    return lock


def claim_if_main(is_main: bool, *args, **kwargs):
    """`claim_run_dir` on the main process of a multi-process run; the others hold nothing (they
    never check or write the folder themselves)."""
    return claim_run_dir(*args, **kwargs) if is_main else _NoLock()


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


def claim_output_file(path: str, overwrite: bool = False, what: str = "output",
                      overwrite_flag: str = "--overwrite") -> RunLock:
    """`claim_run_dir` for a tool whose output is one file (a metrics JSON, a converted checkpoint):
    refused if it is a folder, if its folder cannot be written, or if it exists (unless `overwrite`:
    then it is moved to `previous-<time>/` beside it); locked by `.<name>.lock` beside it meanwhile."""
    if os.path.isdir(path):
        raise ConfigError(f"{what} {path} is a folder: give a file name")
    folder, name = os.path.split(os.path.abspath(path))
    ensure_output_dir(folder, f"the folder of {what} {path}")
    lock = RunLock(folder, name=f".{name}.lock", label=f"{what} {path}").acquire()
    try:
        if os.path.lexists(path):
            if not overwrite:
                raise RunFolderError(f"{what} {path} exists already; pass {overwrite_flag} to replace it (the old "
                                     f"file is moved to {os.path.join(folder, 'previous-<time>')}), or choose "
                                     "another name")
            target = move_aside(folder, [name])
            logger.warning("%s: the previous %s was moved to %s", overwrite_flag, path, target)
    except BaseException:
        lock.release()
        raise
    return lock
