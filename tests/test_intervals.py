"""Intervals for the fine-tuned − scratch difference that hold their level with 2-5 seeds
(dsod_core.metrics.bootstrap.seed_test_interval) and the family's multiplicity adjustment."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dsod_core.metrics.bootstrap import (
    adjust_family,
    combine_terms,
    describe,
    holm,
    interval_at,
    p_value,
    paired_bootstrap,
    seed_test_interval,
    unit_draws,
)

DELTA = 0.05  # the true difference: its expectation over new test units and new seeds
UNIT_SD, NOISE_SD = 0.2, 0.1


def _differences(rng, sims, n_seeds, n_units, seed_sd):
    """diff[sim, unit, seed] = delta + unit effect (all seeds) + seed effect (all units) + noise."""
    return (
        DELTA
        + rng.normal(0.0, UNIT_SD, (sims, n_units, 1))
        + rng.normal(0.0, seed_sd, (sims, 1, n_seeds))
        + rng.normal(0.0, NOISE_SD, (sims, n_units, n_seeds))
    )


def _coverage(n_seeds, n_units, seed_sd, sims=1000, replicates=200, seed=0):
    """Share of simulated studies whose 95% interval holds DELTA. The metric is the mean over
    images of per-image scores (one image per unit), so a replicate's difference averaged
    over seeds is the mean of the drawn units' seed-averaged differences, exactly what
    seed_test_interval computes from metric callables (checked below)."""
    rng = np.random.default_rng(seed)
    diffs = _differences(rng, sims, n_seeds, n_units, seed_sd)
    per_unit, per_seed = diffs.mean(axis=2), diffs.mean(axis=1)
    hits = 0
    for s in range(sims):
        values = per_unit[s][unit_draws(rng, n_units, replicates)].mean(axis=1)
        low, high = combine_terms(per_seed[s], values, n_units)["ci"]
        hits += low <= DELTA <= high
    return hits / sims


def _mean_of(values):
    values = np.asarray(values, dtype=np.float64)
    return lambda positions: float(values[positions].mean())


def test_vectorised_replicates_are_what_seed_test_interval_computes():
    rng = np.random.default_rng(5)
    k, n = 9, 3
    a = rng.normal(size=(n, 2 * k))
    b = a + rng.normal(0.1, 0.2, size=(n, 2 * k))
    units = np.repeat(np.arange(k), 2)  # two images per unit
    result = seed_test_interval(
        units, [_mean_of(x) for x in a], [_mean_of(x) for x in b], replicates=150, seed=7
    )
    per_unit = (b - a).reshape(n, k, 2).mean(axis=(0, 2))
    values = per_unit[unit_draws(np.random.default_rng(7), k, 150)].mean(axis=1)
    same = combine_terms((b - a).mean(axis=1), values, k)
    assert result["ci"] == pytest.approx(same["ci"], abs=1e-12)
    assert result["diff"] == pytest.approx((b - a).mean())
    assert result["n_units"] == k and result["n_seeds"] == n and result["replicates"] == 150
    assert result["seed_sd"] == pytest.approx((b - a).mean(axis=1).std(ddof=1))
    # the test term is the bootstrap variance with the k/(k-1) correction
    assert result["test_se"] == pytest.approx(np.sqrt(values.var(ddof=1) * k / (k - 1)))
    assert result["se"] == pytest.approx(np.hypot(result["test_se"], result["seed_se"]))
    assert min(result["test_df"], result["seed_df"]) <= result["df"] <= k - 1
    assert result["note"] is None and "Cochran-Cox" in result["method"]
    assert describe(result).startswith("fine-tuned − scratch mAP@0.5: +")


# (seeds, units, seed sd): seed sd 0.15 with 2 seeds and 40 units puts about 90% of the
# variance of the difference in the seed term; seed sd 0.05 with 5 seeds and 12 units about 13%.
CONFIGS = [(n, k, sd) for sd in (0.05, 0.15) for n in (2, 3, 5) for k in (12, 40)]


@pytest.mark.parametrize("n_seeds,n_units,seed_sd", CONFIGS)
def test_interval_covers_the_truth_at_the_projects_sizes(n_seeds, n_units, seed_sd):
    coverage = _coverage(n_seeds, n_units, seed_sd, seed=n_seeds * 100 + n_units)
    assert coverage >= 0.93, f"coverage {coverage:.3f}"
    assert coverage <= 0.995  # and is not a useless everything-interval


def test_the_old_seed_bootstrap_undercovers_with_two_seeds():
    # Seed term dominating (2 seeds, 40 units, seed sd 0.15): resampling 2 seeds with
    # replacement cannot see the spread between training runs; its 95% interval misses often.
    rng = np.random.default_rng(11)
    sims, k = 200, 40
    diffs = _differences(rng, sims, 2, k, 0.15)
    zeros = _mean_of(np.zeros(k))
    hits = 0
    for s in range(sims):
        b = [_mean_of(diffs[s, :, j]) for j in range(2)]
        low, high = paired_bootstrap(np.arange(k), [zeros, zeros], b, replicates=100, seed=s)["ci"]
        hits += low <= DELTA <= high
    assert hits / sims < 0.9


def test_holm_by_hand():
    # p = [0.01, 0.04, 0.03, 0.005], m = 4. Sorted: 0.005, 0.01, 0.03, 0.04 ->
    # 4·0.005 = 0.02, 3·0.01 = 0.03, 2·0.03 = 0.06, 1·0.04 = 0.04 -> running max 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.3, 0.9]) == pytest.approx(
        [1.0, 0.9, 1.0]
    )  # 3·0.3, 2·0.5 -> capped, 0.9 -> max 1
    assert holm([]) == []
    with pytest.raises(ValueError, match="p-values"):
        holm([0.1, 1.5])


def test_holm_is_monotone_and_never_below_the_raw_p():
    p = np.random.default_rng(3).uniform(0.0, 0.2, size=12)
    adjusted = np.asarray(holm(p))
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0.0)
    assert np.all(adjusted >= p) and np.all(adjusted <= 1.0)


def _result(diff, seed_sd=0.04, n=3, k=20, test_sd=0.03):
    seeds = diff + seed_sd * np.array([-1.0, 0.0, 1.0])[:n]
    values = test_sd * np.random.default_rng(0).standard_normal(400)
    return combine_terms(seeds, values, k)


def test_p_value_is_symmetric_and_dual_to_the_interval():
    for diff in np.linspace(-0.2, 0.2, 81):
        up, down = _result(diff), _result(-diff)
        assert p_value(up) == pytest.approx(p_value(down), rel=1e-9)
        assert up["ci"] == pytest.approx([-down["ci"][1], -down["ci"][0]])
        assert up["contains_zero"] == (p_value(up) >= 0.05), diff
    assert p_value(_result(0.0)) == pytest.approx(1.0)
    # the p at which the interval just touches 0 is the level's alpha
    r = _result(0.1)
    assert min(abs(x) for x in interval_at(r, 1.0 - p_value(r))) == pytest.approx(0.0, abs=1e-7)


def test_one_seed_is_a_t_interval_on_the_test_term_and_says_so():
    values = 0.02 * np.random.default_rng(1).standard_normal(300)
    r = combine_terms([0.05], values, 15)
    assert r["seed_sd"] is None and r["df"] == 14.0 and "one seed" in r["note"]
    half = stats.t.ppf(0.975, 14) * r["se"]
    assert r["ci"] == pytest.approx([0.05 - half, 0.05 + half])
    assert p_value(r) == pytest.approx(2 * stats.t.sf(0.05 / r["se"], 14))
    with pytest.raises(ValueError, match="no spread"):
        combine_terms([0.05], [], 1)


def test_non_decomposable_metric_runs():
    rng = np.random.default_rng(4)
    a = rng.uniform(size=(3, 24))
    b = a + rng.uniform(0.0, 0.1, size=(3, 24))
    units = np.repeat(np.arange(8), 3)
    maximum = [lambda p, x=x: float(x[p].max()) for x in a]
    result = seed_test_interval(units, maximum, [lambda p, x=x: float(x[p].max()) for x in b])
    numbers = [result[f] for f in ("diff", "se", "df", "test_se", "seed_sd")] + result["ci"]
    assert all(np.isfinite(numbers)) and result["ci"][0] <= result["diff"] <= result["ci"][1]
    assert result["n_units"] == 8 and result["replicates"] == 1000


def test_adjust_family():
    results = [_result(0.02), _result(0.12), _result(0.3), _result(-0.05)]
    out = adjust_family(results, primary_index=0)
    assert out[0]["p_holm"] is None and out[0]["adjustment"] == "primary, unadjusted"
    assert out[0]["ci_adjusted"] == pytest.approx(results[0]["ci"])
    ps = [p_value(r) for r in results[1:]]
    assert [o["p_holm"] for o in out[1:]] == pytest.approx(holm(ps))
    for raw, o in zip(results[1:], out[1:]):
        assert o["adjustment"] == "Holm over 3 comparisons; Bonferroni interval"
        assert o["level_adjusted"] == pytest.approx(1 - 0.05 / 3)
        low, high = o["ci_adjusted"]
        assert low < raw["ci"][0] and high > raw["ci"][1]  # wider than unadjusted
        if not low <= 0.0 <= high:  # a Bonferroni interval clear of 0 implies Holm rejects
            assert o["p_holm"] < 0.05
    assert "p" in out[2] and out[2]["diff"] == results[2]["diff"]  # copies, inputs unchanged
    assert "p" not in results[2]
    every = adjust_family(results, primary_index=None)
    assert all(o["p_holm"] is not None for o in every)
    assert every[0]["adjustment"].startswith("Holm over 4 comparisons")
    with pytest.raises(ValueError, match="primary_index"):
        adjust_family(results, primary_index=4)
    with pytest.raises(ValueError, match="variance terms"):
        adjust_family(
            [paired_bootstrap(np.arange(4), _mean_of(np.zeros(4)), _mean_of(np.ones(4)))], 0
        )


def test_p_value_far_in_the_tail_and_with_an_uninformative_seed_term():
    """Regression: scipy's t quantile turns +inf far in the tail, which once made a p of 0
    for an interval that contains 0 (a 1-df seed term dominating)."""
    from dsod_core.metrics.bootstrap import interval_at, p_value

    wide = {"diff": 0.0269, "test_se": 0.05, "test_df": 11, "seed_se": 0.03, "seed_df": 1}
    p = p_value(wide)
    assert 0.5 < p < 1.0
    low, _ = interval_at(wide, 1.0 - p)  # the interval at level 1 - p just touches 0
    assert abs(low) < 1e-6
    sharp = {"diff": 0.5, "test_se": 0.01, "test_df": 11, "seed_se": 0.01, "seed_df": 4}
    assert 0.0 < p_value(sharp) < 1e-5
