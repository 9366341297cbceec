"""tools/train_net.py for the torchvision engine's multi-process tests, with an optional fault:

  KILL_RANK_AT=rank:iteration   that process SIGKILLs itself just before that training iteration
  RAISE_RANK_AT=rank:iteration  that process raises a KeyError (a bug, not a SeedError) there

The patch is made at import, so the processes `--num-gpus N` spawns (which import this script as
their main module) carry it too.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the checkout
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: conftest

from seed_det.engines.tv import trainer as tv_trainer  # noqa: E402

if os.environ.get("KILL_RANK_AT"):
    kill_rank, kill_at = (int(x) for x in os.environ["KILL_RANK_AT"].split(":"))
    step = tv_trainer.Trainer._step

    def faulty_step(self, images, targets, it):
        if self.rank == kill_rank and it == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no goodbye to the other processes
        return step(self, images, targets, it)
    tv_trainer.Trainer._step = faulty_step

if os.environ.get("RAISE_RANK_AT"):
    raise_rank, raise_at = (int(x) for x in os.environ["RAISE_RANK_AT"].split(":"))
    step_before = tv_trainer.Trainer._step

    def raising_step(self, images, targets, it):
        if self.rank == raise_rank and it == raise_at:
            {}["a key that is not there"]
        return step_before(self, images, targets, it)
    tv_trainer.Trainer._step = raising_step


def sync_bn_half_batches(ctx, x, out_dir):
    """Each process normalises its half of `x` with SyncBatchNorm2d and saves output, input
    gradient and running statistics (the test compares them with BatchNorm2d on all of x)."""
    import torch
    from seed_det.engines.tv.layers import SyncBatchNorm2d
    torch.manual_seed(0)
    bn = SyncBatchNorm2d(x.shape[1])
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    half = x.shape[0] // ctx.world_size
    mine = x[ctx.rank * half:(ctx.rank + 1) * half].clone().requires_grad_(True)
    y = bn(mine)
    (y * torch.arange(y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    torch.save({"y": y.detach(), "grad": mine.grad, "mean": bn.running_mean, "var": bn.running_var},
               os.path.join(out_dir, f"rank{ctx.rank}.pth"))



# What each rank's samples skipped at each step ({record index: error}); step 3 of rank 0 adds a third
# image to two, more than 0.2 of 10.
SKIPS_BY_STEP = [({1: "image 1.jpg cannot be read"}, {}),
                 ({1: "image 1.jpg cannot be read"}, {1: "image 1.jpg cannot be read"}),
                 ({}, {2: "image 2.jpg cannot be read"}),
                 ({}, {}),
                 ({3: "image 3.jpg cannot be read"}, {})]


def count_skipped_steps(ctx, out_dir):
    """Each rank feeds its own samples' skips of SKIPS_BY_STEP to count_skipped and saves, per step,
    the images its counter holds, then the error that stopped it."""
    import torch
    from seed_core.errors import TooManyBadImagesError
    from seed_core.images import SkippedImages
    counter = SkippedImages(10, 0.2, "training set 'tr'", "DATALOADER.MAX_BAD_FRACTION")
    held, stopped = [], None
    for step in SKIPS_BY_STEP:
        try:
            tv_trainer.count_skipped(counter, [{"skipped": step[ctx.rank]}], torch.device("cpu"), ctx.is_main)
        except TooManyBadImagesError as e:
            stopped = (len(held), str(e))
            break
        held.append(sorted(counter.errors))
    torch.save({"held": held, "stopped": stopped}, os.path.join(out_dir, f"skips{ctx.rank}.pth"))


if __name__ == "__main__":
    from conftest import load_script
    sys.exit(load_script(os.path.join("tools", "train_net.py")).main())
