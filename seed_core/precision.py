"""Mixed precision: bf16 autocast on CPUs and GPUs that support it, fp16 + GradScaler on older GPUs,
fp32 elsewhere. Student master weights always stay fp32."""
from __future__ import annotations

import contextlib
import logging

import torch

logger = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels here (AVX512-BF16 / AMX); emulated bf16 is slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_description() -> str:
    """CPU model, core count and whether bf16 is native: every speed figure says where it was measured."""
    import os
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    bf16 = "native bf16" if cpu_supports_bf16() else "no native bf16"
    return f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} cores, {bf16}"


def resolve_precision(name: str, device: torch.device) -> str:
    if device.type == "cuda":
        if name == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return name
    if name == "fp16":
        raise ValueError("TRAIN.PRECISION fp16 needs a CUDA device; on CPU use bf16 or fp32")
    if name == "auto":
        if cpu_supports_bf16():
            return "bf16"
        logger.info("this CPU has no native bf16: training in fp32 (with channels_last)")
        return "fp32"
    return name


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def make_grad_scaler(precision: str, device: torch.device):
    """Only fp16 needs loss scaling; the scaler is disabled (a no-op) otherwise."""
    return torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))


def keep_large_allocations_on_heap() -> bool:
    """Stop glibc from returning every large tensor to the OS on free (its default for blocks above
    a dynamic threshold): otherwise each step page-faults its activation and (N, K) logit buffers
    afresh, which costs more than the similarity math itself on CPU. Returns True when applied."""
    import ctypes
    import ctypes.util
    import sys
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
