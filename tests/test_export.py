"""ONNX export of DSOD: onnxruntime agrees with PyTorch, the batch axis is dynamic, the file
is written atomically, and a disagreeing graph is reported."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from dsod_core.export import ExportError, check_onnx_parity, export_onnx
from dsod_core.model import DSOD, build_model

# torch 2.13 flags the TorchScript exporter, which export_onnx picks on purpose (see export.py).
pytestmark = [
    pytest.mark.usefixtures("one_intra_op_thread"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript:DeprecationWarning"),
]


def _randomise_bn_statistics(model: DSOD, seed: int) -> None:
    # Fresh BN statistics are 0/1, which would hide an exporter that folds them wrongly.
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)


@pytest.mark.parametrize("in_channels", [1, 13])
def test_dsod300_onnx_matches_pytorch(tmp_path, in_channels: int) -> None:
    torch.manual_seed(10 + in_channels)
    model = build_model("dsod300", in_channels=in_channels, num_classes=20)
    _randomise_bn_statistics(model, in_channels)
    model.train()
    path = export_onnx(model, tmp_path / "dsod300.onnx", input_size=300, in_channels=in_channels)
    assert path == tmp_path / "dsod300.onnx"
    assert model.training  # the caller's mode is restored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dsod300.onnx"]  # no temp left over

    graph = onnx.load(str(path)).graph
    (inp,) = graph.input
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [in_channels, 300, 300]
    assert [o.name for o in graph.output] == ["loc", "conf"]

    # Batch 1 here, 2 at export: the batch axis really is dynamic.
    diff = check_onnx_parity(model, path, atol=1e-4)
    assert 0.0 <= diff <= 1e-4
    assert model.training


def test_parity_check_catches_a_stale_graph(tmp_path) -> None:
    torch.manual_seed(20)
    model = build_model("dsod_tiny", in_channels=4, num_classes=3, input_size=64)
    _randomise_bn_statistics(model, 20)
    path = export_onnx(model, tmp_path / "tiny.onnx", input_size=64, in_channels=4)
    assert check_onnx_parity(model, path) <= 1e-4

    # Batch 3 through onnxruntime directly, against an eval-mode forward.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 4, 64, 64)
    loc, conf = session.run(["loc", "conf"], {"images": x.numpy()})
    with torch.no_grad():
        ref_loc, ref_conf = model.eval()(x)
    assert loc.shape == (3, model.num_priors, 4) and conf.shape == (3, model.num_priors, 4)
    np.testing.assert_allclose(loc, ref_loc.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(conf, ref_conf.numpy(), atol=1e-4, rtol=0)

    with torch.no_grad():
        model.head.conf[0][1].bias.add_(1.0)  # the model moved on; the file did not
    with pytest.raises(ExportError, match="differs from PyTorch"):
        check_onnx_parity(model, path)


def test_unreadable_graph_is_an_export_error(tmp_path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx graph")
    model = build_model("dsod_tiny", in_channels=1, num_classes=2, input_size=64)
    with pytest.raises(ExportError, match="broken.onnx"):
        check_onnx_parity(model, bad)
