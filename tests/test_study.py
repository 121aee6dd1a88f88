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
