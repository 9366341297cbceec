"""The torchvision engine in several processes (gloo on the CPU): tools/train_net.py --num-gpus 2
trains and evaluates, sharded evaluation is exact, the sampler splits every global batch, a killed
process ends the job with a clear error, and a global batch that does not split is refused."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from seed_core.errors import ConfigError
from seed_det.data.torch_dataset import InfiniteBatchSampler
from seed_det.engines import RunOptions
from seed_det.engines.tv.engine import run
from seed_det.engines.tv.evaluate import shard
from test_tv_engine import make_cfg

WORKER = os.path.join(ROOT, "tests", "seed_det", "tv_ddp_worker.py")


def _train_net(cfg_path, opts, nprocs=2, env=None, timeout=300):
    cmd = [sys.executable, WORKER, "--config", cfg_path, "--engine", "torchvision", "--num-gpus", str(nprocs), *opts]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


def _opts(tmp_path, shapes_det, extra=()):
    from test_tv_engine import _datasets
    return ["OUTPUT_DIR", str(tmp_path / "out"), *_datasets(shapes_det, "voc"), *extra]


def _norm_opts(arch):
    # SyncBN in the backbone (and the FPN), as the transfer protocol asks
    return ["MODEL.RESNETS.NORM", "SyncBN"] + (["MODEL.FPN.NORM", "SyncBN"] if arch == "fpn" else [])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["fpn", "c4"])
def test_two_processes_train_and_sharded_evaluation_is_exact(tmp_path, shapes_det, arch):
    _, path = make_cfg(tmp_path, shapes_det, arch)
    opts = _opts(tmp_path, shapes_det, ["SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2"] + _norm_opts(arch))
    proc = _train_net(path, opts)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    record = json.loads((out / "metrics.json").read_text())
    assert record["engine"] == "torchvision"
    rows = (tmp_path / "results_detection.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # header + one row for the whole job, from the main process
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3]  # one log, from the main process
    assert "(1 per process x 2 processes)" in (out / "log.txt").read_text()
    assert sorted(p.name for p in out.glob("model_*.pth")) == ["model_0000002.pth", "model_final.pth"]

    # the same weights evaluated by one process give the same AP as the two processes' shards
    os.makedirs(tmp_path / "single")
    cfg, _ = make_cfg(tmp_path / "single", shapes_det, arch, opts=_norm_opts(arch) + ["MODEL.WEIGHTS", str(out / "model_final.pth")])
    single = run(cfg, RunOptions(config_file=path, eval_only=True, resume=False, opts=[]))
    assert set(single) == set(record["metrics"])
    for k, v in single.items():
        assert record["metrics"][k] == pytest.approx(v, abs=1e-9), k
    assert "metrics: AP=" in proc.stdout


@pytest.mark.slow
def test_two_processes_resume_continue(tmp_path, shapes_det):
    _, path = make_cfg(tmp_path, shapes_det, "c4")
    first = _train_net(path, _opts(tmp_path, shapes_det, ["SOLVER.MAX_ITER", "2"]))
    assert first.returncode == 0, first.stderr[-3000:]
    again = _train_net(path, ["--resume"] + _opts(tmp_path, shapes_det, ["SOLVER.MAX_ITER", "3"]))
    assert again.returncode == 0, again.stderr[-3000:]
    log = (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in log] == [1, 2, 3]  # continued, not restarted


@pytest.mark.slow
def test_a_killed_process_ends_the_job_with_a_clear_error(tmp_path, shapes_det):
    _, path = make_cfg(tmp_path, shapes_det, "c4")
    opts = _opts(tmp_path, shapes_det, ["SOLVER.MAX_ITER", "50", "DIST_TIMEOUT", "60"])
    proc = _train_net(path, opts, env={"KILL_RANK_AT": "1:2"}, timeout=240)  # the timeout is only a hang guard
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "the process of rank 1" in proc.stderr and "SIGKILL" in proc.stderr, proc.stderr[-3000:]
    assert "--resume" in proc.stderr
    assert not (tmp_path / "out" / "model_final.pth").exists()


@pytest.mark.slow
def test_under_torchrun_a_killed_peer_is_named(tmp_path, shapes_det):
    """Under torchrun the survivor's collective fails; it stops with PeerLostError, not a hang."""
    _, path = make_cfg(tmp_path, shapes_det, "c4")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = _opts(tmp_path, shapes_det, ["SOLVER.MAX_ITER", "50", "DIST_TIMEOUT", "60"])
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "KILL_RANK_AT": "1:2"}
        procs.append(subprocess.Popen([sys.executable, WORKER, "--config", path, "--engine", "torchvision", *opts],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    _, err0 = procs[0].communicate(timeout=240)
    procs[1].communicate(timeout=60)
    assert procs[1].returncode == -signal.SIGKILL
    assert procs[0].returncode == 2, err0[-3000:]
    assert "lost contact with the other processes at iteration 2" in err0, err0[-3000:]


@pytest.mark.slow
def test_an_unexpected_error_of_a_process_is_one_line_naming_its_rank_and_the_log(tmp_path, shapes_det):
    _, path = make_cfg(tmp_path, shapes_det, "c4")
    res = _train_net(path, _opts(tmp_path, shapes_det, ["SOLVER.MAX_ITER", "50", "DIST_TIMEOUT", "60"]),
                     env={"RAISE_RANK_AT": "1:1"})
    log = tmp_path / "out" / "log.txt"
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.strip().splitlines()[-1] == (f"error: the process of rank 1 failed: KeyError: "
                                                   f"'a key that is not there' (details: {log})")
    assert "Traceback" not in res.stderr
    assert "Traceback" in log.read_text() and "a key that is not there" in log.read_text()


def test_a_global_batch_that_does_not_split_is_refused(tmp_path, shapes_det):
    cfg, path = make_cfg(tmp_path, shapes_det, "c4", opts=["SOLVER.IMS_PER_BATCH", "3"])
    args = RunOptions(config_file=path, eval_only=False, resume=False, opts=[], num_gpus=2, num_machines=1,
                      machine_rank=0, dist_url="auto")
    with pytest.raises(ConfigError, match=r"SOLVER\.IMS_PER_BATCH = 3 .* 2 processes"):
        run(cfg, args)
    assert not (tmp_path / "out").exists()  # refused before any process or file


def _epochs(size, batch, world, batches, start=0, seed=3):
    """Per global batch, the images each rank receives."""
    iters = [iter(InfiniteBatchSampler(size, batch, seed, start_batch=start, rank=r, world_size=world))
             for r in range(world)]
    return [[next(it) for it in iters] for _ in range(batches)]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_sampler_gives_each_image_to_one_process_per_epoch(world):
    size, batch = 12, 4
    steps = _epochs(size, batch, world, batches=3 * size // batch)  # three epochs
    for epoch in range(3):
        seen = [i for step in steps[epoch * 3:(epoch + 1) * 3] for part in step for i in part]
        assert sorted(seen) == list(range(size))  # every image once, none twice, over all ranks
    assert all(len(part) == batch // world for step in steps for part in step)
    # the same global sequence at any world size
    one = [i for step in _epochs(size, batch, 1, 9) for part in step for i in part]
    assert [i for step in steps for part in step for i in part] == one


def test_sampler_resume_continues_the_sequence():
    whole = _epochs(10, 4, 2, batches=8)
    assert _epochs(10, 4, 2, batches=3, start=5) == whole[5:]
    # also when the job resumes with another number of processes
    resumed = [i for step in _epochs(10, 4, 1, batches=3, start=5) for part in step for i in part]
    assert resumed == [i for step in whole[5:] for part in step for i in part]


def _ungrouped_reference(size, batch, seed, batches):
    """The global batches of a shuffled infinite stream cut into batches, without any grouping."""
    g, buf, out = torch.Generator().manual_seed(seed), [], []
    while len(out) < batches:
        buf.extend(torch.randperm(size, generator=g).tolist())
        while len(buf) >= batch and len(out) < batches:
            out.append(buf[:batch])
            buf = buf[batch:]
    return out


def test_sampler_groups_batches_by_orientation():
    """DATALOADER.ASPECT_RATIO_GROUPING: each batch holds one group; with one group (e.g. square
    images) the batches are exactly the ungrouped ones."""
    from seed_det.data.torch_dataset import orientation_groups
    groups = orientation_groups([{"width": 50 + i, "height": 64} if i % 3 else {"width": 90, "height": 64}
                                 for i in range(10)])
    assert groups == [0 if i % 3 == 0 else 1 for i in range(10)]
    it = iter(InfiniteBatchSampler(10, 4, 5, groups=groups))
    batches = [next(it) for _ in range(12)]
    assert all(len({groups[i] for i in b}) == 1 for b in batches)
    reference = _ungrouped_reference(10, 4, 5, batches=12)
    for grouping in (None, [1] * 10):
        it = iter(InfiniteBatchSampler(10, 4, 5, groups=grouping))
        assert [next(it) for _ in range(12)] == reference
    resumed = iter(InfiniteBatchSampler(10, 4, 5, start_batch=7, groups=groups))
    assert [next(resumed) for _ in range(5)] == batches[7:]


def test_sampler_refuses_a_batch_that_does_not_split():
    from seed_core.errors import DatasetError
    with pytest.raises(DatasetError, match="cannot be split evenly over 2"):
        InfiniteBatchSampler(10, 3, 0, world_size=2)


@pytest.mark.slow
def test_sync_bn_over_two_processes_equals_batch_norm_over_the_whole_batch(tmp_path):
    import torch
    from seed_core.distributed import launch
    from seed_det.engines.tv.layers import SyncBatchNorm2d
    import tv_ddp_worker

    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 2 + 1
    launch(tv_ddp_worker.sync_bn_half_batches, (x, str(tmp_path)), nprocs=2)
    torch.manual_seed(0)
    bn = SyncBatchNorm2d(3)  # alone it is plain BatchNorm2d
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    whole = x.clone().requires_grad_(True)
    y = bn(whole)
    weights = torch.cat([torch.arange(y[:2].numel(), dtype=y.dtype).view_as(y[:2])] * 2)
    (y * weights).sum().backward()
    parts = [torch.load(tmp_path / f"rank{r}.pth", weights_only=True) for r in (0, 1)]
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([p["grad"] for p in parts]), whole.grad, rtol=1e-4, atol=1e-5)
    for p in parts:
        torch.testing.assert_close(p["mean"], bn.running_mean)
        torch.testing.assert_close(p["var"], bn.running_var)


@pytest.mark.slow
def test_two_processes_count_each_others_skipped_images_and_stop_at_the_same_step(tmp_path):
    from seed_core.distributed import launch
    import tv_ddp_worker

    launch(tv_ddp_worker.count_skipped_steps, (str(tmp_path),), nprocs=2)
    ranks = [torch.load(tmp_path / f"skips{r}.pth", weights_only=True) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # the same images, the same stop, on both
    assert ranks[0]["held"] == [[1], [1], [1, 2], [1, 2]]  # rank 1's image 2 counted on rank 0 too
    step, message = ranks[0]["stopped"]
    assert step == 4 and message.startswith("training set 'tr': 3 of 10 images cannot be read, more than "
                                            "DATALOADER.MAX_BAD_FRACTION = 0.2; for example image 1.jpg")


def test_evaluation_shards_cover_every_image_once():
    for size in (0, 1, 5, 7):
        for world in (1, 2, 3, 8):
            parts = [list(shard(size, r, world)) for r in range(world)]
            assert [i for p in parts for i in p] == list(range(size))
