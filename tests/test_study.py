"""Building blocks of the scratch-vs-fine-tuned study: the paired cluster bootstrap and nested
unit-grouped training subsets."""

from __future__ import annotations

import numpy as np
import pytest

from dsod_core.data.subsets import nested_unit_subsets
from dsod_core.metrics.bootstrap import describe, paired_bootstrap


def _mean_of(values):
    values = np.asarray(values, dtype=np.float64)
    return lambda positions: float(values[positions].mean())


def test_identical_and_shifted_detectors_have_exact_intervals():
    rng = np.random.default_rng(0)
    a = rng.normal(size=60)
    units = np.repeat(np.arange(20), 3)
    same = paired_bootstrap(units, _mean_of(a), _mean_of(a), replicates=200)
    assert same["diff"] == 0.0 and same["ci"] == [0.0, 0.0] and same["contains_zero"]
    shifted = paired_bootstrap(units, _mean_of(a), _mean_of(a + 0.1), replicates=200)
    assert shifted["diff"] == pytest.approx(0.1)
    assert shifted["ci"] == pytest.approx([0.1, 0.1])
    assert not shifted["contains_zero"] and "fine-tuned is better" in describe(shifted)
    assert shifted["n_units"] == 20


def test_interval_matches_the_normal_theory_answer():
    # 400 independent units with paired differences N(0.05, 0.2): the 95% interval of the mean
    # difference is mean ± 1.96 · sd / sqrt(400) (to within bootstrap noise).
    rng = np.random.default_rng(1)
    a = rng.normal(size=400)
    d = rng.normal(0.05, 0.2, size=400)
    res = paired_bootstrap(np.arange(400), _mean_of(a), _mean_of(a + d), replicates=4000)
    half = 1.96 * d.std(ddof=1) / np.sqrt(400)
    assert res["diff"] == pytest.approx(d.mean())
    assert res["ci"][0] == pytest.approx(d.mean() - half, abs=0.15 * half)
    assert res["ci"][1] == pytest.approx(d.mean() + half, abs=0.15 * half)


def test_units_not_images_are_the_resampling_level():
    # Each unit holds 10 identical images: resampling units gives the interval of one image
    # per unit; treating the 10 copies as independent would shrink it by about sqrt(10).
    rng = np.random.default_rng(2)
    per_unit = rng.normal(0.0, 1.0, size=50)
    a = np.zeros(500)
    b = np.repeat(per_unit, 10)
    grouped = paired_bootstrap(np.repeat(np.arange(50), 10), _mean_of(a), _mean_of(b), seed=3)
    one_each = paired_bootstrap(np.arange(50), _mean_of(np.zeros(50)), _mean_of(per_unit), seed=3)
    naive = paired_bootstrap(np.arange(500), _mean_of(a), _mean_of(b), seed=3)
    assert grouped["ci"] == pytest.approx(one_each["ci"])
    width = lambda r: r["ci"][1] - r["ci"][0]  # noqa: E731
    assert width(naive) < 0.5 * width(grouped)
    assert grouped["contains_zero"] and "contains 0" in describe(grouped)


def test_nested_unit_subsets():
    units = [f"vol{v}" for v in range(10) for _ in range(7)]  # 10 volumes of 7 slices
    subsets = nested_unit_subsets(units, [0.25, 0.5, 1.0], seed=4)
    small, half, full = subsets[0.25], subsets[0.5], subsets[1.0]
    assert set(small) <= set(half) <= set(full) and len(full) == 70
    for subset, volumes in ((small, 3), (half, 5)):  # ceil(0.25 * 10) = 3 volumes
        chosen = {units[i] for i in subset}
        assert len(chosen) == volumes and len(subset) == 7 * volumes  # whole volumes only
    again = nested_unit_subsets(units, [0.5], seed=4)[0.5]
    assert np.array_equal(again, half)
    other = nested_unit_subsets(units, [0.5], seed=5)[0.5]
    assert not np.array_equal(other, half)
    with pytest.raises(ValueError, match="train fractions"):
        nested_unit_subsets(units, [0.0])


def _random_detection_set(rng, n_images, num_classes=2):
    gts, dets = [], []
    for _ in range(n_images):
        n = int(rng.integers(0, 4))
        xy = rng.uniform(0, 40, size=(n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 20, size=(n, 2))], axis=1)
        labels = rng.integers(1, num_classes + 1, size=n)
        gts.append({"boxes": boxes, "labels": labels, "difficult": rng.random(n) < 0.15})
        # Detections: jittered copies of some ground truths (hits or near misses) + clutter.
        keep = rng.random(n) < 0.8
        jitter = boxes[keep] + rng.normal(0, 3, size=(int(keep.sum()), 4))
        m = int(rng.integers(0, 4))
        cxy = rng.uniform(0, 40, size=(m, 2))
        clutter = np.concatenate([cxy, cxy + 10], axis=1)
        d_boxes = np.concatenate([jitter, clutter])
        d_labels = np.concatenate([labels[keep], rng.integers(1, num_classes + 1, size=m)])
        dets.append({"boxes": d_boxes, "labels": d_labels, "scores": rng.random(len(d_boxes))})
    return gts, dets


def test_resampled_voc_equals_scoring_the_multiset_again():
    from dsod_core.metrics.voc import ResampledVOC, evaluate_voc

    rng = np.random.default_rng(3)
    gts, dets = _random_detection_set(rng, 30)
    fast = ResampledVOC(gts, dets, 2)
    assert fast.map(np.ones(30)) == pytest.approx(evaluate_voc(gts, dets, 2)["map"], abs=1e-12)
    for _ in range(5):
        positions = rng.integers(0, 30, size=30)
        weights = np.bincount(positions, minlength=30)
        again = evaluate_voc([gts[i] for i in positions], [dets[i] for i in positions], 2)
        # Distinct random scores: no ties, so the weighted pass is exact.
        assert fast.map(weights) == pytest.approx(again["map"], abs=1e-12)
    with pytest.raises(ValueError, match="30 weights"):
        fast.map(np.ones(29))
    # The saved table (the evaluate stage's matches.npz) gives the same values.
    from dsod_core.metrics.voc import match_detections

    saved = ResampledVOC.from_matches(match_detections(gts, dets, 2))
    assert saved.map(weights) == fast.map(weights)


def test_seeds_are_paired_and_resampled():
    rng = np.random.default_rng(1)
    a = rng.normal(size=40)
    units = np.repeat(np.arange(20), 2)
    # Seed 0 shifts by 0.1, seed 1 by 0.3: the difference is their mean and every replicate
    # (the mean over 2 seeds drawn with replacement) lies in [0.1, 0.3].
    result = paired_bootstrap(
        units,
        [_mean_of(a), _mean_of(a)],
        [_mean_of(a + 0.1), _mean_of(a + 0.3)],
        replicates=400,
    )
    assert result["diff"] == pytest.approx(0.2)
    assert result["seed_diffs"] == pytest.approx([0.1, 0.3])
    assert result["n_seeds"] == 2
    low, high = result["ci"]
    assert 0.1 - 1e-12 <= low < 0.2 < high <= 0.3 + 1e-12
    # Seed spread makes the interval wider than a single seed's (which is a point here).
    with pytest.raises(ValueError, match="paired seeds"):
        paired_bootstrap(units, [_mean_of(a)], [_mean_of(a), _mean_of(a)])
