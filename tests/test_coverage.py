"""Default-box coverage: the exact nearest-centre computation equals a brute-force count,
fitted default boxes raise the coverage of tiny boxes, the report and its warning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dsod_core.boxes.coverage import (
    best_prior_iou,
    brute_force_best_iou,
    coverage_report,
    coverage_warning,
    fit_prior_sizes,
    matcher_stats,
)
from dsod_core.boxes.priors import default_boxes, prior_maps
from dsod_core.data.store import StoreReader
from dsod_core.model import DSODConfig, build_model
from dsod_core.model.fit import (
    attach_coverage,
    config_prior_maps,
    covered,
    fitted_overrides,
    run_config,
    store_coverage,
    training_boxes,
)


def _random_boxes(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    wh = rng.uniform(lo, hi, (n, 2))
    c = rng.uniform(-0.05, 1.05, (n, 2))  # some centres outside the image too
    return np.concatenate([c - wh / 2, c + wh / 2], axis=1)


@pytest.mark.parametrize(
    "maps_of",
    [
        lambda: prior_maps([38, 19, 10, 5, 3, 2], 300, "dsod300"),  # centres outside at 300
        lambda: list(
            build_model(
                "dsod_tiny", in_channels=1, num_classes=2, input_size=128, high_res_source=True
            ).prior_maps
        ),
    ],
)
def test_best_iou_equals_brute_force(maps_of) -> None:
    maps = maps_of()
    rng = np.random.default_rng(0)
    boxes = np.concatenate(
        [_random_boxes(rng, 400, 0.01, 0.08), _random_boxes(rng, 300, 0.05, 0.9)]
    )
    fast, brute = best_prior_iou(boxes, maps), brute_force_best_iou(boxes, maps)
    np.testing.assert_allclose(fast, brute, rtol=0, atol=1e-12)
    assert int((fast >= 0.5).sum()) == int((brute >= 0.5).sum())
    assert 0 < int((fast >= 0.5).sum()) < len(boxes)  # a count that could be anything


def test_prior_maps_rebuild_the_layout_bit_for_bit() -> None:
    maps = prior_maps([38, 19, 10, 5, 3, 2], 300, "auto")
    ref = default_boxes([38, 19, 10, 5, 3, 2], 300, "dsod300")
    assert ref.shape == (8744, 4)
    assert torch.equal(torch.cat([m.boxes() for m in maps]).float(), ref)


def _tiny_set(n: int = 300, size: int = 128, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n // 3):
        wh = rng.uniform(4, 8, (3, 2))
        xy = rng.uniform(0, size - 8, (3, 2))
        out.append(np.concatenate([xy, xy + wh], axis=1))
    return out


def test_fitted_default_boxes_raise_coverage_of_tiny_boxes() -> None:
    boxes = _tiny_set()
    for high_res in (False, True):
        cfg = DSODConfig(
            in_channels=1, num_classes=1, input_size=128, high_res_source=high_res,
            stem_channels=16, bottleneck_width=32, growth_rate=16, block_layers=(2, 2, 2, 2),
            learned_half_channels=64, extra_channels=(64, 32, 32, 32),
        )  # fmt: skip
        before = coverage_report(boxes, config_prior_maps(cfg), 128)
        flat = np.concatenate(boxes) / 128
        fitted = fit_prior_sizes(flat[:, 2:] - flat[:, :2], config_prior_maps(cfg))
        after = coverage_report(boxes, config_prior_maps(cfg.replace(**fitted)), 128)
        assert before["boxes"] == after["boxes"] == 300
        if not high_res:
            assert before["coverage"] < 0.05  # the smallest default box is 12.8 px
            assert after["coverage"] > before["coverage"] + 0.1
            plain = after["coverage"]
        else:  # the stride-4 map's own boxes (6.4 px) already fit; its grid places them better
            assert before["coverage"] > plain + 0.3 and after["coverage"] > plain + 0.3
    sizes = before["sizes"]
    assert 4 <= sizes["side_px"][0] <= sizes["side_px"][3] <= sizes["side_px"][-1] <= 8
    assert sizes["side_frac"][3] == pytest.approx(sizes["side_px"][3] / 128, abs=1e-3)


def test_fit_keeps_counts_and_ordering() -> None:
    maps = prior_maps([16, 8, 4, 2, 1, 1], 128)
    fitted = fit_prior_sizes(np.array([[0.3, 0.1], [0.31, 0.12], [0.05, 0.05]]), maps)
    assert len(fitted["prior_min_sizes"]) == len(fitted["prior_max_sizes"]) == 6
    assert all(a <= b for a, b in zip(fitted["prior_min_sizes"], fitted["prior_max_sizes"]))
    r1, r2 = fitted["prior_ratios"]
    assert 1.25 <= r1 and r2 >= r1 + 0.25
    empty = fit_prior_sizes(np.zeros((0, 2)), maps)
    assert empty["prior_min_sizes"] == [m.min_size for m in maps]


def test_matcher_stats_count_matched_boxes() -> None:
    maps = prior_maps([16, 8, 4, 2, 1, 1], 128)
    prior = maps[0]
    step, s = prior.step, prior.min_size
    exact = np.array([[0.5 * step - s / 2, 0.5 * step - s / 2, 0.5 * step + s / 2,
                       0.5 * step + s / 2]])  # fmt: skip
    stats = matcher_stats([exact], maps)
    assert stats["recall"] == 1.0 and stats["positives_per_box"] >= 1
    # Two identical boxes compete for the same best prior: the bipartite step gives each one.
    both = matcher_stats([np.concatenate([exact, exact])], maps)
    assert both["recall"] == 1.0


def test_warning_names_numbers_and_params() -> None:
    report = coverage_report(_tiny_set(30), prior_maps([16, 8, 4, 2, 1, 1], 128), 128)
    line = coverage_warning(report, 0.8)
    assert line is not None and "\n" not in line
    for text in ("training boxes", "input_size", "prior_fit", "high_res_source", "tiling"):
        assert text in line
    assert coverage_warning(report, 0.0) is None


def test_store_coverage_and_prepare_report(tmp_path) -> None:
    from tests.synthetic import write_synthetic_store

    store = write_synthetic_store(tmp_path / "s.h5", n=24, size=64, object_scale=(0.05, 0.1))
    report = store_coverage(store, variant="dsod_tiny", input_size=64)
    assert report["boxes"] > 0 and report["warning"] is not None
    assert report["sizes"]["side_px"][-1] <= 0.1 * 64 + 1e-6
    fitted = store_coverage(store, variant="dsod_tiny", input_size=256, prior_fit=True,
                            overrides={"high_res_source": True}, min_coverage=0.01)  # fmt: skip
    assert fitted["coverage"] > report["coverage"] and fitted["warning"] is None
    # The store-level fit never covers fewer boxes than the layout's own default boxes.
    reader = StoreReader(store)
    for overrides in ({}, {"high_res_source": True}):
        cfg = run_config(reader, "dsod_tiny", 64, overrides)
        boxes = np.concatenate(training_boxes(reader, 64)) / 64
        fit = cfg.replace(**fitted_overrides(reader, cfg))
        assert covered(boxes, config_prior_maps(fit)) >= covered(boxes, config_prior_maps(cfg))
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"dataset": "x"}))
    line = attach_coverage(path, store, variant="dsod_tiny", input_size=64)
    saved = json.loads(path.read_text())
    assert saved["dataset"] == "x" and saved["default_boxes"]["warning"] == line
