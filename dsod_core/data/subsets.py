"""Nested training subsets drawn by source unit (data-efficiency curves).

A fraction of a training split is a set of whole source units (volumes, scenes, images), so
that no unit is split between "in" and "out" and the curve measures more *independent* data,
not more slices of the same volumes. The subsets are nested: one permutation of the units
(from ``seed``) is drawn once and each fraction takes its first ``ceil(f · U)`` units, so the
25% subset lies inside the 50% one and differences along the curve come from added data only.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np


def nested_unit_subsets(
    units: Sequence[Hashable], fractions: Sequence[float], seed: int = 0
) -> dict[float, np.ndarray]:
    """Sample positions (sorted) of each fraction's subset of ``units`` (one unit per sample).

    ``fractions`` in (0, 1]; 1.0 gives every sample. At least one unit is kept per fraction.
    """
    for f in fractions:
        if not (isinstance(f, int | float) and 0.0 < float(f) <= 1.0):
            raise ValueError(f"train fractions must lie in (0, 1], got {f!r}")
    order: dict[Hashable, list[int]] = {}
    for i, unit in enumerate(units):
        order.setdefault(unit, []).append(i)
    names = list(order)
    perm = np.random.default_rng(seed).permutation(len(names))
    out = {}
    for f in fractions:
        take = max(1, math.ceil(float(f) * len(names) - 1e-9))
        chosen = [names[j] for j in perm[:take]]
        out[float(f)] = (
            np.sort(np.concatenate([order[u] for u in chosen]))
            if chosen
            else (np.zeros(0, dtype=np.int64))
        )
    return out
