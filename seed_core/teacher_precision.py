"""The frozen teacher's numeric precision, and how much it changes SEED's target distribution.

At tau_T = 0.01 an embedding error of a few 1e-3 becomes a logit error of tenths, so a teacher
run entirely in bf16 can move the soft targets noticeably. Choices (TRAIN.TEACHER_PRECISION):

  fp32, bf16, fp16          the whole teacher in that dtype
  bf16-fp32tail, fp16-...   the teacher in bf16/fp16 up to its last stage; the last stage, the
                            pooling and the projection head in fp32 (most of the compute stays
                            reduced; the rounding nearest the embedding does not)
  auto                      half precision where the hardware runs it natively: bf16 on GPUs
                            with bf16 and on CPUs with native bf16, fp16 on older GPUs, fp32 on
                            other CPUs (where bf16 is emulated and slower)

fp16 on a CPU is emulated (`HalfRounded`): CPUs have no fast fp16 convolutions (a ResNet-34 forward
is ~27x slower in fp16 than in fp32 on an AVX-512 EPYC), so the teacher runs fp32 kernels on fp16
operands, weights rounded to fp16 once and every layer's output rounded to fp16 -- the arithmetic of
a GPU's fp16 convolution (fp16 operands, fp32 accumulation), at fp32's cost.

`measure_target_tv` gives the total-variation distance between a variant's targets and an fp64
reference on real images; benchmarks/distill_step.py --teacher-precision-tv prints it.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .constants import TEACHER_PRECISIONS
from .errors import ConfigError
from .precision import DTYPES, cpu_supports_bf16

TAIL_SUFFIX = "-fp32tail"


def auto_teacher_precision(device_type: str) -> str:
    """What `auto` means on this device. Decided by the students (benchmarks/teacher_precision.py,
    docs/RESULTS.md#teacher-precision): SEED students of a bf16 or fp16 teacher stay within the seed
    spread of an fp32 teacher's, although half precision moves the targets by a total variation of
    1e-3..1e-2, so the teacher runs in half precision wherever that is faster -- as the official
    code's fp16 autocast does -- and in fp32 where half precision would only be emulated."""
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def check_teacher_precision(name: str) -> None:
    if name not in TEACHER_PRECISIONS:
        raise ConfigError(f"teacher precision {name!r} is not known: choose one of {', '.join(TEACHER_PRECISIONS)}")


def resolve_teacher_precision(name: str, device_type: str = "cpu") -> str:
    """`auto` -> auto_teacher_precision(device_type); explicit choices are kept (fp16 on a CPU runs
    emulated, see `HalfRounded`)."""
    check_teacher_precision(name)
    return auto_teacher_precision(device_type) if name == "auto" else name


def split_precision(name: str) -> tuple[torch.dtype, bool]:
    """(dtype of the teacher body, whether the last stage + head run in fp32)."""
    check_teacher_precision(name)
    if name == "auto":
        raise ConfigError("resolve the teacher precision 'auto' first (resolve_teacher_precision)")
    base, tail = (name[: -len(TAIL_SUFFIX)], True) if name.endswith(TAIL_SUFFIX) else (name, False)
    return DTYPES[base], tail and base != "fp32"


class SplitPrecisionTeacher(nn.Module):
    """`body` in a reduced dtype, `tail` (last stage, pooling, head) in fp32."""

    def __init__(self, body: nn.Module, tail: nn.Module):
        super().__init__()
        self.body, self.tail = body, tail
        self.input_dtype = next(body.parameters()).dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(x.to(self.input_dtype)).float())


def has_last_stage(teacher: nn.Module) -> bool:
    bb = getattr(teacher, "backbone", None)
    return bb is not None and all(hasattr(bb, n) for n in ("layer1", "layer2", "layer3", "layer4", "avgpool"))


def split_last_stage(teacher: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(body, tail) of a ResNet-family teacher (an EmbeddingNet whose backbone has layer1..layer4):
    tail = layer4 + pooling + projection head. Other architectures are refused by name."""
    bb, head = getattr(teacher, "backbone", None), getattr(teacher, "head", nn.Identity())
    if not has_last_stage(teacher):
        raise ConfigError(f"an fp32 last stage needs a ResNet-family teacher (layer1..layer4); "
                          f"{type(bb or teacher).__name__} has none: use TRAIN.TEACHER_PRECISION fp32, bf16 or fp16")
    body = nn.Sequential(bb.conv1, bb.bn1, bb.relu, bb.maxpool, bb.layer1, bb.layer2, bb.layer3)
    tail = nn.Sequential(bb.layer4, bb.avgpool, nn.Flatten(1), bb.fc, head)
    return body, tail


class HalfRounded(nn.Module):
    """`net` computing in fp32 on fp16 values: its parameters and buffers rounded to fp16 once, its
    input and the output of every leaf module rounded to fp16 on each forward. This is an fp16
    forward with fp32 accumulation (what GPU fp16 kernels do), on a CPU's fast fp32 kernels; values
    beyond fp16's range become inf as in real fp16."""

    def __init__(self, net: nn.Module):
        super().__init__()
        with torch.no_grad():
            for t in list(net.parameters()) + list(net.buffers()):
                if t.is_floating_point():
                    t.copy_(t.half().float())
        for m in net.modules():
            if not list(m.children()):
                m.register_forward_hook(_round_output_to_half)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_to_half_values(x))


