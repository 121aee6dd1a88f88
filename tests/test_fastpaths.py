"""Fast inference paths give the plain path's outputs: BN folding (exact), channels_last
(exact), bf16 and int8 ONNX (close, and the same detections on a trained model).

The memory-efficient dense layers are checked against the plain ones in tests/test_model.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dsod_core.data.store import StoreReader
from dsod_core.engine import TrainConfig, load_trained_model, train
from dsod_core.errors import ConfigError
from dsod_core.export import (
    ExportError,
    calibration_images,
    check_reduced_precision,
    export_onnx,
    quantize_onnx,
)
from dsod_core.model import build_model
from dsod_core.model.fuse import fuse_bn
from dsod_core.runners import eager_runner, onnx_runner
from tests.synthetic import write_synthetic_store

pytestmark = [
    pytest.mark.usefixtures("one_intra_op_thread"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript:DeprecationWarning"),
]


def _randomise_bn(model: nn.Module, seed: int) -> None:
    # Fresh BNs are the identity (0/1 statistics, 1/0 affine): a wrong fold would go unseen.
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)


def _count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


# overrides of dsod_tiny (blocks 2-2-2-2), BNs the fold must remove: stem convs + dense layers
# (conv1 → norm2) + two-unit PreActConv chains (4 later scales) + head loc/conf (2 × 6).
FOLDS = [
    ({}, 3 + 8 + 4 + 12),
    ({"prediction": "plain"}, 3 + 8 + 4 + 12),
    ({"stem": "densenet", "transition_wo_pool": False, "compression": 0.5}, 1 + 8 + 4 + 12),
    ({"block_layers": (1, 3, 1, 2), "growth_rate": 8}, 3 + 7 + 4 + 12),
]


@pytest.mark.parametrize(("overrides", "expected_folds"), FOLDS)
def test_fused_model_equals_eval_model(overrides: dict, expected_folds: int) -> None:
    torch.manual_seed(0)
    model = build_model("dsod_tiny", in_channels=2, num_classes=3, input_size=64, **overrides)
    _randomise_bn(model, seed=expected_folds)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_bn(model)

    assert fused.fused_bn_count == expected_folds
    assert _count_bn(fused) == _count_bn(model) - expected_folds
    assert model.training  # the input model keeps its mode and its weights
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not fused.training
    assert not any(p.requires_grad for p in fused.parameters())

    images = torch.randn(3, 2, 64, 64, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        ref_loc, ref_conf = model(images)
        loc, conf = fused(images)
    torch.testing.assert_close(loc, ref_loc, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conf, ref_conf, atol=1e-5, rtol=1e-5)
    # The randomised BNs do change the outputs, so the equality above is not trivially met.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    with torch.no_grad():
        assert float((model(images)[1] - ref_conf).abs().max()) > 1e-2


def test_fused_conv_matches_hand_fold() -> None:
    # Reference fold in numpy for the head's first localisation conv → BN pair.
    torch.manual_seed(1)
    model = build_model("dsod_tiny", in_channels=1, num_classes=2, input_size=64)
    _randomise_bn(model, seed=5)
    conv, bn = model.head.loc[0][0], model.head.loc[0][1]
    w = conv.weight.detach().numpy().astype(np.float64)
    s = bn.weight.detach().numpy() / np.sqrt(bn.running_var.numpy() + bn.eps)
    t = bn.bias.detach().numpy() - s * bn.running_mean.numpy()
    fused_conv = fuse_bn(model).head.loc[0][0]
    assert isinstance(fuse_bn(model).head.loc[0][1], nn.Identity)
    np.testing.assert_allclose(
        fused_conv.weight.numpy(), w * s[:, None, None, None], rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(fused_conv.bias.numpy(), t, rtol=1e-6, atol=1e-7)


def test_fused_memory_efficient_model_equals_eval_model() -> None:
    torch.manual_seed(2)
    model = build_model(
        "dsod_tiny", in_channels=3, num_classes=2, input_size=64, memory_efficient=True
    )
    _randomise_bn(model, seed=2)
    images = torch.randn(2, 3, 64, 64)
    fused = fuse_bn(model)
    with torch.no_grad():
        ref = model.eval()(images)
        got = fused(images)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_channels_last_equals_plain() -> None:
    torch.manual_seed(3)
    model = build_model("dsod_tiny", in_channels=4, num_classes=3, input_size=64)
    _randomise_bn(model, seed=3)
    images = torch.randn(2, 4, 64, 64)
    ref = eager_runner(model)(images)
    # A second model with the same weights, converted to channels_last by the runner.
    cl_model = build_model("dsod_tiny", in_channels=4, num_classes=3, input_size=64)
    cl_model.load_state_dict(model.state_dict())
    fast = eager_runner(cl_model, channels_last=True)
    assert cl_model.backbone.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    got = fast(images)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bf16_close_to_fp32() -> None:
    torch.manual_seed(4)
    model = build_model("dsod_tiny", in_channels=2, num_classes=3, input_size=64)
    _randomise_bn(model, seed=4)
    images = torch.randn(2, 2, 64, 64)
    ref_loc, ref_conf = eager_runner(model)(images)
    loc, conf = eager_runner(model, bf16=True)(images)
    assert loc.dtype == conf.dtype == torch.float32
    # bfloat16 keeps 8 significant bits (~0.4 %): a few such errors add up through the net.
    for got, ref in ((loc, ref_loc), (conf, ref_conf)):
        err = float((got - ref).abs().max())
        assert 0 < err <= 0.05 * float(ref.abs().max()), err


# ---------------------------------------------------------------------------------------------
# int8 ONNX on a (briefly) trained model
# ---------------------------------------------------------------------------------------------
SIZE = 48


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastpaths")
    store = write_synthetic_store(root / "s.h5", n=160, size=SIZE, seed=1, splits=(0.75, 0.05))
    config = TrainConfig(
        store=str(store),
        out_dir=str(root / "run"),
        variant="dsod_tiny",
        input_size=SIZE,
        batch_size=16,
        epochs=12,
        lr=0.1,
        warmup_steps=10,
        progress=False,
        dvclive=False,
        eval_every=0,
        augmentation={"zoom_out": False, "crop": False, "flip": True},
    )
    train(config)
    model, _ = load_trained_model(root / "run/model.pt")
    fp32 = export_onnx(model, root / "fp32.onnx", input_size=SIZE, in_channels=2)
    calib = calibration_images(store, SIZE, count=16)
    int8 = quantize_onnx(fp32, root / "int8.onnx", calib)
    return {"store": store, "model": model, "fp32": fp32, "int8": int8, "calib": calib}


def test_calibration_images_are_normalised_train_images(trained) -> None:
    reader = StoreReader(trained["store"])
    calib = trained["calib"]
    assert calib.shape == (16, 2, SIZE, SIZE) and calib.dtype == np.float32
    # At the store's own size the eval transform is the identity, so each calibration image
    # is one train image normalised with the train statistics.
    train_images = [
        (reader.read_image(int(i)) - reader.mean[:, None, None]) / reader.std[:, None, None]
        for i in reader.split_indices("train")
    ]
    for image in calib:
        errors = [float(np.abs(image - t).max()) for t in train_images]
        assert min(errors) < 1e-5
    assert len({float(c.sum()) for c in calib}) == 16  # no image twice


def test_int8_graph_is_quantised_and_close_to_fp32(trained) -> None:
    import onnx

    ops = {n.op_type for n in onnx.load(str(trained["int8"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    fp32 = onnx_runner(trained["fp32"], threads=1)
    int8 = onnx_runner(trained["int8"], threads=1)
    images = torch.from_numpy(trained["calib"][:8])
    ref_loc, ref_conf = fp32(images)
    loc, conf = int8(images)
    # 8-bit activations: errors of a few per cent of the output range, not more.
    # Measured on this model: mean |Δ| ~1 % (loc) and 0.1 % (conf) of the range, max 8 % / 2 %.
    for got, ref in ((loc, ref_loc), (conf, ref_conf)):
        err = (got - ref).abs()
        span = float(ref.max() - ref.min())
        assert 0 < float(err.mean()) <= 0.02 * span, (float(err.mean()), span)
        assert float(err.max()) <= 0.15 * span, (float(err.max()), span)
    # and the fp32 graph itself is the PyTorch model
    with torch.no_grad():
        torch.testing.assert_close(ref_conf, trained["model"](images)[1], atol=1e-4, rtol=1e-4)


def test_int8_detections_agree_with_fp32(trained) -> None:
    model = trained["model"]
    result = check_reduced_precision(
        onnx_runner(trained["fp32"], threads=1),
        onnx_runner(trained["int8"], threads=1),
        trained["store"],
        "test",
        model.default_boxes,
        SIZE,
        max_map_drop=5.0,
    )
    # The model did learn (an untrained one scores < 1 point), so the comparison is between
    # meaningful detections.
    assert result["map50_reference"] > 10.0, result
    assert abs(result["map50_drop"]) <= 5.0, result
    # The top fp32 detection of each test image is among int8's five best, same class, IoU > 0.8.
    images = torch.from_numpy(calibration_images(trained["store"], SIZE, split="test", count=64))
    from dsod_core.postprocess import postprocess

    dets = {
        key: postprocess(*onnx_runner(trained[key], threads=1)(images), model.default_boxes,
                         image_size=(SIZE, SIZE))
        for key in ("fp32", "int8")
    }  # fmt: skip
    agree = 0
    for ref, got in zip(dets["fp32"], dets["int8"]):
        a, b = ref["boxes"][0], got["boxes"][:5]
        inter = (torch.minimum(a[2:], b[:, 2:]) - torch.maximum(a[:2], b[:, :2])).clamp(min=0)
        inter = inter.prod(dim=1)
        union = (a[2:] - a[:2]).prod() + (b[:, 2:] - b[:, :2]).prod(dim=1) - inter
        same = (got["labels"][:5] == ref["labels"][0]) & (inter / union > 0.8)
        agree += int(same.any())
    assert agree >= 0.9 * len(images), (agree, len(images))


def test_reduced_precision_check_rejects_a_broken_path(trained) -> None:
    fp32 = onnx_runner(trained["fp32"], threads=1)

    def background_only(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, conf = fp32(images)
        conf = torch.zeros_like(conf)
        conf[..., 0] = 10.0  # every prior is background: no detection survives
        return loc, conf

    with pytest.raises(ExportError, match="mAP points"):
        check_reduced_precision(
            fp32, background_only, trained["store"], "test", trained["model"].default_boxes, SIZE
        )


def test_quantize_rejects_wrong_calibration_shape(trained, tmp_path) -> None:
    with pytest.raises(ConfigError, match="graph takes"):
        quantize_onnx(trained["fp32"], tmp_path / "q.onnx", np.zeros((2, 3, SIZE, SIZE)))
    with pytest.raises(ConfigError, match="non-empty"):
        quantize_onnx(trained["fp32"], tmp_path / "q.onnx", np.zeros((0, 2, SIZE, SIZE)))
    assert not (tmp_path / "q.onnx").exists()


# ---------------------------------------------------------------------------------------------
# OpenVINO (fp32 and the int8 QDQ graph); 160 px: OpenVINO refuses to pool a 1x1 map
# ---------------------------------------------------------------------------------------------
def test_openvino_fp32_equals_eager_and_int8_follows_onnx_runtime(tmp_path) -> None:
    from dsod_core.postprocess import postprocess
    from dsod_core.runners import openvino_runner

    size = 160
    torch.manual_seed(3)
    model = build_model("dsod_tiny", in_channels=3, num_classes=2, input_size=size).eval()
    fp32 = export_onnx(model, tmp_path / "m.onnx", input_size=size, in_channels=3)
    images = torch.randn(3, 3, size, size)
    with torch.no_grad():
        ref_loc, ref_conf = model(images)
    ov = openvino_runner(fp32, threads=1)
    for batch in (images, images[:1]):  # one compiled model per batch size
        loc, conf = ov(batch)
        torch.testing.assert_close(loc, ref_loc[: len(batch)], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(conf, ref_conf[: len(batch)], atol=1e-4, rtol=1e-4)
    boxes = model.default_boxes
    ref = postprocess(ref_loc, ref_conf, boxes, image_size=(size, size), score_threshold=0.01)
    got = postprocess(*ov(images), boxes, image_size=(size, size), score_threshold=0.01)
    for a, b in zip(ref, got):
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=1e-4)

    int8 = quantize_onnx(fp32, tmp_path / "int8.onnx", images.numpy())
    ov_loc, ov_conf = openvino_runner(int8, threads=1)(images)
    ort_loc, ort_conf = onnx_runner(int8, threads=1)(images)
    # The same quantised graph in two runtimes: 8-bit rounding differences only, far below
    # the gap between int8 and fp32.
    for a, b, ref_ in ((ov_loc, ort_loc, ref_loc), (ov_conf, ort_conf, ref_conf)):
        span = float(ref_.max() - ref_.min())
        assert float((a - b).abs().mean()) <= 0.02 * span
        assert float((a - ref_).abs().mean()) <= 0.05 * span


def test_openvino_names_the_small_input_it_cannot_convert(tmp_path) -> None:
    from dsod_core.export import ExportError
    from dsod_core.runners import openvino_runner

    model = build_model("dsod_tiny", in_channels=1, num_classes=2, input_size=64).eval()
    path = export_onnx(model, tmp_path / "m.onnx", input_size=64, in_channels=1)
    with pytest.raises(ExportError, match="1x1 map"):
        openvino_runner(path, threads=1)
