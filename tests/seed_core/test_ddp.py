import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, tiny_opts

pytestmark = pytest.mark.slow


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_ranks_agree(images, moco_teacher, tmp_path):
    out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), os.path.join(ROOT, "tests", "seed_core", "worker.py"),
           *tiny_opts(images, moco_teacher, out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(os.path.join(out, "rank0.pth"), weights_only=True)
    r1 = torch.load(os.path.join(out, "rank1.pth"), weights_only=True)
    for k, v in r0["student"].items():
        if "running_" in k or "num_batches" in k:
            continue  # BN buffers are broadcast from rank 0 at each forward, then updated locally
        assert torch.equal(v, r1["student"][k]), k
    assert torch.equal(r0["queue"]["embeddings"], r1["queue"]["embeddings"])
    # 6 iterations x global batch 8 went through the queue of 20, gathered from both ranks
    assert int(r0["queue"]["ptr"]) == (6 * 8) % 20
    assert os.path.exists(os.path.join(out, "student_backbone.pth"))