def _to_half_values(x):
    return x.half().to(x.dtype) if torch.is_tensor(x) and x.is_floating_point() else x


def _round_output_to_half(module, inputs, output):
    if isinstance(output, (tuple, list)):
        return type(output)(_to_half_values(o) for o in output)
    return _to_half_values(output)


def _in_dtype(net: nn.Module, dtype: torch.dtype, memory_format) -> tuple[nn.Module, torch.dtype]:
    """`net` in `dtype`, or fp16 emulated on fp32 kernels (HalfRounded) when it lives on a CPU."""
    on_cpu = all(p.device.type == "cpu" for p in net.parameters())
    if dtype == torch.float16 and on_cpu:
        return HalfRounded(net.to(dtype=torch.float32, memory_format=memory_format)).eval(), torch.float32
    return net.to(dtype=dtype, memory_format=memory_format), dtype


def cast_teacher(teacher: nn.Module, precision: str, fold=None,
                 memory_format: torch.memory_format = torch.contiguous_format) -> tuple[nn.Module, torch.dtype]:
    """The teacher kept permanently in `precision` (never re-cast per forward), optionally with
    `fold` (e.g. teachers.fold_batchnorm) applied to each part; returns (module, input dtype).
    fp16 on a CPU is emulated (HalfRounded) and takes fp32 inputs."""
    dtype, fp32_tail = split_precision(precision)
    fold = fold or (lambda m: m)
    if not fp32_tail:
        return _in_dtype(fold(teacher), dtype, memory_format)
    body, tail = split_last_stage(teacher)
    body, dtype = _in_dtype(fold(body), dtype, memory_format)
    tail = fold(tail).to(dtype=torch.float32, memory_format=memory_format)
    return SplitPrecisionTeacher(body, tail).eval().requires_grad_(False), dtype


def target_distribution(z: torch.Tensor, queue: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    """SEED's teacher target softmax(z . [z; queue]^T / tau_T) for unit embeddings z (N, D) and a
    queue (K, D), computed in the inputs' dtype (pass fp64 for a reference)."""
    logits = torch.cat([(z * z).sum(1, keepdim=True), z @ queue.t()], dim=1) / teacher_temp
    return torch.softmax(logits, dim=1)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-row total-variation distance 0.5 * sum |p - q| (in fp64)."""
    return 0.5 * (p.double() - q.double()).abs().sum(dim=1)


@torch.inference_mode()
def embed(net: nn.Module, images: torch.Tensor, input_dtype: torch.dtype, batch: int = 64) -> torch.Tensor:
    """Unit embeddings of `images` in fp64, computed `batch` images at a time."""
    out = [F.normalize(net(images[i:i + batch].to(input_dtype)).double(), dim=1)
           for i in range(0, len(images), batch)]
    return torch.cat(out)


def measure_target_tv(teacher: nn.Module, images: torch.Tensor, queue_images: torch.Tensor,
                      teacher_temp: float, precisions=("fp32", "bf16", "fp16", "bf16" + TAIL_SUFFIX),
                      fold=None, reference: str = "fp64") -> dict:
    """Total-variation distance between the teacher's SEED targets on `images` with the teacher in
    each of `precisions` and with the teacher in `reference` (fp64, or fp32). The queue holds the teacher's own embeddings
    of `queue_images`, computed in the same precision as the batch (as in training, where the teacher
    fills the queue). Returns {precision: {"tv_mean", "tv_max", "embedding_err_max"}}."""
    for name in precisions:
        check_teacher_precision(name)
        if name == "auto":
            raise ConfigError("measure concrete precisions; 'auto' depends on the student's precision")
    teacher = copy.deepcopy(teacher).eval()
    ref_dtype = {"fp64": torch.float64, "fp32": torch.float32}[reference]
    ref_net = (fold or (lambda m: m))(copy.deepcopy(teacher)).to(ref_dtype)
    z_ref, q_ref = embed(ref_net, images, ref_dtype), embed(ref_net, queue_images, ref_dtype)
    p_ref = target_distribution(z_ref, q_ref, teacher_temp)
    out = {}
    for name in precisions:
        net, in_dtype = cast_teacher(copy.deepcopy(teacher), name, fold)
        z, q = embed(net, images, in_dtype), embed(net, queue_images, in_dtype)
        tv = total_variation(target_distribution(z, q, teacher_temp), p_ref)
        out[name] = {"tv_mean": float(tv.mean()), "tv_max": float(tv.max()),
                     "embedding_err_max": float((z - z_ref).abs().max())}
    return out
