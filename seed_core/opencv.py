"""OpenCV, the way the suite uses it: imported when first needed (config validation stays light),
with as many threads as torch in each process (one in a data-loader worker), so that workers do
not contend for the cores and a forked worker never reuses its parent's thread pool."""
from __future__ import annotations

import os

_configured_in_pid: list[int] = []


def cv2():
    """The cv2 module, its thread count matched to torch's in this process."""
    import cv2 as module
    if _configured_in_pid[:1] != [os.getpid()]:
        import torch
        module.setNumThreads(torch.get_num_threads())
        _configured_in_pid[:] = [os.getpid()]
    return module
