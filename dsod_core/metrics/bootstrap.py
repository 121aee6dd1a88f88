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
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

Metric = Callable[[np.ndarray], float]


def unit_groups(units: Sequence[Hashable]) -> list[np.ndarray]:
    """Image positions of each unit, units in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for i, unit in enumerate(units):
        groups.setdefault(unit, []).append(i)
    return [np.asarray(v, dtype=np.int64) for v in groups.values()]


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
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    groups = unit_groups(units)
    if not groups:
        raise ValueError("no test images")
    runs_a = [metric_a] if callable(metric_a) else list(metric_a)
    runs_b = [metric_b] if callable(metric_b) else list(metric_b)
    if not runs_a or len(runs_a) != len(runs_b):
        raise ValueError(f"need paired seeds, got {len(runs_a)} and {len(runs_b)} metrics")
    n_seeds = len(runs_a)
    everything = np.concatenate(groups)
    seed_diffs = [float(b(everything) - a(everything)) for a, b in zip(runs_a, runs_b)]
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
