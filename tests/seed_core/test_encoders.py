"""seed_core/encoders.py: backbone options."""
import pytest
import torch

from seed_core.encoders import build_backbone, build_student, head_output_dim
from seed_core.errors import ConfigError


@pytest.mark.parametrize("arch, last_bn", [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual_starts_every_block_as_the_identity(arch, last_bn):
    net, _ = build_backbone(arch, zero_init_residual=True)
    blocks = [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
    assert all(torch.count_nonzero(getattr(b, last_bn).weight) == 0 for b in blocks)
    default, _ = build_backbone(arch)
    assert all(torch.all(getattr(b, last_bn).weight == 1) for layer in (default.layer1, default.layer4) for b in layer)
    # a block whose branch is zero passes its input through (then its ReLU): a block without
    # downsampling maps a non-negative input to itself
    block = net.layer1[1].eval()
    x = torch.rand(2, block.conv1.in_channels, 8, 8)
    assert torch.equal(block(x), x)


def test_zero_init_residual_is_refused_for_a_network_without_torchvision_blocks():
    with pytest.raises(ConfigError, match="ZERO_INIT_RESIDUAL is for torchvision ResNets"):
        build_student("mobilenetv3_small_050", head_dim=16, zero_init_residual=True)


@pytest.mark.parametrize("batch_norm, layers", [(False, ["Linear", "ReLU", "Linear"]),
                                                (True, ["Linear", "BatchNorm1d", "ReLU", "Linear"])])
def test_the_head_with_and_without_batch_norm(batch_norm, layers):
    net = build_student("resnet18", head_dim=16, head_hidden_dim=32, head_batch_norm=batch_norm)
    assert [type(m).__name__ for m in net.head] == layers
    assert head_output_dim({f"head.{k}": v for k, v in net.head.state_dict().items()}) == 16
    assert net(torch.randn(4, 3, 32, 32)).shape == (4, 16)
    assert head_output_dim(net.backbone.state_dict()) is None
