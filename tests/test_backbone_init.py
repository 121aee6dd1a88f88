"""Backbone initialisation of the SSD300 VGG16 variants from local ImageNet checkpoints.

The checkpoints are written by the test with random weights in torchvision's and timm's exact
key layouts and shapes (a full-size VGG16, 138M values): nothing is downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dsod_core.backbone_init import (
    KEY_MAP,
    expected_shapes,
    load_backbone_checkpoint,
)
from dsod_core.errors import CheckpointError, ConfigError
from dsod_core.loss import MultiBoxLoss
from dsod_core.model import build_model

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


# torchvision's vgg16: 13 convs (3x3, bias) at these indices of `features`, then the classifier.
TV_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128),
            12: (256, 256), 14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512),
            24: (512, 512), 26: (512, 512), 28: (512, 512)}  # fmt: skip
TV_CLASSIFIER = {0: (4096, 25088), 3: (4096, 4096), 6: (1000, 4096)}


def torchvision_vgg16_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights with the exact keys and shapes of ``torchvision.models.vgg16()``."""
    state = {}
    for index, (out_ch, in_ch) in TV_CONVS.items():
        state[f"features.{index}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=generator)
        state[f"features.{index}.bias"] = torch.randn(out_ch, generator=generator)
    for index, (out_f, in_f) in TV_CLASSIFIER.items():
        state[f"classifier.{index}.weight"] = torch.randn(out_f, in_f, generator=generator)
        state[f"classifier.{index}.bias"] = torch.randn(out_f, generator=generator)
    return state


def timm_layout(tv: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights under timm's ``vgg16.tv_in1k`` keys and shapes (ConvMlp pre-logits)."""
    state = {k: v for k, v in tv.items() if k.startswith("features.")}
    state["pre_logits.fc1.weight"] = tv["classifier.0.weight"].reshape(4096, 512, 7, 7)
    state["pre_logits.fc1.bias"] = tv["classifier.0.bias"]
    state["pre_logits.fc2.weight"] = tv["classifier.3.weight"].reshape(4096, 4096, 1, 1)
    state["pre_logits.fc2.bias"] = tv["classifier.3.bias"]
    state["head.fc.weight"] = tv["classifier.6.weight"]
    state["head.fc.bias"] = tv["classifier.6.bias"]
    return state


@pytest.fixture(scope="module")
def imagenet_files(tmp_path_factory) -> tuple[dict[str, torch.Tensor], Path, Path]:
    tv = torchvision_vgg16_state(torch.Generator().manual_seed(31))
    folder = tmp_path_factory.mktemp("imagenet")
    tv_path = folder / "vgg16-397923af.pth"
    torch.save(tv, tv_path)
    timm_path = folder / "model.safetensors"
    save_file(timm_layout(tv), str(timm_path))
    return tv, tv_path, timm_path


def reference_fc6(fc6: torch.Tensor) -> torch.Tensor:
    """SSD's reduced fc6, written out independently: output 4i, taps 0/3/6 of the 7x7 window."""
    taps = [0, 3, 6]
    out = torch.empty(1024, 512, 3, 3)
    flat = fc6.reshape(4096, 25088)
    for a, ta in enumerate(taps):
        for b, tb in enumerate(taps):
            # torchvision flattens [512, 7, 7] channel-major: column c*49 + y*7 + x.
            columns = torch.arange(512) * 49 + ta * 7 + tb
            out[:, :, a, b] = flat[0::4][:, columns]
    return out


# ---------------------------------------------------------------- the mapping table


@pytest.mark.parametrize("fmt", ["torchvision", "timm"])
def test_key_map_covers_the_vgg16_trunk(fmt: str) -> None:
    with torch.device("meta"):
        model = build_model("ssd300_vgg16", in_channels=3, num_classes=20)
    trunk = {k for k in model.state_dict() if k.startswith("backbone.")}
    sources = [row[0] for row in KEY_MAP[fmt]]
    targets = [row[1] for row in KEY_MAP[fmt]]
    assert len(set(sources)) == len(sources) == 30 and set(targets) == trunk
    assert set(expected_shapes(fmt)) == set(sources)
    # Every mapped ImageNet tensor, except the first conv and fc6/fc7, fits the model as is.
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for source, target, conversion in KEY_MAP[fmt]:
        if conversion == "copy":
            assert expected_shapes(fmt)[source] == shapes[target], source
    assert {c for _, _, c in KEY_MAP[fmt]} == {"copy", "adapt", "fc6", "fc7", "every4"}
    tv_keys = {f"features.{i}.{k}" for i in TV_CONVS for k in ("weight", "bias")}
    assert {s for s in sources if s.startswith("features.")} == tv_keys


# ---------------------------------------------------------------- loading both layouts


def test_torchvision_layout_initialises_the_trunk(imagenet_files) -> None:
    tv, tv_path, _ = imagenet_files
    torch.manual_seed(0)
    model = build_model("ssd300_vgg16", in_channels=3, num_classes=2)
    head_before = model.head.conf[0][0].weight.detach().clone()
    report = load_backbone_checkpoint(model, tv_path, "torchvision")
    assert set(report) == {"copied", "adapted", "reinitialised", "unused"}
    assert len(report["copied"]) == 26  # 13 convs, weights and biases; 3 channels: as is
    assert report["adapted"] == [
        "backbone.fc6.weight", "backbone.fc6.bias", "backbone.fc7.weight", "backbone.fc7.bias"
    ]  # fmt: skip
    assert report["unused"] == ["classifier.6.bias", "classifier.6.weight"]
    assert all(not k.startswith("backbone.") for k in report["reinitialised"])
    assert "head.norms.0.weight" in report["reinitialised"]
    assert len(report["reinitialised"]) == 16 + 24 + 1  # extra layers, head convs, L2 scale
    state = model.state_dict()
    for key in (f"features.{index}.{kind}" for index in TV_CONVS for kind in ("weight", "bias")):
        assert torch.equal(state[f"backbone.{key}"], tv[key]), key  # identity mapping: as is
    assert torch.equal(state["backbone.fc6.weight"], reference_fc6(tv["classifier.0.weight"]))
    assert torch.equal(
        state["backbone.fc6.bias"], tv["classifier.0.bias"][torch.arange(0, 4096, 4)]
    )
    fc7 = tv["classifier.3.weight"]
    i, j = 37, 1001  # one element by its index arithmetic: output 4i, input 4j
    assert state["backbone.fc7.weight"][i, j, 0, 0] == fc7[4 * i, 4 * j]
    assert state["backbone.fc7.weight"].shape == (1024, 1024, 1, 1)
    assert torch.equal(state["backbone.fc7.weight"][:, :, 0, 0], fc7[0::4, 0::4])
    assert torch.equal(state["backbone.fc7.bias"], tv["classifier.3.bias"][0::4])
    assert torch.equal(model.head.conf[0][0].weight, head_before)  # the head keeps its init
    assert model.backbone.fc6.dilation == (6, 6) and model.backbone.fc6.padding == (6, 6)


def test_timm_safetensors_five_channels_and_one_training_step(imagenet_files) -> None:
    tv, _, timm_path = imagenet_files
    torch.manual_seed(1)
    model = build_model("ssd300_vgg16", in_channels=5, num_classes=2)
    report = load_backbone_checkpoint(model, timm_path, "timm")
    assert report["adapted"][0] == "backbone.features.0.weight"
    assert "backbone.features.0.weight" not in report["copied"]
    assert len(report["copied"]) == 25 and len(report["adapted"]) == 5
    assert report["unused"] == ["head.fc.bias", "head.fc.weight"]
    src = tv["features.0.weight"]
    first = model.backbone.features[0].weight.detach()
    assert first.shape == (64, 5, 3, 3)
    torch.testing.assert_close(first, src.mean(1, keepdim=True).expand(-1, 5, -1, -1) * 3 / 5)
    # A constant image gives the ImageNet filters' response to the same constant in 3 channels.
    torch.testing.assert_close(
        F.conv2d(torch.full((1, 5, 3, 3), 0.7), first), F.conv2d(torch.full((1, 3, 3, 3), 0.7), src)
    )
    state = model.state_dict()
    assert torch.equal(state["backbone.fc6.weight"], reference_fc6(tv["classifier.0.weight"]))
    assert torch.equal(state["backbone.features.28.weight"], tv["features.28.weight"])
    # One fine-tuning step at 300 px (the SSD layout's minimum is 268), batch 1.
    model.train()
    loss_fn = MultiBoxLoss(model.default_boxes)
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    images = torch.randn(1, 5, 300, 300)
    target = {"boxes": torch.tensor([[40.0, 60.0, 160.0, 200.0]]), "labels": torch.tensor([2])}
    loc, conf = model(images)
    assert loc.shape == (1, 8732, 4) and conf.shape == (1, 8732, 3)
    losses = loss_fn(loc, conf, [target], (300, 300))
    assert math.isfinite(losses["loss"].item()) and losses["num_pos"].item() > 0
    before = model.backbone.fc7.weight.detach().clone()
    optimiser.zero_grad()
    losses["loss"].backward()
    optimiser.step()
    assert not torch.equal(model.backbone.fc7.weight, before)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------- refusals


def _small_vgg_state(keys: list[str]) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(8, 3, 3, 3) if k.endswith("weight") else torch.zeros(8) for k in keys}


def test_refuses_a_file_that_does_not_fit(tmp_path: Path) -> None:
    model = build_model("ssd300_vgg16_dense", in_channels=3, num_classes=2, input_size=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    resnet = tmp_path / "resnet50-0676ba61.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 4)}, resnet)
    refusal = r"resnet50.*not a torchvision ImageNet VGG16.*30 keys are missing \(first features"
    with pytest.raises(CheckpointError, match=refusal + r"\.0\.weight; the file has conv1"):
        load_backbone_checkpoint(model, resnet, "torchvision")
    # Right keys, wrong shapes (a narrow VGG): the first offending key and the expected shape.
    narrow = tmp_path / "narrow.pth"
    torch.save(_small_vgg_state([row[0] for row in KEY_MAP["torchvision"]]), narrow)
    with pytest.raises(CheckpointError, match=r"features\.0\.weight has shape \[8, 3, 3, 3\], "
                       r"a torchvision ImageNet VGG16 has \[64, 3, 3, 3\]"):  # fmt: skip
        load_backbone_checkpoint(model, narrow, "torchvision")
    # timm keys read as torchvision: the line says which format the file has.
    timm_keys = tmp_path / "timm.safetensors"
    save_file(_small_vgg_state([r[0] for r in KEY_MAP["timm"]]), str(timm_keys))
    with pytest.raises(CheckpointError, match=r"has the timm layout: set format timm"):
        load_backbone_checkpoint(model, timm_keys, "torchvision")
    # A refused file leaves the model as it was.
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_refuses_a_dsod_model_unsafe_pickles_and_bad_files(tmp_path: Path) -> None:
    vgg = build_model("ssd300_vgg16_dense", in_channels=3, num_classes=2, input_size=64)
    dsod = build_model("dsod_tiny", in_channels=3, num_classes=2)
    with pytest.raises(CheckpointError, match=r"backbone 'vgg16'.*this model's backbone is 'dsod'"):
        load_backbone_checkpoint(dsod, tmp_path / "vgg16.pth", "torchvision")
    with pytest.raises(ConfigError, match=r"format must be one of \['torchvision', 'timm'\]"):
        load_backbone_checkpoint(vgg, tmp_path / "vgg16.pth", "caffe")  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"vgg16\.pth: checkpoint not found"):
        load_backbone_checkpoint(vgg, tmp_path / "vgg16.pth", "torchvision")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"features.0.weight": torch.zeros(1), "extra": _Arbitrary()}, unsafe)
    with pytest.raises(CheckpointError, match=r"unsafe\.pth: refused: not a plain checkpoint"):
        load_backbone_checkpoint(vgg, unsafe, "torchvision")
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"features.0.weight": torch.zeros(1)}, "epoch": 3}, wrapped)
    with pytest.raises(CheckpointError, match=r"30 keys are missing"):  # opened, then refused
        load_backbone_checkpoint(vgg, wrapped, "torchvision")
    not_tensors = tmp_path / "meta.pth"
    torch.save({"features.0.weight": torch.zeros(1), "epoch": 3}, not_tensors)
    with pytest.raises(CheckpointError, match=r"non-tensor entries \['epoch'\]"):
        load_backbone_checkpoint(vgg, not_tensors, "timm")
    corrupt = tmp_path / "model.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt or unreadable"):
        load_backbone_checkpoint(vgg, corrupt, "timm")


