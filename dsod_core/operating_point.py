"""The operating point of a trained model: one score threshold chosen on the validation split.

``model.pt`` scores every detection; which of them count as objects is a threshold, and
the right one depends on the model and the data (a detector of 5-px targets may never score
an object above 0.3, a well-trained one keeps fragments below it). At the end of training the
train stage runs the final model on the validation split, matches its detections to the
ground truth with the project's VOC rules at IoU 0.5
(:func:`dsod_core.metrics.scoring.voc_matches`: the same matcher as the evaluate stage) and
picks the threshold by ``evaluate.operating_point``:

* ``rule: f1`` (default): the highest F1 = 2·TP / (2·TP + FP + ground truths);
* ``rule: precision, target: p``: the highest recall among thresholds with precision >= p;
* ``rule: recall, target: r``: the highest precision among thresholds with recall >= r.

Ties go to the higher threshold (fewer boxes). A target no threshold reaches falls back to
the best F1 (``reached: false``); a model with no true positive on the validation split gets
no threshold (``threshold: null``: it learnt nothing a threshold could rescue).

One threshold covers all classes, as ``dsod detect`` applies one. The chosen value lies
half way between the score of the last detection kept and the next lower score, so a backend
whose scores differ in the last digits (ONNX, OpenVINO) keeps the same boxes. The record is
stored in ``model.pt`` under ``operating_point`` (JSON-able values, loaded with
``weights_only=True``); :func:`stored_threshold` is how :class:`dsod_core.inference.Predictor`
reads it. DVC: ``model.pt`` is the train stage's output, so only that stage writes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from dsod_core.params import Params, param

# The threshold `dsod detect` applies to a model that stores none.
DEFAULT_SCORE_THRESHOLD = 0.3
KEY = "operating_point"


@dataclass(frozen=True)
class OperatingPointParams(Params):
    """``evaluate.operating_point``: how the stored score threshold is chosen on val."""

    section: ClassVar[str] = "evaluate.operating_point"

    rule: Literal["f1", "precision", "recall"] = param(
        "f1", "best F1, or the best recall/precision at a precision/recall target"
    )
    target: float | None = param(
        None, "the precision or recall to reach (rule precision/recall only)", min=0, max=1
    )

    def check(self) -> None:
        if self.rule == "f1" and self.target is not None:
            self.fail("target", "applies to rule precision or recall, not f1")
        if self.rule != "f1" and self.target is None:
            self.fail("target", f"is required with rule {self.rule} (e.g. 0.9)")


def ranked_scores(predictions: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The detection scores in the ranked order of ``match_detections`` (by class, then score
    descending, stable over images and boxes), aligned with its ``tp``/``fp`` flags."""
    scores = [np.asarray(p["scores"], dtype=np.float64).reshape(-1) for p in predictions]
    labels = [np.asarray(p["labels"], dtype=np.int64).reshape(-1) for p in predictions]
    s = np.concatenate(scores) if scores else np.zeros(0)
    lab = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    return s[np.lexsort((-s, lab))]


def curve(scores: Any, tp: Any, fp: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct score ``t`` (descending): TP and FP counts among detections scoring
    ``>= t`` (a greedy match in score order gives each detection the same flag whatever the
    threshold, so these are prefix sums). Ignored detections (neither) count as neither."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s = s[order]
    ctp = np.cumsum(np.asarray(tp, dtype=np.int64)[order])
    cfp = np.cumsum(np.asarray(fp, dtype=np.int64)[order])
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)
    return s[last], ctp[last], cfp[last]


def _best(values: np.ndarray, allowed: np.ndarray) -> int:
    """Index of the largest allowed value, the first (highest threshold) on ties."""
    return int(np.argmax(np.where(allowed, values, -np.inf)))


