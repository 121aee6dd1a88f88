"""FROC and the LUNA16 competition performance metric (CPM) for 3D lesion detection.

Hit rule (as LUNA16's ``noduleCADEvaluationLUNA16.py``):

* a predicted lesion *hits* a reference lesion when its centre lies strictly within the
  lesion's radius (Euclidean distance in world mm ``< radius``); for boxes the radius is half
  the lesion's mean diameter, ``(w + h + d) / 6`` (:func:`radii_from_cccwhd`);
* each reference lesion is counted once, with the score of its highest-scoring hit;
* a prediction that hits at least one lesion is never a false positive, even when several
  predictions hit the same lesion (LUNA16 does the same); a prediction may hit several lesions;
* predictions hitting an *ignored* lesion (LUNA16's "irrelevant findings") are neither true
  nor false positives;
* every other prediction is a false positive.

The FROC curve has one operating point per distinct score ``t`` (predictions with score
``>= t`` kept): ``(false positives / scans, detected lesions / lesions)``, starting at
``(0, 0)``. Sensitivity at a rate ``r`` interpolates linearly between the last point with
``fps <= r`` and the first with ``fps > r`` (LUNA16 interpolates the same polyline on a fine
grid); exactly at a point's rate the best sensitivity reached there is taken; beyond the
curve's end the last sensitivity holds. CPM = mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4, 8
FPs per scan.

Written with numpy rather than ``monai.metrics.compute_froc_curve_data``, which (following
CAMELYON16, where missed lesions carry probability 0) drops the lowest score's operating point,
and whose ``np.interp`` over repeated FP rates is undefined for the step points.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LUNA16_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class ScanLesions:
    """Predictions and references of one scan, world mm.

    Attributes:
        pred_centres: float ``[N, 3]``; pred_scores: float ``[N]``.
        lesion_centres: float ``[M, 3]``; lesion_radii: float ``[M]`` (mm).
        ignore_centres / ignore_radii: optional ``[I, 3]`` / ``[I]`` lesions that count neither
            way.
    """

    pred_centres: np.ndarray
    pred_scores: np.ndarray
    lesion_centres: np.ndarray
    lesion_radii: np.ndarray
    ignore_centres: np.ndarray | None = None
    ignore_radii: np.ndarray | None = None


def radii_from_cccwhd(boxes: np.ndarray) -> np.ndarray:
    """Lesion radius (mm) ``[M]`` of cccwhd boxes ``[M, 6]``: half the mean diameter."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    return b[:, 3:].mean(axis=1) / 2.0


def match_scan(scan: ScanLesions) -> tuple[np.ndarray, np.ndarray]:
    """Apply the hit rule to one scan.

    Returns ``(lesion_scores [M], fp_scores [F])``: the best hit score of each reference
    lesion (``-inf`` when missed) and the scores of the false positives.
    """
    pc = np.asarray(scan.pred_centres, dtype=np.float64).reshape(-1, 3)
    ps = np.asarray(scan.pred_scores, dtype=np.float64).reshape(-1)
    lc = np.asarray(scan.lesion_centres, dtype=np.float64).reshape(-1, 3)
    lr = np.asarray(scan.lesion_radii, dtype=np.float64).reshape(-1)
    if len(pc) != len(ps) or len(lc) != len(lr):
        raise ValueError("centres and scores/radii differ in length")
    dist = np.linalg.norm(pc[:, None, :] - lc[None, :, :], axis=2)  # [N, M]
    hits = dist < lr[None, :]
    lesion_scores = np.where(hits, ps[:, None], -np.inf).max(axis=0, initial=-np.inf)
    is_fp = ~hits.any(axis=1)
    if scan.ignore_centres is not None and len(scan.ignore_centres):
        ic = np.asarray(scan.ignore_centres, dtype=np.float64).reshape(-1, 3)
        ir = np.asarray(scan.ignore_radii, dtype=np.float64).reshape(-1)
        idist = np.linalg.norm(pc[:, None, :] - ic[None, :, :], axis=2)
        is_fp &= ~(idist < ir[None, :]).any(axis=1)
    return lesion_scores, ps[is_fp]


