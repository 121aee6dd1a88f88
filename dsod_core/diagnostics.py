"""Did the run learn anything? One rule, used by training, the evaluate stage and the report.

A collapsed detector answers every image the same way: the same scores at the same places
(an infrared small-target run gave 200 boxes per image, all scored 0.124, on a regular grid),
its mAP@0.5 is about 0 and its training loss hardly moved. :func:`collapse_check` looks for
these three signals and calls the run *collapsed* when

- mAP@0.5 is below :data:`MAP_FLOOR`: after a whole training run the detector finds nothing
  (the other two signals, when present, are listed as what it looks like); or
- mAP@0.5 is not known (training without a validation split) and both other signals are:
  near-constant top scores across images and a loss that did not fall.

Measured on a small-target set whose 4-8 px targets shrank to 1-2 px in the network input
(docs/small_objects.md): mAP@0.5 0.000, top scores 0.244 ± 0.0025 on every image, while the
loss still fell 37 -> 14 (the model learnt to call everything background). The loss alone
therefore does not clear a run; near-zero mAP does not need it. Flat scores alone (a test set
of near-identical images) are not enough. Every signal seen is listed in ``reasons``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: mAP@0.5 below this is "about 0". The demo's weakest run (depth, scratch, half the data,
#: 16 epochs) reaches 0.069; a detector that localises anything at all scores above 0.01,
#: while a collapsed one scores 0.000-0.005 (a few lucky grid boxes).
MAP_FLOOR = 0.01
#: Top scores whose range across images, rank by rank, is below this, or whose best score
#: varies across images with a standard deviation below :data:`SCORE_STD`, are "constant": the
#: output does not depend on the image. Scores of a trained model differ between images by
#: 0.05-0.5; a collapsed one by float rounding (< 1e-5) or by a few thousandths (0.244 ±
#: 0.0025 on the small-target set above).
SCORE_SPREAD = 1e-3
SCORE_STD = 0.005
#: Detections per image compared (the best ones, by score).
TOP_K = 10
#: The loss must fall by at least this share: mean of the last epochs <= (1 - LOSS_FALL) x
#: mean of the first. A learning run falls by 50-80% (the demo: 3-4x); 5.1 -> 5.0 is 2%.
LOSS_FALL = 0.10
#: Share of the epochs averaged at each end of the loss curve (at least one epoch).
LOSS_WINDOW = 0.25


def _last_val_map(history: Sequence[dict[str, Any]]) -> float | None:
    values = [h["val_map50"] for h in history if h.get("val_map50") is not None]
    return float(values[-1]) if values else None


def score_signal(predictions: Sequence[dict[str, Any]] | None) -> dict[str, Any] | None:
    """Spread of the top :data:`TOP_K` scores across images (None: fewer than 2 images).
    ``constant`` when every rank's range across images is below :data:`SCORE_SPREAD`, or
    when no image has a detection."""
    if not predictions or len(predictions) < 2:
        return None
    tops = [np.sort(np.asarray(p["scores"], dtype=np.float64))[::-1] for p in predictions]
    counts = [len(t) for t in tops]
    if max(counts) == 0:
        return {"constant": True, "mean": 0.0, "std": 0.0, "spread": 0.0, "empty": True}
    k = min(TOP_K, min(counts))
    if k == 0:  # some images with detections, some without: the output varies
        first = np.asarray([t[0] if len(t) else 0.0 for t in tops])
        return _spread(first, float(first.max() - first.min()))
    table = np.stack([t[:k] for t in tops])  # images x ranks
    spread = float((table.max(axis=0) - table.min(axis=0)).max())
    return _spread(table[:, 0], spread)


def _spread(first: np.ndarray, spread: float) -> dict[str, Any]:
    return {
        "constant": spread < SCORE_SPREAD or float(first.std()) < SCORE_STD,
        "mean": round(float(first.mean()), 4),
        "std": round(float(first.std()), 4),
        "spread": round(spread, 6),
        "empty": False,
    }


def loss_signal(history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean loss of the first and last epochs (:data:`LOSS_WINDOW`); ``flat`` when it fell
    by less than :data:`LOSS_FALL` (None: fewer than 2 epochs with a finite loss)."""
    losses = [float(h["loss"]) for h in history if h.get("loss") is not None]
    losses = [v for v in losses if math.isfinite(v)]
    if len(losses) < 2:
        return None
    w = max(1, round(len(losses) * LOSS_WINDOW))
    first, last = float(np.mean(losses[:w])), float(np.mean(losses[-w:]))
    return {
        "flat": last > (1.0 - LOSS_FALL) * first,
        "first": round(first, 4),
        "last": round(last, 4),
        "window": w,
    }