def pick(
    scores: Any, tp: Any, fp: Any, num_gt: int, rule: str = "f1", target: float | None = None
) -> dict[str, Any]:
    """The operating point of matched detections (module docstring): ``threshold`` (None
    when no detection is a true positive), ``rule``, ``target``, ``reached``, the
    ``precision``/``recall``/``f1``/``tp``/``fp`` it gives, ``ground_truths``, ``detections``."""
    s, ctp, cfp = curve(scores, tp, fp)
    record: dict[str, Any] = {"rule": rule, "target": target, "ground_truths": int(num_gt)}
    record["detections"] = int(len(np.asarray(scores).reshape(-1)))
    if num_gt <= 0 or not len(s) or ctp[-1] == 0:
        why = "no ground truth" if num_gt <= 0 else "no true positive"
        return {**record, "threshold": None, "reached": False, "note": f"{why} on the split"}
    kept = ctp + cfp
    precision = np.where(kept > 0, ctp / np.maximum(kept, 1), 0.0)
    recall = ctp / float(num_gt)
    f1 = 2 * ctp / (kept + float(num_gt))
    everywhere = np.ones(len(s), bool)
    i, reached = _best(f1, everywhere), True
    if rule in ("precision", "recall"):
        ok = precision >= target if rule == "precision" else recall >= target
        reached = bool(ok.any())
        if reached:
            i = _best(recall if rule == "precision" else precision, ok)
    # Half way to the next lower score: a backend's last-digit differences keep the same boxes.
    threshold = (s[i] + s[i + 1]) / 2 if i + 1 < len(s) else s[i]
    record.update(
        threshold=float(threshold),
        reached=reached,
        precision=float(precision[i]),
        recall=float(recall[i]),
        f1=float(f1[i]),
        tp=int(ctp[i]),
        fp=int(cfp[i]),
    )
    return record


def from_predictions(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    num_classes: int,
    settings: OperatingPointParams,
) -> dict[str, Any]:
    """The operating point of one split's predictions and targets (as
    :func:`dsod_core.evaluation.predict_split` returns them), matched at IoU 0.5."""
    from dsod_core.metrics.scoring import voc_matches

    matches = voc_matches(targets, predictions, num_classes)
    scores = ranked_scores(predictions)
    if len(scores) != len(matches["tp"]):  # the ranking rule of match_detections changed
        raise AssertionError("ranked scores do not align with the VOC match table")
    num_gt = int(matches["gt_count"].sum())
    record = pick(scores, matches["tp"], matches["fp"], num_gt, settings.rule, settings.target)
    return {**record, "iou": 0.5}


def measured_at(
    meta: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    num_classes: int,
) -> dict[str, Any] | None:
    """The stored operating point of a model (``meta``) and what it gives on another split's
    predictions (precision, recall, F1, TP, FP at IoU 0.5 among the boxes scoring >= the
    stored threshold): what the evaluate stage reports. None when the model stores none."""
    from dsod_core.metrics.scoring import voc_matches

    record = meta.get(KEY)
    if not isinstance(record, Mapping) or record.get("threshold") is None:
        return None
    matches = voc_matches(targets, predictions, num_classes)
    kept = ranked_scores(predictions) >= float(record["threshold"])
    tp, fp = int(matches["tp"][kept].sum()), int(matches["fp"][kept].sum())
    n = int(matches["gt_count"].sum())
    return {
        "threshold": float(record["threshold"]),
        "chosen": describe(record),
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / n if n else None,
        "f1": 2 * tp / (tp + fp + n) if tp + fp + n else None,
        "tp": tp,
        "fp": fp,
        "ground_truths": n,
    }


