"""Safe, atomic checkpoint files."""
from __future__ import annotations

from argparse import Namespace  # the type DINO's checkpoints store their arguments as
import contextlib
import hashlib
import os
import pickle
import pickletools
import tempfile
import warnings
import zipfile
from typing import Any, Callable, Mapping

import torch

from .errors import CheckpointError

try:  # POSIX advisory locks keep concurrent writers apart; absent on Windows
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


# Containers that wrap a state dict in common checkpoints (ours keep the student under "student").
STATE_DICT_CONTAINERS = ("student", "state_dict", "model", "model_state", "backbone")


def unwrap_state_dict(ckpt) -> tuple[Mapping, str | None]:
    """The state dict inside a checkpoint and the container key it came from (None: the checkpoint
    is the state dict itself)."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"expected a dict of tensors, got {type(ckpt).__name__}")
    for key in STATE_DICT_CONTAINERS:
        if isinstance(ckpt.get(key), Mapping):
            return ckpt[key], key
    return ckpt, None


def key_mismatch_report(expected: dict, state: dict, ignore_prefixes=(), max_shown: int = 6) -> list[str]:
    """What keeps `state` from loading into a module whose state dict is `expected`: missing and
    unexpected keys, shape mismatches (file vs model). Empty when it fits exactly."""
    def show(items):
        items = sorted(items)
        more = f" (+{len(items) - max_shown} more)" if len(items) > max_shown else ""
        return ", ".join(items[:max_shown]) + more
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not k.startswith(tuple(ignore_prefixes))]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
             for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    report = []
    if missing:
        report.append(f"missing keys: {show(missing)}")
    if unexpected:
        report.append(f"unexpected keys: {show(unexpected)}")
    if wrong:
        report.append(f"shape mismatch (file vs model): {show(wrong)}")
    return report


def require_finite(obj: Any, source: str, prefix: str = "") -> None:
    """Refuse a checkpoint with a NaN or inf in any floating-point tensor or array (weights, BatchNorm
    statistics, optimizer state), naming the first one: it is damaged or from a diverged run, and
    training or evaluating from it would only spread the NaN."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            require_finite(v, source, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            require_finite(v, source, f"{prefix}[{i}]")
    elif isinstance(obj, torch.Tensor) or type(obj).__module__ == "numpy":
        t = torch.as_tensor(obj) if not isinstance(obj, torch.Tensor) else obj
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{source}: tensor {prefix or '(top level)'} holds {bad} non-finite value(s) (NaN "
                                  f"or inf) of {t.numel()}; the checkpoint is damaged or comes from a diverged run: "
                                  "use an earlier checkpoint")


def load_untrusted(path: str, map_location: str | torch.device = "cpu") -> Any:
    """Load a user-supplied checkpoint without executing code: `weights_only=True` accepts only
    tensors and plain containers; anything else is refused with an explanation, and so is a
    non-finite value in any tensor (`require_finite`)."""
    obj = _load_weights_only(path, map_location)
    require_finite(obj, path)
    return obj


def require_checkpoint_file(path: str) -> None:
    """A checkpoint argument must name a file: a folder (a run's OUTPUT_DIR, say) is refused with
    the checkpoints inside it, and a missing path as not found."""
    if os.path.isdir(path):
        inside = sorted(n for n in os.listdir(path) if n.endswith((".pth", ".pkl", ".pt", ".pth.tar")))
        hint = f"; it holds {', '.join(inside[:5])}" if inside else "; it holds no .pth / .pkl file"
        raise CheckpointError(f"{path} is a folder, not a checkpoint file: give the file itself{hint}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")


def _load_weights_only(path: str, map_location) -> Any:
    require_checkpoint_file(path)
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols before refusing non-torch pickles; the refusal is enough.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # Many self-supervised checkpoints (DINO's full ones among them) keep their command line as
            # an argparse.Namespace: plain attributes, nothing executed, so it is allowed too.
            with torch.serialization.safe_globals([Namespace]):
                return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line] or _pickled_globals(path)
        if not unsafe:  # not a pickle of objects at all: garbage or a torn file
            raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a PyTorch file?)") from None
        raise CheckpointError(
            f"refusing to load {path}: it contains objects other than tensors and plain containers "
            f"(loading it could execute code). If it is a Detectron2 .pkl, it is an output of "
            f"tools/convert_to_d2.py, not an input. Details: {unsafe[0]}") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError, ImportError,
            AttributeError, UnicodeDecodeError, zipfile.BadZipFile) as e:  # what unpickling garbage can raise
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a PyTorch file?): "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _pickled_globals(path: str) -> list[str]:
    """The globals a plain pickle file would import, read without executing it (torch's refusal
    does not always name them, e.g. for protocol-4 pickles)."""
    found, strings = [], []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                    strings.append(str(arg))
                elif op.name == "GLOBAL":
                    found.append(f"GLOBAL {str(arg).replace(' ', '.')}")
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"GLOBAL {strings[-2]}.{strings[-1]}")
    except Exception:  # torn or not a pickle: report what was seen before the damage
        pass
    return found


def state_dict_checksum(model: torch.nn.Module) -> str:
    """sha256 over names, dtypes, shapes and values, so equal weights give equal keys wherever stored."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # Reinterpret as bytes: numpy lacks bfloat16, and this also covers integer buffers.
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_save(obj: Any, path: str) -> None:
    """torch.save `obj` to `path` atomically (see `atomic_write`)."""
    atomic_write(path, "wb", lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str) -> None:
    atomic_write(path, "w", lambda f: f.write(text))


def atomic_write(path: str, mode: str, write: Callable[[Any], Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash at any point
    leaves either the previous file or the new one, never a partial file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        # mkstemp creates the file 0600; give it the mode open() would have (0666 minus the umask).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str):
    """Hold an exclusive lock on a folder (created if needed) while other processes that take the
    same lock wait: a file that is replaced, or not yet written, cannot carry the lock itself."""
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
