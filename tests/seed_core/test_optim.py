"""seed_core/optim.py: LARS moves every layer by the same fraction of its weights."""
import copy

import pytest
import torch
from torch import nn

from seed_core.config import ConfigError, load_cfg, validate_cfg
from seed_core.optim import LARS, build_optimizer


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def _step(opt, net, grad_scale):
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    net[0].weight.grad *= grad_scale  # a layer whose gradient is huge against its weights
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt.step()
    return {n: float((p.detach() - before[n]).norm() / before[n].norm()) for n, p in net.named_parameters()}, before


@pytest.mark.parametrize("grad_scale", [1.0, 1000.0])
def test_every_weight_matrix_moves_by_lr_times_eta_of_its_norm(grad_scale):
    net = _net()
    opt = build_optimizer(net, "lars", lr=2.0, momentum=0.9, weight_decay=1e-4, lars_eta=0.01)
    moved, _ = _step(opt, net, grad_scale)
    for name in ("0.weight", "4.weight"):
        assert moved[name] == pytest.approx(2.0 * 0.01, rel=1e-4)


def test_sgd_moves_a_layer_in_proportion_to_its_gradient():
    net = _net()
    opt = build_optimizer(net, "sgd", lr=0.01, momentum=0.9, weight_decay=0.0)
    small, _ = _step(opt, net, 1.0)
    net = _net()
    opt = build_optimizer(net, "sgd", lr=0.01, momentum=0.9, weight_decay=0.0)
    large, _ = _step(opt, net, 1000.0)
    assert large["0.weight"] > 500 * small["0.weight"]


def test_batch_norm_and_biases_take_plain_sgd_steps_without_decay():
    net = _net()
    opt = build_optimizer(net, "lars", lr=0.5, momentum=0.9, weight_decay=0.1)
    assert [len(g["params"]) for g in opt.param_groups] == [2, 4]  # conv and linear weights; BN and biases
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    bias_before, grad = net[4].bias.detach().clone(), net[4].bias.grad.clone()
    opt.step()
    assert torch.allclose(net[4].bias, bias_before - 0.5 * grad)
    # the momentum buffer carries over: a second identical gradient moves by (1 + 0.9) of it
    net[4].bias.grad = grad.clone()
    before = net[4].bias.detach().clone()
    opt.step()
    assert torch.allclose(net[4].bias, before - 0.5 * 1.9 * grad, atol=1e-6)


def test_the_optimiser_state_round_trips_through_a_state_dict():
    net, twin = _net(), _net()
    a = build_optimizer(net, "lars", lr=1.0, momentum=0.9, weight_decay=1e-4)
    _step(a, net, 1.0)
    twin.load_state_dict(net.state_dict())
    b = build_optimizer(twin, "lars", lr=1.0, momentum=0.9, weight_decay=1e-4)
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as a checkpoint holds it: a copy, not a's own buffers
    torch.manual_seed(1)
    _step(a, net, 1.0)
    torch.manual_seed(1)
    _step(b, twin, 1.0)
    for p, q in zip(net.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_bad_optimiser_settings_are_refused():
    with pytest.raises(ConfigError, match="SOLVER.OPTIMIZER = 'adam'.*sgd, lars"):
        validate_cfg(load_cfg(None, ["SOLVER.OPTIMIZER", "adam", "DATA.ROOT", "/x"]))
    with pytest.raises(ConfigError, match="SOLVER.LARS_ETA"):
        validate_cfg(load_cfg(None, ["SOLVER.LARS_ETA", "0.0", "DATA.ROOT", "/x"]))
    with pytest.raises(ValueError, match="eta"):
        LARS(_net().parameters(), lr=1.0, eta=0.0)
