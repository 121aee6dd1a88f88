"""Paired bootstrap intervals for the difference of two detectors on one test set.

Test images are not independent: slices of one CT volume, chips of one scene and frames of one
sequence share their content. The interval is therefore a *cluster* bootstrap: each
replicate draws the test set's source units (a volume, a scene, an image) with replacement,
takes every image of every drawn unit, and scores **both** detectors on that same replicate,
so the difference is paired (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993,
percentile interval; units as the resampling level as in Field & Welsh, 2007).

The metric is any function of a list of image positions (mAP of the images at those
positions, with repeats for units drawn twice): mAP does not decompose into per-image terms,
so it is recomputed on every replicate (``dsod_core.metrics.voc.ResampledVOC`` makes that one
pass over the matched detections).

Several training seeds: pass one metric per seed for each detector, paired by position (seed
``s`` of scratch with seed ``s`` of fine-tuned). A replicate then also draws the seeds with
replacement, so the interval holds the spread between training runs as well as the test
set's; the difference is the mean over seeds.

Intervals that hold their level with 2-5 seeds (:func:`seed_test_interval`)
--------------------------------------------------------------------------
Resampling 2 or 3 seeds with replacement (``paired_bootstrap``) sees almost none of the spread
between training runs: in the simulation of ``tests/test_intervals.py`` (below) its nominal
95% interval covers the true difference 0.70 of the time with 2 seeds and 40 units, 0.79 with
2 seeds and 12 units, 0.82 with 3 seeds and 40 units (seed sd 0.15; 500 studies each).
:func:`seed_test_interval` keeps the point estimate ``D`` = mean over seeds of ``d_s`` (seed
``s``'s difference on the full test set) and builds the interval from two terms:

* test set: the variance of a paired cluster bootstrap of the units, every seed kept in each
  replicate (the replicate's value is the mean over seeds of the difference on the drawn
  units), times ``k/(k-1)`` (``k`` units; the plug-in bootstrap variance is ``(k-1)/k`` of the
  usual unbiased one), with ``k-1`` degrees of freedom;
* seeds: ``s^2/n`` of the ``n`` seed differences ``d_s`` (ddof 1), ``n-1`` degrees of freedom.
  A fine-tuned seed paired with one source seed is one observation, so the source models'
  spread is in this term. With one seed the term is absent and the result's ``note`` says so.

``se = sqrt(v_test + s^2/n)`` and the interval is ``D ± c·se`` with the Cochran-Cox critical
value ``c = (v_test·t_{k-1} + (s^2/n)·t_{n-1}) / (v_test + s^2/n)`` (Cochran & Cox,
"Experimental Designs", 1957; the t quantiles at ``(1+level)/2``). The result's ``df`` is the
effective degrees of freedom whose t quantile equals ``c``. The first choice, the
Welch-Satterthwaite df ``V^2 / (v_test^2/(k-1) + (s^2/n)^2/(n-1))`` with ``t_df``,
under-covers when the seed term dominates and has 1-2 df: an underestimated ``s^2`` also
raises that df, so the interval shrinks twice (measured 0.868 with 2 seeds, 40 units, seed sd
0.15; 0.898 with seed sd 0.10; 0.911 with 2 seeds, 12 units, seed sd 0.15; 0.920-0.924 with 3
seeds, 40 units; 2000 studies each). The conservative ``min(n-1, k-1)`` df covers 0.98-1.00
but with 2 seeds its median interval is 1.5-3.1x the Cochran-Cox one. Cochran-Cox weights each
term's own quantile and covers at least about the nominal level in the project's range:

Coverage of the nominal 95% interval; truth: ``delta`` of ``diff[unit, seed] = delta + unit
effect (sd 0.2) + seed effect + noise (sd 0.1)``, one image per unit, 200 bootstrap
replicates; "seed share" = the seed term's share of Var(D); first column: the test's 1000
studies per configuration (its fixed RNG seeds), second: 4000 other studies.

    seeds units seed sd  seed share   coverage (1000)  coverage (4000)
      2    12    0.05       0.25         0.986            0.984
      2    40    0.05       0.53         0.964            0.974
      3    12    0.05       0.19         0.976            0.981
      3    40    0.05       0.43         0.974            0.977
      5    12    0.05       0.12         0.963            0.972
      5    40    0.05       0.32         0.957            0.964
      2    12    0.15       0.75         0.966            0.964
      2    40    0.15       0.91         0.938            0.945
      3    12    0.15       0.67         0.965            0.975
      3    40    0.15       0.87         0.953            0.957
      5    12    0.15       0.56         0.961            0.968
      5    40    0.15       0.81         0.957            0.961

Near a pure seed term with 2 seeds (seed share 0.98-1.00) it measured 0.938-0.949 (4000
studies each): it tends to the exact ``t_{n-1}`` interval there. The price of few seeds is
width: the median interval is 1.5-2.1x the (under-covering) Welch one with 2 seeds, 1.2-1.3x
with 3 and 1.1x with 5 (2000 studies per configuration above). For a non-decomposable
metric (mAP) the bootstrap variance is an approximation of the test term; the seed term is not.

Several comparisons (:func:`adjust_family`): the primary comparison is tested at the level
unadjusted; the ``m`` others get Holm (1979) step-down adjusted p-values (:func:`holm`; it
controls the familywise error and rejects at least what Bonferroni rejects) and Bonferroni
intervals at level ``1 - alpha/m``. Holm has no interval of its own that matches its tests
(the step-down interval depends on the other comparisons' outcomes), so the reported
interval is the Bonferroni one: it holds simultaneously over the ``m`` and, if it excludes 0,
Holm rejects too (Holm's adjusted p is at most ``m·p``); the converse need not hold.
:func:`p_value` is the dual of the interval: the smallest ``alpha`` whose interval excludes 0
(with one term, the t test of ``D/se``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
from scipy import optimize, special

Metric = Callable[[np.ndarray], float]


def unit_groups(units: Sequence[Hashable]) -> list[np.ndarray]:
    """Image positions of each unit, units in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for i, unit in enumerate(units):
        groups.setdefault(unit, []).append(i)
    return [np.asarray(v, dtype=np.int64) for v in groups.values()]