def collapse_check(
    history: Sequence[dict[str, Any]],
    predictions: Sequence[dict[str, Any]] | None = None,
    map50: float | None = None,
) -> dict[str, Any]:
    """``{collapsed, reasons, summary, map50, scores, loss}`` of a run: its training
    ``history`` (rows with ``loss``, ``val_map50``), its test ``predictions`` (one dict per
    image with ``scores``; optional) and its mAP@0.5 (default: the last validation one)."""
    if map50 is None:
        map50 = _last_val_map(history)
    scores = score_signal(predictions)
    loss = loss_signal(history)
    low = map50 is not None and map50 < MAP_FLOOR
    constant = bool(scores and scores["constant"])
    flat = bool(loss and loss["flat"])
    reasons = []
    if low:
        reasons.append(f"mAP@0.5 {map50:.3f} < {MAP_FLOOR}")
    if constant:
        reasons.append(
            "no detections on any image"
            if scores["empty"]
            else f"near-constant top scores on every image ({scores['mean']:.3f} ± "
            f"{scores['std']:.4f}; range {scores['spread']:.4f})"
        )
    if flat:
        fell = f"{_num(loss['first'])} -> {_num(loss['last'])}"
        reasons.append(
            f"loss fell by less than {LOSS_FALL:.0%}: {fell} "
            f"(mean of the first / last {loss['window']} epochs)"
        )
    collapsed = low if map50 is not None else (constant and flat)
    return {
        "collapsed": bool(collapsed),
        "reasons": reasons,
        "summary": summary_phrase(map50, scores, loss),
        "map50": None if map50 is None else round(float(map50), 4),
        "scores": scores,
        "loss": loss,
    }


def summary_phrase(
    map50: float | None, scores: dict[str, Any] | None, loss: dict[str, Any] | None
) -> str:
    """``mAP@0.5 0.000, scores constant (0.124 ± 0.000), loss 5.1 -> 5.0``: what was measured
    (the scores part only when they are constant)."""
    parts = []
    if map50 is not None:
        parts.append(f"mAP@0.5 {map50:.3f}")
    if scores and scores["constant"]:
        parts.append(
            "no detections"
            if scores["empty"]
            else f"scores constant ({scores['mean']:.3f} ± {scores['std']:.3f})"
        )
    if loss:
        parts.append(f"loss {_num(loss['first'])} -> {_num(loss['last'])}")
    return ", ".join(parts)


def _num(x: float) -> str:
    """A loss for a sentence: one decimal from 1 up (5.1), three below (0.412)."""
    return f"{x:.1f}" if abs(x) >= 1 else f"{x:.3f}"


def run_diagnostics(
    meta: dict[str, Any], predictions: Sequence[dict[str, Any]], map50: float | None
) -> dict[str, Any]:
    """What the evaluate stage adds to a run's metrics: ``collapsed`` (flat, for the metrics
    file), ``collapse`` (the whole check) and ``stopping`` (how training ended, when the
    weights say)."""
    check = collapse_check(meta.get("history", []), predictions, map50)
    out: dict[str, Any] = {"collapsed": check["collapsed"], "collapse": check}
    if meta.get("stopping") is not None:
        out["stopping"] = meta["stopping"]
    return out
