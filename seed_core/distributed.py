"""Multi-process training helpers: NCCL on GPU, gloo on CPU, a timeout so a dead rank ends the run.

Processes come from torchrun (the environment describes the group) or from `launch`, which starts
them itself with Detectron2's meaning of --num-gpus / --num-machines / --machine-rank / --dist-url.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .errors import PeerLostError, SeedError

logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (or any launcher that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launched_rank() -> int:
    """This process's rank as its launcher set it (RANK: torchrun, `launch`); 0 for a process started
    alone. Known before the process group is joined and after it is left (unlike `world_info`)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """The process that reports a run: rank 0, or the only one."""
    return launched_rank() == 0


def init_distributed(timeout_s: float = 1800, device: str = "auto", init_method: Optional[str] = None) -> DistContext:
    """Join the process group the environment describes (RANK, WORLD_SIZE, LOCAL_RANK; torchrun
    sets them, `launch` too), or run alone. `init_method` defaults to env:// (MASTER_ADDR/PORT)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = launched_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        # Without async error handling a NCCL collective waiting on a dead rank blocks forever.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method=init_method,
                                world_size=world_size, rank=rank, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank, world_size, local_rank, dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_info() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _multi_process() -> bool:
    return world_info()[1] > 1


@torch.no_grad()
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank in rank order (no gradient)."""
    if not _multi_process():
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if _multi_process():
        dist.all_reduce(x)
    return x


def gather_to_main(obj: Any) -> Optional[List[Any]]:
    """Every rank's picklable `obj`, in rank order, on rank 0; None on the other ranks."""
    rank, world = world_info()
    if world == 1:
        return [obj]
    out = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather_objects(obj: Any) -> List[Any]:
    """Every rank's picklable `obj`, in rank order, on every rank."""
    if not _multi_process():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's picklable `obj` on every rank."""
    if not _multi_process():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def decided_by_main(is_main: bool, decide: Callable[[], Any]) -> Any:
    """Run `decide` (a check before any work, e.g. claiming the output folder) on the main process
    only; a SeedError it raises is raised on every process, so all stop with the main one's reason.
    Returns its value on the main process, None on the others."""
    value, refused = None, None
    if is_main:
        try:
            value = decide()
        except SeedError as e:
            refused = e
    refused = broadcast_from_main(refused)
    if refused is not None:
        raise refused
    return value


@torch.no_grad()
def broadcast_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics drift apart under DDP: each rank
    updates them from its own images after the forward-time broadcast)."""
    if _multi_process():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def is_communication_error(e: BaseException) -> bool:
    """An error from a collective whose peer crashed, hung or closed its connection."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e).lower()
    return any(s in text for s in ("connection closed", "connection reset", "timed out", "timeout",
                                   "gloo", "nccl", "broken pipe", "peer"))


@contextlib.contextmanager
def stop_if_peer_lost(where: str, what_now: str) -> Iterator[None]:
    """Turn a collective failing because another process died or hung into PeerLostError, whose
    message says `where` it happened (e.g. "at iteration 12") and `what_now` (e.g. how to resume)."""
    try:
        yield
    except RuntimeError as e:
        if _multi_process() and is_communication_error(e):
            raise PeerLostError(
                f"rank {dist.get_rank()} lost contact with the other processes {where} (another rank crashed "
                f"or hung; see its log). {what_now} Detail: {str(e).splitlines()[0][:300]}") from e
        raise


