"""Worker for the multi-process tests: trains like tools/distill.py, then every rank saves its own
student and queue so the test can compare ranks. Optionally one rank dies mid-run."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seed_core.config import load_cfg  # noqa: E402
from seed_core.distributed import init_distributed, shutdown  # noqa: E402
from seed_core.trainer import Trainer  # noqa: E402


def main():
    cfg = load_cfg(None, sys.argv[1:])
    ctx = init_distributed(cfg.TRAIN.DIST_TIMEOUT)
    trainer = Trainer(cfg, ctx)
    die_rank, die_at = (int(x) for x in os.environ.get("DIE", "-1:-1").split(":"))
    if ctx.rank == die_rank:
        step = trainer._step

        def dying_step(images, it, new_bad):
            if it == die_at:
                os._exit(3)  # a crash: no cleanup, no goodbye to the other ranks
            return step(images, it, new_bad)
        trainer._step = dying_step
    trainer.run()
    torch.save({"student": trainer.student.state_dict(), "queue": trainer.queue.state_dict()},
               os.path.join(cfg.OUTPUT_DIR, f"rank{ctx.rank}.pth"))
    shutdown()


if __name__ == "__main__":
    main()