class _Arbitrary:
    """A Python object a weights-only load must not unpickle."""


def test_training_wrappers_and_prefixes_are_opened_and_a_vgg16_bn_is_named(tmp_path: Path):
    """A VGG16 saved inside a training checkpoint ({"model": ...}) under DistributedDataParallel
    (every key "module.") or torch.compile ("_orig_mod.") loads as the bare file does; a
    vgg16_bn file (BatchNorm layers shift the feature indices) is refused saying so."""
    from tests.test_checkpoint_sources import imagenet_vgg16

    state = imagenet_vgg16("torchvision", seed=3)
    bare = tmp_path / "vgg16.pth"
    torch.save(state, bare)
    reference = build_model("ssd300_vgg16_dense", in_channels=2, num_classes=2, input_size=64)
    expected_report = load_backbone_checkpoint(reference, bare, "torchvision")
    for prefix, wrapper in (("module.", "model"), ("_orig_mod.", "state_dict")):
        path = tmp_path / f"{wrapper}.pth"
        torch.save({wrapper: {prefix + k: v for k, v in state.items()}, "epoch": 90}, path)
        model = build_model("ssd300_vgg16_dense", in_channels=2, num_classes=2, input_size=64)
        assert load_backbone_checkpoint(model, path, "torchvision") == expected_report
        got, want = model.backbone.state_dict(), reference.backbone.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)
    # torchvision's vgg16_bn: conv at 0, 3, 7, ... with a BatchNorm after each
    bn_state, channels = {}, 3
    bn_convs = (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)
    for index, (width, _) in zip(bn_convs, TV_CONVS.values(), strict=True):
        bn_state[f"features.{index}.weight"] = torch.zeros(width, channels, 3, 3)
        for kind in ("weight", "bias", "running_mean", "running_var"):
            bn_state[f"features.{index + 1}.{kind}"] = torch.zeros(width)
        channels = width
    bn = tmp_path / "vgg16_bn-6c64b313.pth"
    torch.save(bn_state, bn)
    with pytest.raises(CheckpointError, match=r"vgg16_bn-6c64b313\.pth: .*BatchNorm statistics "
                       r"\(a vgg16_bn\?\).*use the vgg16 file without BatchNorm"):  # fmt: skip
        load_backbone_checkpoint(reference, bn, "torchvision")
