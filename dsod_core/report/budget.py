"""Compute per arm: what each run of the study spent, and test mAP against it.

The budget of a run is counted in **image passes**: optimiser steps x global batch
(``batch_size * accumulate * processes``), recorded by the trainer in ``history.json``
(``budget``) and ``model.pt``. A fine-tuned run is charged its own passes **plus its source
model's** (the paired source seed's: pretraining is compute the fine-tuned arm used and the
scratch arm did not); the compute-matched scratch arm (``init: matched``) was given exactly that
total (rounded up to a whole optimiser step), so "fine-tuned − matched" compares equal compute and
"fine-tuned − scratch" compares equal target-training compute (He et al., "Rethinking ImageNet
Pre-training", 2019, is the field's reference for why the distinction decides the answer).

A source that is an ImageNet checkpoint (params ``checkpoints``, docs/compare_imagenet.md) is
charged the image passes its entry declares (e.g. 90 epochs x 1,281,167 images =
115,305,030); it has no matched arm, so its fine-tuned arm is compared with scratch only and
the report states both budgets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dsod_core.metrics.plots import plot_curves

#: The arms of the study in report order, with their chart style.
ARMS = {"scratch": "-", "matched": "-.", "finetuned": "--", "pretrain": ":"}


def row_budget(detail: dict[str, Any], init: str) -> dict[str, Any]:
    """A run's budget fields from its ``detail.json``: ``image_passes`` (its own),
    ``source_image_passes`` (a fine-tuned run's source model; None otherwise),
    ``total_image_passes`` (what the arm spent in all) and ``source_seed``."""
    own = detail.get("image_passes")
    budget = detail.get("budget") or {}
    source = budget.get("source_image_passes") if init == "finetuned" else None
    total = None
    if own is not None and (init != "finetuned" or source is not None):
        total = int(own) + int(source or 0)
    out = {
        "image_passes": own,
        "source_image_passes": source,
        "total_image_passes": total,
        "global_batch": detail.get("global_batch"),
        "source_seed": budget.get("source_seed"),
    }
    if init == "finetuned" and budget.get("source_kind") == "checkpoint":
        out["source_checkpoint"] = {
            "file": budget.get("source_model"),
            "format": budget.get("source_format"),
            "sha256": budget.get("source_sha256"),
            "note": budget.get("source_note"),
        }
    return out


def budget_curve(history: list[dict[str, Any]], row: dict[str, Any]) -> list[list[float]]:
    """``[[image passes spent so far (source included), validation mAP@0.5], ...]`` of a run
    whose history rows carry ``step`` (empty for an older run)."""
    batch = row.get("global_batch")
    if not batch:
        return []
    offset = row.get("source_image_passes") or 0
    return [
        [offset + int(h["step"]) * int(batch), h["val_map50"]]
        for h in history
        if h.get("val_map50") is not None and h.get("step") is not None
    ]


def mean_budget(runs: list[dict[str, Any]]) -> float | None:
    """Mean total image passes over the seeds of one arm (None when unknown)."""
    vals = [r.get("total_image_passes") for r in runs]
    if not vals or any(v is None for v in vals):
        return None
    return float(np.mean(vals))


def budget_words(contrast: dict[str, Any]) -> str:
    """``fine-tuned 9,408 (source 6,720 + own 2,688) vs matched scratch 9,416 image passes``;
    from an ImageNet checkpoint ``(checkpoint, declared 115,305,030 + own 2,688)``."""
    ft, other = contrast["budget"]["finetuned"], contrast["budget"]["against"]
    src = contrast["budget"].get("finetuned_source")
    checkpoint = contrast["budget"].get("source_kind") == "checkpoint"
    what = "checkpoint, declared" if checkpoint else "source"
    name = "matched scratch" if contrast["against"] == "matched" else "scratch"

    def n(x: float | None) -> str:
        return "?" if x is None else f"{x:,.0f}"

    detail = "" if src is None or ft is None else f" ({what} {n(src)} + own {n(ft - src)})"
    return f"fine-tuned {n(ft)}{detail} vs {name} {n(other)} image passes"


def plot_budget(rows: list[dict[str, Any]], plots: Path, seed: int) -> dict[str, Path]:
    """Per target, ``budget/<dataset>.png``: validation mAP@0.5 against image passes spent
    (source pretraining included) for seed ``seed``'s run of each arm at the largest train
    fraction, so the reader sees where the curves cross; the test mAP@0.5 of each arm (mean
    over seeds) as a marker at its mean budget."""
    written = {}
    full = max((r["train_fraction"] for r in rows), default=None)
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset and r["train_fraction"] == full]
        series = []
        for r in mine:
            if r["seed"] != seed or not r.get("budget_curve"):
                continue
            series.append(
                {
                    "label": f"{arm_label(r)} (val)",
                    "points": r["budget_curve"],
                    "style": ARMS[r["init"]],
                }
            )
        for key in dict.fromkeys((r["init"], r["source"]) for r in mine):
            arm = [r for r in mine if (r["init"], r["source"]) == key]
            x = mean_budget(arm)
            if x is None:
                continue
            series.append(
                {
                    "label": f"{arm_label(arm[0])} (test, mean of {len(arm)})",
                    "points": [(x, float(np.mean([r["map50"] for r in arm])))],
                    "style": "",
                    "marker": "o",
                }
            )
        if series:
            written[dataset] = plot_curves(
                series,
                plots / "budget" / f"{dataset}.png",
                title=f"{dataset}: mAP@0.5 against compute (train fraction {full:g})",
                ylabel="mAP@0.5",
                xlabel="image passes (optimiser steps x global batch, source pretraining included)",
                ylim=(0.0, 1.0),
            )
    return written


def arm_label(row: dict[str, Any]) -> str:
    """A run's name in charts and tables: ``scratch``, ``matched scratch (<source> budget)``,
    ``fine-tuned from <source>`` or ``source model (<dataset>)``."""
    if row["init"] == "pretrain":
        return f"source model ({row['dataset']})"
    if row["init"] == "matched":
        return f"matched scratch ({row['source']} budget)"
    return "scratch" if row["init"] == "scratch" else f"fine-tuned from {row['source']}"