def _paired_runs(
    units: Sequence[Hashable],
    metric_a: Metric | Sequence[Metric],
    metric_b: Metric | Sequence[Metric],
    level: float,
) -> tuple[list[np.ndarray], list[tuple[Metric, Metric]]]:
    """(the units' image positions, the (a, b) metric pair of every seed), checked."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    groups = unit_groups(units)
    if not groups:
        raise ValueError("no test images")
    runs_a = [metric_a] if callable(metric_a) else list(metric_a)
    runs_b = [metric_b] if callable(metric_b) else list(metric_b)
    if not runs_a or len(runs_a) != len(runs_b):
        raise ValueError(f"need paired seeds, got {len(runs_a)} and {len(runs_b)} metrics")
    return groups, list(zip(runs_a, runs_b))


def paired_bootstrap(
    units: Sequence[Hashable],
    metric_a: Metric | Sequence[Metric],
    metric_b: Metric | Sequence[Metric],
    *,
    replicates: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """The difference ``metric_b − metric_a`` on the test set and its percentile interval.

    Args:
        units: the source unit of each test image (same order as the metrics' positions).
        metric_a, metric_b: ``positions -> value`` for the two detectors (e.g. scratch and
            fine-tuned mAP@0.5 of the images at ``positions``), or one such function per
            training seed for each (equal numbers, paired by position).
        replicates: bootstrap replicates; ``seed`` makes them reproducible.
        level: coverage of the interval (0.95: the 2.5 and 97.5 percentiles).

    Returns ``diff`` (on the full set, mean over seeds), ``ci`` ``[low, high]``,
    ``n_units``, ``n_seeds``, ``seed_diffs`` (each seed's difference on the full set),
    ``replicates`` and ``contains_zero``.
    """
    groups, runs = _paired_runs(units, metric_a, metric_b, level)
    runs_a, runs_b = [a for a, _ in runs], [b for _, b in runs]
    n_seeds = len(runs)
    everything = np.concatenate(groups)
    seed_diffs = [float(b(everything) - a(everything)) for a, b in runs]
    rng = np.random.default_rng(seed)
    values = np.empty(replicates, dtype=np.float64)
    for r in range(replicates):
        drawn = rng.integers(0, len(groups), size=len(groups))
        positions = np.concatenate([groups[u] for u in drawn])
        seeds = rng.integers(0, n_seeds, size=n_seeds) if n_seeds > 1 else [0]
        values[r] = np.mean([runs_b[s](positions) - runs_a[s](positions) for s in seeds])
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return {
        "diff": float(np.mean(seed_diffs)),
        "ci": [float(low), float(high)],
        "n_units": len(groups),
        "n_seeds": n_seeds,
        "seed_diffs": seed_diffs,
        "replicates": int(replicates),
        "level": float(level),
        "contains_zero": bool(low <= 0.0 <= high),
    }


def describe(result: dict[str, Any], what: str = "fine-tuned − scratch mAP@0.5") -> str:
    """One sentence for a report: the difference, its interval, and whether 0 is inside."""
    low, high = result["ci"]
    pct = round(result["level"] * 100)
    text = (
        f"{what}: {result['diff']:+.3f} ({pct}% CI {low:+.3f} to {high:+.3f}, "
        f"{result['n_units']} units, {result.get('n_seeds', 1)} seeds)"
    )
    if result["n_units"] < 5:
        # a bootstrap over fewer units than this mostly measures the units, not the models
        return text + "; too few test units for the interval to mean much."
    if result["contains_zero"]:
        return text + "; the interval contains 0: no difference is shown."
    return text + ("; fine-tuned is better." if low > 0 else "; scratch is better.")


# --- Intervals that hold their level with few seeds (see the module docstring) -------------

SEED_TEST_METHOD = "unit cluster bootstrap x k/(k-1) + seed variance, Cochran-Cox t"


def unit_draws(rng: np.random.Generator, n_units: int, replicates: int) -> np.ndarray:
    """The units each bootstrap replicate draws: ``[replicates, n_units]`` unit indices, drawn
    with replacement (:func:`seed_test_interval` uses exactly these draws)."""
    return rng.integers(0, n_units, size=(replicates, n_units))


def seed_test_interval(
    units: Sequence[Hashable],
    metric_a: Metric | Sequence[Metric],
    metric_b: Metric | Sequence[Metric],
    *,
    replicates: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """The difference ``metric_b − metric_a`` (mean over seeds) with an interval that holds
    both the test set's spread and the spread between training runs (module docstring).

    Args:
        units, metric_a, metric_b: as :func:`paired_bootstrap` (one metric per seed for each
            detector, paired by position; a fine-tuned seed whose source model differs per seed
            is still one paired observation, so the seed term carries the source's spread).
        replicates: cluster-bootstrap replicates of the test units (every seed kept in each);
            ``seed`` makes them reproducible.
        level: coverage of the interval.

    Returns the fields of :func:`combine_terms`.
    """
    groups, runs = _paired_runs(units, metric_a, metric_b, level)
    everything = np.concatenate(groups)
    seed_diffs = [float(b(everything) - a(everything)) for a, b in runs]
    values = np.zeros(0)
    if len(groups) > 1:
        draws = unit_draws(np.random.default_rng(seed), len(groups), replicates)
        values = np.empty(len(draws), dtype=np.float64)
        for r, drawn in enumerate(draws):
            positions = np.concatenate([groups[u] for u in drawn])
            values[r] = np.mean([b(positions) - a(positions) for a, b in runs])
    return combine_terms(seed_diffs, values, len(groups), level=level)


def combine_terms(
    seed_diffs: Sequence[float],
    replicate_values: Sequence[float] | np.ndarray,
    n_units: int,
    *,
    level: float = 0.95,
) -> dict[str, Any]:
    """The interval of :func:`seed_test_interval` from its parts: each seed's difference on
    the full test set and the cluster-bootstrap replicates (mean over seeds of the difference on
    each replicate's units).

    Returns ``diff``, ``ci`` ``[low, high]``, ``se``, ``df`` (the effective degrees of freedom:
    the t quantile with ``df`` equals the combined critical value at ``level``), ``level``,
    ``n_units``, ``n_seeds``, ``seed_diffs``, ``seed_sd``/``seed_se``/``seed_df`` (None for one
    seed), ``test_se``/``test_df`` (None for one unit), ``replicates``, ``contains_zero``,
    ``method`` and ``note`` (what the interval leaves out, or None).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    d = np.asarray(seed_diffs, dtype=np.float64)
    values = np.asarray(replicate_values, dtype=np.float64)
    n, k = int(d.size), int(n_units)
    if n == 0:
        raise ValueError("no seed differences")
    result: dict[str, Any] = {
        "diff": float(d.mean()),
        "level": float(level),
        "n_units": k,
        "n_seeds": n,
        "seed_diffs": d.tolist(),
        **_spread_terms(d, values, k),
        "replicates": int(values.size),
        "method": SEED_TEST_METHOD,
    }
    low, high = interval_at(result, level)
    result.update(
        ci=[low, high],
        se=float(np.sqrt(sum(v for v, _ in _terms(result)))),
        df=effective_df(result, level),
        contains_zero=bool(low <= 0.0 <= high),
    )
    return result


def _spread_terms(d: np.ndarray, values: np.ndarray, k: int) -> dict[str, Any]:
    """The test-set term (bootstrap variance x k/(k-1), k-1 df) and the seed term (s^2/n,
    n-1 df) of :func:`combine_terms`, None where one unit or one seed leaves a term out."""
    n, notes = int(d.size), []
    out: dict[str, Any] = dict.fromkeys(("seed_sd", "seed_se", "seed_df", "test_se", "test_df"))
    if k >= 2:
        if values.size < 2:
            raise ValueError(f"need at least 2 bootstrap replicates, got {values.size}")
        out["test_se"] = float(np.sqrt(values.var(ddof=1) * k / (k - 1)))
        out["test_df"] = k - 1
    else:
        notes.append("one test unit: the interval holds the seeds' spread only")
    if n >= 2:
        out["seed_sd"] = float(d.std(ddof=1))
        out["seed_se"], out["seed_df"] = out["seed_sd"] / float(np.sqrt(n)), n - 1
    else:
        notes.append(
            "one seed: the interval holds the test set's spread only, not the spread "
            "between training runs"
        )
    if out["test_se"] is None and out["seed_se"] is None:
        raise ValueError("one test unit and one seed: no spread can be estimated")
    out["note"] = "; ".join(notes) or None
    return out


def _terms(result: dict[str, Any]) -> list[tuple[float, float]]:
    """``(variance, degrees of freedom)`` of each term a result's interval holds."""
    if "test_se" not in result or "seed_se" not in result:
        raise ValueError("result has no variance terms; make it with seed_test_interval")
    pairs = ((result["test_se"], result["test_df"]), (result["seed_se"], result["seed_df"]))
    return [(float(se) ** 2, float(df)) for se, df in pairs if se is not None]


def _critical(terms: list[tuple[float, float]], alpha: float) -> float:
    """Cochran-Cox critical value: the terms' t quantiles weighted by their variances."""
    total = sum(v for v, _ in terms)
    if total == 0.0:
        return 0.0
    return sum(v * -float(special.stdtrit(df, alpha / 2.0)) for v, df in terms) / total


def interval_at(result: dict[str, Any], level: float) -> list[float]:
    """The interval of a :func:`seed_test_interval` result at another ``level`` (e.g. the
    Bonferroni level of :func:`adjust_family`)."""
    terms = _terms(result)
    half = _critical(terms, 1.0 - level) * float(np.sqrt(sum(v for v, _ in terms)))
    return [result["diff"] - half, result["diff"] + half]


def effective_df(result: dict[str, Any], level: float) -> float:
    """Degrees of freedom whose t quantile equals the result's critical value at ``level``
    (between the terms' own degrees of freedom; a label, the interval uses the terms)."""
    terms = _terms(result)
    low, high = min(df for _, df in terms), max(df for _, df in terms)
    alpha = 1.0 - level
    target = _critical(terms, alpha)
    if low == high or target == 0.0:
        return low

    def gap(df: float) -> float:
        return -float(special.stdtrit(df, alpha / 2.0)) - target

    if gap(high) >= 0.0:
        return high
    if gap(low) <= 0.0:
        return low
    return float(optimize.brentq(gap, low, high, xtol=1e-6))


def p_value(result: dict[str, Any]) -> float:
    """Two-sided p of "no difference" for a :func:`seed_test_interval` result: the smallest
    ``alpha`` whose interval at level ``1 − alpha`` excludes 0 (so the interval at ``level``
    excludes 0 exactly when ``p < 1 − level``). With one term this is the t test of
    ``diff / se`` with that term's degrees of freedom."""
    terms = _terms(result)
    se = float(np.sqrt(sum(v for v, _ in terms)))
    if se == 0.0:
        return 0.0 if result["diff"] != 0.0 else 1.0
    t = abs(result["diff"]) / se
    if t == 0.0:
        return 1.0
    live = [(v, df) for v, df in terms if v > 0.0]
    if len(live) == 1:
        return float(2.0 * special.stdtr(live[0][1], -t))

    def gap(log_alpha: float) -> float:
        return _critical(live, 10.0**log_alpha) - t

    # scipy's t quantile loses its sign far out in the tail (stdtrit(11, 5e-301) = +inf), so
    # the search stops at alpha = 1e-15: a smaller p is reported as 0.
    if gap(-15.0) <= 0.0:
        return 0.0
    return float(10.0 ** optimize.brentq(gap, -15.0, 0.0, xtol=1e-10))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm (1979) step-down adjusted p-values, in the input's order: the ``j``-th smallest
    (from 1) is ``max over i <= j of (m − i + 1)·p_(i)``, capped at 1 (monotone in ``p``)."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return []
    if np.any(~np.isfinite(p)) or np.any((p < 0.0) | (p > 1.0)):
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    order = np.argsort(p, kind="stable")
    scaled = (p.size - np.arange(p.size)) * p[order]
    adjusted = np.empty(p.size, dtype=np.float64)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted.tolist()


def adjust_family(
    results: Sequence[dict[str, Any]], primary_index: int | None, level: float = 0.95
) -> list[dict[str, Any]]:
    """Multiplicity adjustment of a family of :func:`seed_test_interval` results.

    The primary comparison (``primary_index``; None: there is none) is tested at ``level``
    unadjusted. The ``m`` others get Holm-adjusted p-values (``p_holm``) and Bonferroni
    intervals at level ``1 − (1 − level)/m`` (``ci_adjusted``; module docstring: why).
    Returns copies of the results with ``p``, ``p_holm`` (None for the primary),
    ``ci_adjusted``, ``level_adjusted`` and ``adjustment`` added.
    """
    if primary_index is not None and not 0 <= primary_index < len(results):
        raise ValueError(f"primary_index {primary_index} is not one of {len(results)} results")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    ps = [p_value(r) for r in results]
    others = [i for i in range(len(results)) if i != primary_index]
    m = len(others)
    holm_of = dict(zip(others, holm([ps[i] for i in others])))
    out = []
    for i, result in enumerate(results):
        if i == primary_index:
            fields = {"p_holm": None, "level_adjusted": level, "adjustment": "primary, unadjusted"}
        else:
            fields = {
                "p_holm": holm_of[i],
                "level_adjusted": 1.0 - (1.0 - level) / m,
                "adjustment": f"Holm over {m} comparison{'s' * (m != 1)}; Bonferroni interval",
            }
        fields["ci_adjusted"] = interval_at(result, fields["level_adjusted"])
        out.append({**result, "p": ps[i], **fields})
    return out