def calibrate(
    model_path: str | os.PathLike,
    store: str | os.PathLike,
    settings: OperatingPointParams,
    *,
    split: str = "val",
    post: Mapping[str, Any] | None = None,
    device: str = "auto",
    batch_size: int = 16,
) -> dict[str, Any]:
    """Choose the operating point of ``model_path`` on ``split`` of ``store`` and rewrite the
    file (atomically) with it under ``operating_point``; returns the record. ``post``: the
    postprocess keywords of the predictions (default: keep every box scoring >= 0.01, 200 per
    image, NMS 0.45; the threshold is picked among these). A split with no image stores
    ``threshold: null`` with a note."""
    from dsod_core.data.store import StoreReader
    from dsod_core.engine.checkpoint import save_atomic
    from dsod_core.engine.evaluator import select_device
    from dsod_core.engine.weights import load_trained_model, load_weights
    from dsod_core.evaluation import frame_level, predict_split

    reader = StoreReader(store)
    post = dict(post or {"score_threshold": 0.01, "nms_iou": 0.45, "max_detections": 200})
    if not len(reader.split_indices(split)):
        record = {"threshold": None, "rule": settings.rule, "target": settings.target}
        record.update(reached=False, note=f"no {split} images in the store")
    else:
        dev = select_device(device, "train.device")
        model, meta = load_trained_model(model_path, dev)
        predictions, targets = predict_split(model, meta, reader, split, post, dev, batch_size)
        # A tiled store: whole frames, the tiles' detections merged (what detect outputs).
        frames = frame_level(predictions, targets, reader, split, int(post["max_detections"]))
        predictions, targets = frames or (predictions, targets)
        record = from_predictions(predictions, targets, len(reader.class_names), settings)
    record.update(split=split, least_score=float(post["score_threshold"]))
    weights = load_weights(model_path)
    weights[KEY] = record
    save_atomic(weights, Path(model_path))
    return record


def calibrate_run(
    model_path: str | os.PathLike,
    store: str | os.PathLike,
    split: str,
    evaluate: Mapping[str, Any],
    device: str = "auto",
) -> dict[str, Any]:
    """:func:`calibrate` with the ``evaluate`` params section (as the stages read it:
    ``operating_point``, and the ``score_threshold``/``nms_iou``/``max_detections``/
    ``batch_size`` the evaluate stage predicts with, so both see the same boxes)."""
    settings = evaluate.get("operating_point") or OperatingPointParams()
    post = {"score_threshold": 0.01, "nms_iou": 0.45, "max_detections": 200}
    post.update({k: evaluate[k] for k in post if k in evaluate})
    batch = int(evaluate.get("batch_size", 16))
    return calibrate(
        model_path, store, settings, split=split, post=post, device=device, batch_size=batch
    )


def describe(record: Mapping[str, Any]) -> str:
    """How a stored operating point was chosen, in words (``best F1 on val: P 0.81 R 0.74``)."""
    split = record.get("split", "val")
    rule = record.get("rule", "f1")
    how = "best F1" if rule == "f1" else f"{rule} >= {record.get('target')}"
    if rule != "f1" and not record.get("reached", True):
        how = f"best F1 ({rule} {record.get('target')} not reached)"
    p, r = record.get("precision"), record.get("recall")
    shown = f": P {p:.2f} R {r:.2f}" if p is not None and r is not None else ""
    return f"{how} on {split}{shown}"


def threshold_words(record: Mapping[str, Any]) -> str:
    """One phrase for a stored record (``score threshold 0.41, best F1 on val: ...``)."""
    if record.get("threshold") is None:
        return f"no score threshold stored ({record.get('note', 'none chosen')})"
    return f"score threshold {record['threshold']:.4g}, {describe(record)}"


def stored_threshold(
    meta: Mapping[str, Any], fallback: float = DEFAULT_SCORE_THRESHOLD
) -> tuple[float, str, str]:
    """``(threshold, source, note)`` a model's meta gives: ``source`` ``"model"`` with the note
    saying how it was chosen, or ``"default"`` (``fallback``) with the note saying why."""
    record = meta.get(KEY)
    if not isinstance(record, Mapping):
        return fallback, "default", "the model stores no operating point (trained before it)"
    if record.get("threshold") is None:
        why = record.get("note") or "none was chosen"
        return fallback, "default", f"the model stores no threshold ({why})"
    return float(record["threshold"]), "model", describe(record)