def froc_curve(
    lesion_scores: np.ndarray, fp_scores: np.ndarray, num_scans: int
) -> tuple[np.ndarray, np.ndarray]:
    """FROC operating points ``(fps_per_scan [P], sensitivity [P])``, FP rate non-decreasing,
    first point ``(0, 0)``. ``lesion_scores`` ``[M]`` are best hit scores (``-inf`` = missed)."""
    ls = np.asarray(lesion_scores, dtype=np.float64).reshape(-1)
    fs = np.asarray(fp_scores, dtype=np.float64).reshape(-1)
    if num_scans < 1:
        raise ValueError("num_scans must be >= 1")
    thresholds = np.unique(np.concatenate([ls[np.isfinite(ls)], fs]))[::-1]
    fps = [0.0]
    sens = [0.0]
    n_les = max(len(ls), 1)
    for t in thresholds:
        fps.append(float((fs >= t).sum()) / num_scans)
        sens.append(float((ls >= t).sum()) / n_les if len(ls) else 0.0)
    return np.asarray(fps), np.asarray(sens)


def sensitivity_at(fps: np.ndarray, sens: np.ndarray, rates: Sequence[float]) -> np.ndarray:
    """Sensitivity ``[R]`` at each FP rate on the polyline ``(fps, sens)`` (see module doc)."""
    fps = np.asarray(fps, dtype=np.float64)
    sens = np.asarray(sens, dtype=np.float64)
    out = []
    for r in rates:
        below = np.nonzero(fps <= r)[0]
        above = np.nonzero(fps > r)[0]
        a = below[-1]  # fps[0] == 0 <= r always
        if fps[a] == r or not len(above):
            out.append(sens[a])
            continue
        b = above[0]
        f = (r - fps[a]) / (fps[b] - fps[a])
        out.append(sens[a] + f * (sens[b] - sens[a]))
    return np.asarray(out)


def froc(
    scans: Iterable[ScanLesions], fp_rates: Sequence[float] = LUNA16_FP_RATES
) -> dict[str, Any]:
    """FROC over scans. Returns a JSON-serialisable dict: ``fp_rates``, ``sensitivities``
    (at those rates), ``cpm`` (their mean), ``curve_fps``, ``curve_sensitivity``,
    ``num_scans``, ``num_lesions``, ``num_detected`` (lesions hit at any score),
    ``num_false_positives`` (at the lowest threshold)."""
    all_lesion, all_fp = [], []
    num_scans = 0
    for scan in scans:
        ls, fs = match_scan(scan)
        all_lesion.append(ls)
        all_fp.append(fs)
        num_scans += 1
    if num_scans == 0:
        raise ValueError("FROC needs at least one scan")
    ls = np.concatenate(all_lesion) if all_lesion else np.zeros(0)
    fs = np.concatenate(all_fp) if all_fp else np.zeros(0)
    fps, sens = froc_curve(ls, fs, num_scans)
    at = sensitivity_at(fps, sens, fp_rates)
    return {
        "fp_rates": [float(r) for r in fp_rates],
        "sensitivities": at.tolist(),
        "cpm": float(at.mean()),
        "curve_fps": fps.tolist(),
        "curve_sensitivity": sens.tolist(),
        "num_scans": num_scans,
        "num_lesions": int(len(ls)),
        "num_detected": int(np.isfinite(ls).sum()),
        "num_false_positives": int(len(fs)),
    }


def froc_from_datalists(
    predictions: Mapping[str, Any],
    references: Mapping[str, Any],
    key: str = "test",
    label: int | None = None,
    fp_rates: Sequence[float] = LUNA16_FP_RATES,
) -> dict[str, Any]:
    """FROC between two MONAI-style datalists (``{key: [{"image", "box" cccwhd mm, "label",
    "score"}]}``, same world frame in both). Scans are matched by ``image``; every reference
    scan counts (a scan without predictions contributes misses, no FPs). ``label`` restricts
    both sides to one class (as stored in the datalists); ``None`` is class-agnostic."""
    preds = {e["image"]: e for e in predictions.get(key, [])}
    scans = []
    for ref in references.get(key, []):
        rb = np.asarray(ref.get("box", []), dtype=np.float64).reshape(-1, 6)
        rl = np.asarray(ref.get("label", [0] * len(rb)), dtype=np.int64).reshape(-1)
        pe = preds.get(ref["image"], {})
        pb = np.asarray(pe.get("box", []), dtype=np.float64).reshape(-1, 6)
        pl = np.asarray(pe.get("label", [0] * len(pb)), dtype=np.int64).reshape(-1)
        score_key = "score" if "score" in pe else "label_scores"
        ps = np.asarray(pe.get(score_key, [1.0] * len(pb)), dtype=np.float64).reshape(-1)
        if label is not None:
            rb, pb, ps = rb[rl == label], pb[pl == label], ps[pl == label]
        scans.append(ScanLesions(pb[:, :3], ps, rb[:, :3], radii_from_cccwhd(rb)))
    return froc(scans, fp_rates)
