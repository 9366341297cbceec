"""Training process for the multi-process and fault-injection tests. It trains like
tools/distill.py, then every rank saves its own student and queue for comparison.

Faults, from the environment:
  DIE=rank:iteration      that rank exits abruptly (os._exit) just before that iteration
  KILL_STEP=iteration     SIGKILL before that iteration
  KILL_WRITE=n            SIGKILL half-way through the n-th checkpoint write (1-based)
  SLOW=seconds            sleep this long in every iteration (to be signalled mid-run)
"""
import os
import signal
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the checkout

import seed_core.checkpoint_io as checkpoint_io  # noqa: E402
from seed_core.config import load_cfg  # noqa: E402
from seed_core.distributed import init_distributed, shutdown  # noqa: E402
from seed_core.trainer import Interrupted, Trainer, claim_output_dir  # noqa: E402


def inject_step_faults(trainer, rank):
    die_rank, die_at = (int(x) for x in os.environ.get("DIE", "-1:-1").split(":"))
    kill_at = int(os.environ.get("KILL_STEP", "-1"))
    slow = float(os.environ.get("SLOW", "0"))
    step = trainer._step

    def faulty_step(images, it, new_bad):
        if rank == die_rank and it == die_at:
            os._exit(3)  # a crash: no cleanup, no goodbye to the other ranks
        if it == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if slow:
            time.sleep(slow)
        return step(images, it, new_bad)
    trainer._step = faulty_step


def inject_write_fault():
    kill_write = int(os.environ.get("KILL_WRITE", "-1"))
    real_save, count = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        count[0] += 1
        if count[0] == kill_write:
            import io
            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)
    checkpoint_io.torch.save = save


def main():
    resume = "--resume" in sys.argv
    cfg = load_cfg(None, [a for a in sys.argv[1:] if a != "--resume"])
    ctx = init_distributed(cfg.TRAIN.DIST_TIMEOUT)
    claim_output_dir(cfg.OUTPUT_DIR, resume, False, ctx.is_main)
    trainer = Trainer(cfg, ctx)
    inject_step_faults(trainer, ctx.rank)
    inject_write_fault()
    try:
        trainer.run(resume=resume)
    except Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)
    saved = {"student": trainer.student.state_dict(), "queue": trainer.queue.state_dict()}
    if trainer.small_queue is not None:
        saved["small_queue"] = trainer.small_queue.state_dict()
    torch.save(saved, os.path.join(cfg.OUTPUT_DIR, f"rank{ctx.rank}.pth"))
    shutdown()


if __name__ == "__main__":
    main()
