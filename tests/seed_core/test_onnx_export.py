"""ONNX export of distilled backbones: onnxruntime's features equal torch's (within 1e-4) at other
batch and image sizes than the traced ones, for a ResNet and a timm student; the refusals (an
operator ONNX lacks, a frozen size, an existing output, a missing extra) say what to do."""
import sys

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from conftest import onnx_runtime_session, write_backbone_export
from seed_core import onnx_export
from seed_core.errors import ExportError
from seed_core.evaluation.backbone_io import LoadedBackbone
from seed_core.onnx_export import export_backbone_onnx, trace_to_onnx, unsupported_operator


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv3_small_050"])
def test_backbone_matches_torch_at_other_batch_and_image_sizes(tmp_path, arch):
    net, dim = write_backbone_export(tmp_path / "exp", arch)
    out = tmp_path / "backbone.onnx"
    summary = export_backbone_onnx(str(tmp_path / "exp"), str(out), image_size=32)  # traced: 2 x 3 x 32 x 32
    assert summary["arch"] == arch and summary["feature_dim"] == dim and out.is_file()
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["seed.arch"] == arch and props["seed.kind"] == "backbone"
    sess = onnx_runtime_session(out)
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        for height, width in ((32, 32), (64, 48)):
            x = torch.randn(batch, 3, height, width, generator=generator)
            with torch.no_grad():
                expected = net(x).numpy()
            got = sess.run(["features"], {"images": x.numpy()})[0]
            assert got.shape == (batch, dim)
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert not list(tmp_path.glob(".backbone.onnx.*"))  # no temporary file left behind


def test_existing_output_is_refused_then_moved_aside_with_overwrite(tmp_path):
    write_backbone_export(tmp_path / "exp", "resnet18")
    out = tmp_path / "backbone.onnx"
    out.write_bytes(b"the user's file")
    with pytest.raises(ExportError, match="--overwrite"):
        export_backbone_onnx(str(tmp_path / "exp"), str(out), image_size=32)
    assert out.read_bytes() == b"the user's file"
    export_backbone_onnx(str(tmp_path / "exp"), str(out), image_size=32, overwrite=True)
    onnx.checker.check_model(onnx.load(str(out)))
    assert [p.read_bytes() for p in tmp_path.glob("previous-*/backbone.onnx")] == [b"the user's file"]


@pytest.mark.parametrize("name", ["backbone.pth", "folder"])
def test_output_must_be_an_onnx_file(tmp_path, name):
    (tmp_path / "folder").mkdir()
    with pytest.raises(ExportError, match=r"\.onnx"):
        export_backbone_onnx(str(tmp_path / "missing"), str(tmp_path / name))


def test_bad_weights_are_an_export_error_naming_the_fix(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        export_backbone_onnx(str(tmp_path / "missing"), str(tmp_path / "b.onnx"))
    assert not (tmp_path / "b.onnx").exists()


class Bessel(nn.Module):
    def forward(self, x):
        return torch.special.bessel_j0(x)


def test_unsupported_operator_is_named():
    with pytest.raises(ExportError, match=r"operator aten::special_bessel_j0 has no ONNX counterpart"):
        trace_to_onnx(Bessel(), (torch.randn(2, 3),), ["x"], ["y"], {})


def test_operator_names_in_both_exporter_messages():
    assert unsupported_operator("Exporting the operator 'aten::foo' to ONNX opset version 17 is not supported") \
        == "aten::foo"
    assert unsupported_operator("Unsupported: ONNX export of operator bar, non-constant input. Please ...") == "bar"
    assert unsupported_operator("something else went wrong") is None


class FrozenBatch(nn.Module):
    """Pools, then reshapes with the traced batch size as a constant: wrong for any other batch."""

    def forward(self, x):
        return x.mean(dim=(2, 3)).reshape(int(x.shape[0]), -1)


def test_a_size_frozen_by_the_trace_is_refused_and_nothing_written(tmp_path, monkeypatch):
    frozen = LoadedBackbone(FrozenBatch(), "frozen", 3, "test", "0" * 64)
    monkeypatch.setattr(onnx_export, "load_backbone", lambda weights, arch: frozen)
    with pytest.raises(ExportError, match="froze a size"):
        export_backbone_onnx("unused", str(tmp_path / "b.onnx"), image_size=32)
    assert not (tmp_path / "b.onnx").exists()


def test_missing_extra_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ExportError, match=r"seed-transfer\[export\]"):
        export_backbone_onnx(str(tmp_path), str(tmp_path / "b.onnx"))