# ------------------------------------------------------------------------------------------ launch
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _spawned(local_rank: int, fn: Callable, args: Sequence, nprocs: int, machine_rank: int, world_size: int,
             dist_url: str, timeout_s: float, device: str, errors, log_setup: tuple) -> None:
    """Entry point of each process `launch` starts: join the group, run fn(ctx, *args)."""
    rank = machine_rank * nprocs + local_rank
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(nprocs))
    level, fmt = log_setup
    logging.basicConfig(level=level, format=fmt)
    if device == "cpu":
        # N processes on one CPU share the threads one process would use (all cores, or
        # OMP_NUM_THREADS) instead of each taking all of them.
        torch.set_num_threads(max(1, torch.get_num_threads() // nprocs))
    try:
        ctx = init_distributed(timeout_s, device, init_method=dist_url)
        try:
            fn(ctx, *args)
        finally:
            shutdown()
    except SeedError as e:  # the user's problem: the parent re-raises it with its message
        errors.put((rank, e))
        sys.exit(REPORTED_EXIT_CODE)


REPORTED_EXIT_CODE = 2  # a process that reported its SeedError to the launcher exits with this


def _failure(first: BaseException, processes: Sequence, errors, first_rank: int) -> BaseException:
    """The error that explains why the launched processes stopped: a SeedError a process reported
    (the cause, e.g. a bad config), else the process that died without reporting (killed, crashed),
    else a PeerLostError a survivor reported, else the launcher's own exception."""
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    reported.sort(key=lambda r: r[0])
    causes = [err for _, err in reported if not isinstance(err, PeerLostError)]
    if causes:
        return causes[0]
    reporters = {rank for rank, _ in reported}
    # Processes the launcher stopped after the first failure end by SIGTERM; the one that failed
    # first is named by the launcher's exception.
    dead = [i for i, p in enumerate(processes) if first_rank + i not in reporters
            and p.exitcode not in (0, None, REPORTED_EXIT_CODE, -signal.SIGTERM)]
    first_index = getattr(first, "error_index", None)
    if first_index is not None and first_rank + first_index not in reporters:
        dead.insert(0, first_index)
    if dead:
        proc = processes[dead[0]]
        code = proc.exitcode
        how = (f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exited with code {code}")
        return PeerLostError(
            f"the process of rank {first_rank + dead[0]} (pid {proc.pid}) {how}; the other processes were "
            "stopped. Restart with --resume to continue from the last checkpoint.")
    if reported:
        return reported[0][1]
    return first


def requested_world_size(nprocs: int, num_machines: int) -> int:
    """The number of processes of the job: torchrun's WORLD_SIZE, else --num-gpus x --num-machines.
    Under torchrun, --num-gpus / --num-machines must be left at 1 or agree with it."""
    if not launched_by_torchrun():
        return nprocs * num_machines
    world = int(os.environ["WORLD_SIZE"])
    if nprocs * num_machines not in (1, world):
        raise SeedError(f"started by torchrun with WORLD_SIZE={world}, but --num-gpus {nprocs} x --num-machines "
                        f"{num_machines} asks for {nprocs * num_machines} processes: leave them out (torchrun "
                        "starts the processes) or make them agree")
    return world


def launch(fn: Callable, args: Sequence = (), nprocs: int = 1, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str = "auto", timeout_s: float = 1800, device: str = "cpu") -> Any:
    """Run fn(ctx, *args) in `nprocs` processes on this machine, part of num_machines x nprocs
    processes that join one group at `dist_url` (tcp://host:port of machine 0; "auto": a free
    local port, one machine only). Under torchrun, or with one process in all, fn runs in this
    process and its value is returned; spawned processes return nothing here.

    If a process fails, the others are stopped and the failure is raised here: the SeedError the
    process raised, else PeerLostError naming the process that died.
    """
    world_size = requested_world_size(nprocs, num_machines)
    if nprocs < 1 or num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise SeedError(f"--num-gpus {nprocs}, --num-machines {num_machines}, --machine-rank {machine_rank}: "
                        "need at least one process and machine, and 0 <= machine rank < number of machines")
    if launched_by_torchrun() or world_size == 1:  # the processes exist already (or one is enough)
        ctx = init_distributed(timeout_s, device)
        try:
            return fn(ctx, *args)
        finally:
            shutdown()
    if device == "cuda" and nprocs > torch.cuda.device_count():
        raise SeedError(f"--num-gpus {nprocs} but this machine has {torch.cuda.device_count()} CUDA devices; "
                        "start one process per GPU")
    if dist_url == "auto":
        if num_machines > 1:
            raise SeedError("--dist-url auto only works on one machine: pass --dist-url tcp://HOST:PORT with "
                            "the address of machine 0 on every machine")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    root = logging.getLogger()
    fmt = next((getattr(h.formatter, "_fmt", None) for h in root.handlers if h.formatter), None)
    errors = mp.get_context("spawn").SimpleQueue()
    logger.info("starting %d processes (ranks %d..%d of %d) at %s", nprocs, machine_rank * nprocs,
                (machine_rank + 1) * nprocs - 1, world_size, dist_url)
    context = mp.start_processes(_spawned, nprocs=nprocs, start_method="spawn", join=False,
                                 args=(fn, tuple(args), nprocs, machine_rank, world_size, dist_url, timeout_s,
                                       device, errors, (root.level, fmt)))
    try:
        while not context.join():
            pass
    except ProcessException as e:
        raise _failure(e, context.processes, errors, machine_rank * nprocs) from None
    return None
