"""The stride-4 source (high_res_source), fitted default boxes in the model config, and the
per-dataset input size: shapes, parameter arithmetic, export, transfer and the params."""

from __future__ import annotations

import copy

import pytest
import torch

from dsod_core.model import DSODConfig, build_model
from dsod_core.model.summary import count_learnable, summarize
from dsod_core.transfer import load_transferred


def _tiny(size: int = 128, **overrides):
    torch.manual_seed(0)
    return build_model("dsod_tiny", in_channels=2, num_classes=3, input_size=size, **overrides)


def test_high_res_source_adds_one_stride4_map_and_keeps_the_six() -> None:
    plain, hr = _tiny(), _tiny(high_res_source=True)
    assert hr.source_sizes == (*plain.source_sizes, 32)  # 128 px / 4
    assert hr.boxes_per_location == (*plain.boxes_per_location, 4)
    assert hr.num_priors == plain.num_priors + 32 * 32 * 4
    assert torch.equal(hr.default_boxes[: plain.num_priors], plain.default_boxes)
    extra = hr.default_boxes[plain.num_priors :]
    assert torch.allclose(extra[:4, 2:].min(), torch.tensor(0.05 / 2**0.5))
    p_state, h_state = plain.state_dict(), hr.state_dict()
    assert all(h_state[k].shape == v.shape for k, v in p_state.items())  # same names, shapes
    # Hand arithmetic of what the flag adds: BN + 1x1 conv of block 1's output, the L2 scale,
    # and the two 3x3 head convs with their BNs (4 boxes, K + 1 = 4 classes).
    c_in, c = hr.backbone.block1.out_channels, hr.config.high_res_channels
    added = 2 * c_in + c_in * c + c + (9 * c * 16 + 2 * 16) + (9 * c * 16 + 2 * 16)
    assert count_learnable(hr) - count_learnable(plain) == added
    loc, conf = hr(torch.randn(2, 2, 128, 128))
    assert loc.shape == (2, hr.num_priors, 4) and conf.shape == (2, hr.num_priors, 4)


def test_summary_counts_of_the_variants_are_unchanged_by_the_flag() -> None:
    base = {r["variant"]: r for r in summarize(["dsod300", "dsod_tiny"])}
    assert base["dsod300"]["num_priors"] == 8744
    assert base["dsod300"]["params"] == count_learnable(
        build_model("dsod300", in_channels=3, num_classes=20)
    )
    high = {r["variant"]: r for r in summarize(["dsod300"], high_res_source=True)}
    assert high["dsod300"]["num_priors"] == 8744 + 75 * 75 * 4
    assert high["dsod300"]["params"] > base["dsod300"]["params"]


def test_high_res_model_exports_to_onnx_and_torchscript(tmp_path) -> None:
    from dsod_core.export import check_onnx_parity, export_onnx

    model = _tiny(64, high_res_source=True).eval()
    path = export_onnx(model, tmp_path / "m.onnx", input_size=64, in_channels=2)
    assert check_onnx_parity(model, path) <= 1e-4
    x = torch.randn(2, 2, 64, 64)
    traced = torch.jit.trace(model, x)
    traced.save(str(tmp_path / "m.pt"))
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    for a, b in zip(loaded(x), model(x)):
        torch.testing.assert_close(a, b)


def test_transfer_across_input_sizes_and_to_the_flag() -> None:
    source = _tiny(64)
    for target in (_tiny(128), _tiny(96, high_res_source=True)):
        before = copy.deepcopy(target.state_dict())
        report = load_transferred(target, source.state_dict(), same_classes=True)
        assert not report["adapted"]
        state = target.state_dict()
        for name in report["copied"]:
            assert torch.equal(state[name], source.state_dict()[name]), name
        fresh = set(report["reinitialised"])
        assert fresh == set(state) - set(source.state_dict())
        assert all(torch.equal(state[k], before[k]) for k in fresh)
        if target.config.high_res_source:
            assert any(k.startswith("high_res.") for k in fresh)
            assert {k for k in fresh if k.startswith("head.")} == {
                k for k in state if k.startswith("head.") and ".6." in k
            }
        assert target.default_boxes.shape[0] == target.num_priors != source.num_priors


def test_fitted_priors_rebuild_from_the_config() -> None:
    fitted = {
        "prior_min_sizes": [0.04, 0.1, 0.2, 0.3, 0.5, 0.7, 0.02],
        "prior_max_sizes": [0.06, 0.2, 0.3, 0.5, 0.7, 0.9, 0.04],
        "prior_ratios": [1.5, 2.5],
    }
    a = _tiny(high_res_source=True, **fitted)
    cfg = DSODConfig.from_dict(a.config.to_dict())
    b = build_model("dsod_tiny", in_channels=2, num_classes=3, input_size=128,
                    **{k: v for k, v in cfg.to_dict().items()
                       if k not in ("in_channels", "num_classes", "input_size")})  # fmt: skip
    assert torch.equal(a.default_boxes, b.default_boxes)
    assert a.num_priors == _tiny(high_res_source=True).num_priors  # same counts, same head
    first = a.default_boxes[0]
    assert float(first[2]) == pytest.approx(0.04)
    from dsod_core.errors import ConfigError

    with pytest.raises(ConfigError, match="prior_min_sizes"):
        _tiny(prior_min_sizes=[0.1] * 7, prior_max_sizes=[0.2] * 7)  # 6 maps without the flag
    with pytest.raises(ConfigError, match="prior_max_sizes"):
        _tiny(prior_min_sizes=[0.1] * 6)


def test_dataset_input_size_reaches_the_run_config() -> None:
    from pipelines.params import build_config, coverage_settings, dataset_input_size

    params = {
        "model": {"variant": "dsod_tiny", "input_size": 64, "prior_fit": True},
        "datasets": {"small": {"input_size": 256}, "big": {}},
    }
    assert dataset_input_size(params, "small") == 256
    assert dataset_input_size(params, "big") == 64
    cfg = build_config(params, "small", "scratch", "out", "s.h5")
    assert cfg.input_size == 256
    assert build_config(params, "big", "scratch", "out", "s.h5").input_size == 64
    settings = coverage_settings(params, "small")
    assert settings["input_size"] == 256 and settings["prior_fit"] is True
