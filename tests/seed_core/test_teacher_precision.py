"""Teacher precision: how far a reduced-precision teacher moves SEED's targets, and the choices."""
import pytest
import torch

from seed_core.config import load_cfg, validate_cfg
from seed_core.encoders import build_student
from seed_core.errors import ConfigError
from seed_core.teacher_precision import (cast_teacher, measure_target_tv,
                                         resolve_teacher_precision, target_distribution, total_variation)
from seed_core.teachers import FrozenTeacher, fold_batchnorm

TAU_T = 0.01


def _tiny_teacher():
    torch.manual_seed(0)
    net = build_student("resnet18", head_dim=16)
    # BN statistics of "data" rather than of the init (0 mean, unit variance everywhere).
    net.train()
    with torch.no_grad():
        net(torch.randn(16, 3, 32, 32))
    return FrozenTeacher(net.backbone, net.head)


def _images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=g), torch.randn(16, 3, 32, 32, generator=g)


@pytest.fixture(scope="module")
def measured():
    return measure_target_tv(_tiny_teacher(), *_images(), TAU_T, reference="fp32", fold=fold_batchnorm,
                             precisions=("fp32", "bf16", "bf16-fp32tail"))


def test_fp32_teacher_against_fp32_reference_is_exact(measured):
    assert measured["fp32"]["tv_max"] == 0.0


def test_bf16_teacher_moves_the_targets(measured):
    assert measured["bf16"]["tv_mean"] > 0.0
    assert measured["bf16"]["embedding_err_max"] > 0.0


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_a_cpu_is_bf16_only_where_it_is_native(monkeypatch, native_bf16, expected):
    import seed_core.teacher_precision as tp
    monkeypatch.setattr(tp, "cpu_supports_bf16", lambda: native_bf16)
    assert resolve_teacher_precision("auto", "cpu") == expected


@pytest.mark.parametrize("cuda_bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_a_gpu_is_half_precision(monkeypatch, cuda_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    assert resolve_teacher_precision("auto", "cuda") == expected


def test_total_variation_of_disjoint_and_equal_distributions():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    q = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    assert total_variation(p, q).tolist() == [1.0, 0.0]
    z = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    assert torch.allclose(target_distribution(z, z, TAU_T).sum(1), torch.ones(3))


def test_fp32_tail_keeps_last_stage_and_head_in_fp32():
    net, in_dtype = cast_teacher(_tiny_teacher(), "bf16-fp32tail")
    assert in_dtype == torch.bfloat16
    assert {p.dtype for p in net.body.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in net.tail.parameters()} == {torch.float32}
    assert net(torch.randn(2, 3, 32, 32)).dtype == torch.float32


def test_explicit_choices_are_kept():
    assert resolve_teacher_precision("bf16-fp32tail") == "bf16-fp32tail"
    assert resolve_teacher_precision("fp16", "cuda") == "fp16"
    assert resolve_teacher_precision("fp16-fp32tail", "cpu") == "fp16-fp32tail"


def _embedding_error(net, in_dtype, reference, x):
    with torch.no_grad():
        return float((net(x.to(in_dtype)).double() - reference).abs().max())


def test_fp16_on_a_cpu_is_emulated_with_the_error_of_real_fp16():
    import copy
    from seed_core.teacher_precision import HalfRounded
    teacher, x = _tiny_teacher(), _images()[1]
    with torch.no_grad():
        reference = fold_batchnorm(copy.deepcopy(teacher)).double()(x.double())
    emulated, in_dtype = cast_teacher(copy.deepcopy(teacher), "fp16", fold_batchnorm)
    assert isinstance(emulated, HalfRounded) and in_dtype == torch.float32
    assert {p.dtype for p in emulated.parameters()} == {torch.float32}
    # Every weight holds an fp16 value.
    assert all(torch.equal(p, p.half().float()) for p in emulated.parameters())
    real = fold_batchnorm(copy.deepcopy(teacher)).half()
    err_emulated = _embedding_error(emulated, in_dtype, reference, x)
    err_real = _embedding_error(real, torch.float16, reference, x)
    err_fp32 = _embedding_error(*cast_teacher(copy.deepcopy(teacher), "fp32", fold_batchnorm), reference, x)
    err_bf16 = _embedding_error(*cast_teacher(copy.deepcopy(teacher), "bf16", fold_batchnorm), reference, x)
    # fp16 rounding shows (far above fp32's), at real fp16's size, well below bf16's 3 fewer mantissa bits.
    assert err_emulated > 30 * err_fp32
    assert err_real / 3 < err_emulated < 3 * err_real
    assert err_emulated < err_bf16 / 2


def test_fp16_emulation_overflows_as_fp16_does():
    from seed_core.teacher_precision import HalfRounded
    net = HalfRounded(torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False)))
    with torch.no_grad():
        net.net[0].weight.fill_(1.0)
        assert torch.isinf(net(torch.tensor([[70000.0]]))).all()
        assert net(torch.tensor([[1.0 + 2 ** -12]])).item() == 1.0  # below fp16's resolution at 1


def test_fp16_body_with_an_fp32_tail_on_a_cpu():
    net, in_dtype = cast_teacher(_tiny_teacher(), "fp16-fp32tail")
    assert in_dtype == torch.float32
    assert net(torch.randn(2, 3, 32, 32)).dtype == torch.float32


def test_fp32_tail_needs_a_resnet_teacher():
    plain = FrozenTeacher(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)), None)
    with pytest.raises(ConfigError, match="ResNet-family"):
        cast_teacher(plain, "bf16-fp32tail")


@pytest.mark.parametrize("bad", ["bfloat16", "fp64", "bf16-tail"])
def test_bad_teacher_precision_names_are_refused(bad):
    with pytest.raises(ConfigError, match="choose one of"):
        resolve_teacher_precision(bad)
    cfg = load_cfg(None, ["TRAIN.TEACHER_PRECISION", bad])
    with pytest.raises(ConfigError, match="TRAIN.TEACHER_PRECISION"):
        validate_cfg(cfg)


def test_training_runs_with_an_fp32_last_stage_teacher(images, moco_teacher, tmp_path):
    from conftest import tiny_opts
    from seed_core.constants import LOG_FILE
    from seed_core.trainer import train
    out = tmp_path / "run"
    cfg = load_cfg(None, tiny_opts(images, moco_teacher, str(out), **{
        "TRAIN.TEACHER_PRECISION": "bf16-fp32tail", "SOLVER.EPOCHS": 1}))
    summary = train(cfg)
    assert summary["finished"] and summary["iterations"] == 3
    assert "teacher precision: bf16-fp32tail" in (out / LOG_FILE).read_text()
