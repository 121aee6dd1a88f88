"""Pictures: precision/recall curve figures (matplotlib Agg, no pyplot global state) and
detections drawn on a modality rendering."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dsod_core.io import write_with

__all__ = ["draw_detections", "plot_comparison", "plot_curves", "plot_pr_curves", "save_picture"]


def plot_pr_curves(
    result: Mapping[str, Any], class_names: Sequence[str], path: str | os.PathLike
) -> Path:
    """Write the per-class PR curves of :func:`evaluate_voc`'s result as a PNG, atomically.

    Args:
        result: ``evaluate_voc`` output (``precision``, ``recall``, ``ap`` lists of K).
        class_names: K names, class c at index c-1.
        path: destination ``.png``; written through a temp file in the same folder.

    Returns:
        The path written. Classes without ground truth (AP NaN) are left out of the plot.
    """
    # Figure + FigureCanvasAgg instead of pyplot: no global backend switch, no figure leak.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    precisions, recalls, aps = result["precision"], result["recall"], result["ap"]
    if not (len(precisions) == len(recalls) == len(aps) == len(class_names)):
        raise ValueError(f"{len(class_names)} class names for {len(aps)} classes in the result")
    fig = Figure(figsize=(7, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, prec, rec, ap in zip(class_names, precisions, recalls, aps):
        if ap is None or math.isnan(ap):
            continue
        rec = np.asarray(rec, dtype=np.float64)
        prec = np.asarray(prec, dtype=np.float64)
        ax.plot(rec, prec, linewidth=1.2, label=f"{name} ({ap:.3f})")
    mean_ap = result.get("map", float("nan"))
    ax.set_title(f"Precision / recall per class, mAP {mean_ap:.4f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize="small", ncol=2 if len(aps) > 10 else 1)
    fig.tight_layout()

    return write_with(path, lambda tmp: fig.savefig(tmp, format="png"))


PICTURE_SCALE = 4


def draw_detections(
    rgb: np.ndarray,
    pred: Mapping[str, np.ndarray],
    truth: Mapping[str, Any],
    class_names: Sequence[str],
    min_score: float = 0.3,
    max_boxes: int = 10,
    scale: int = PICTURE_SCALE,
):
    """A PIL picture of ``rgb`` (uint8 ``[H, W, 3]``) enlarged ``scale`` times, with the true
    boxes (``truth["boxes"]`` ``[N, 4]`` px, ``labels``) in green and the best ``max_boxes``
    predictions scoring at least ``min_score`` in red."""
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    img = Image.fromarray(rgb).resize((w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    for box, lab in zip(truth["boxes"], truth["labels"]):
        draw.rectangle([float(v) * scale for v in box], outline=(0, 255, 0), width=2)
        draw.text((box[0] * scale + 2, box[3] * scale - 12), class_names[lab - 1], fill=(0, 255, 0))
    order = np.argsort(-np.asarray(pred["scores"]), kind="stable")[:max_boxes]
    for i in order:
        box, score, lab = pred["boxes"][i], pred["scores"][i], pred["labels"][i]
        if score < min_score:
            continue
        draw.rectangle([float(v) * scale for v in box], outline=(255, 0, 0), width=2)
        draw.text(
            (box[0] * scale + 2, box[1] * scale + 2),
            f"{class_names[lab - 1]} {score:.2f}",
            fill=(255, 0, 0),
        )
    return img


def save_picture(img, path: str | os.PathLike) -> Path:
    """Save a PIL image as PNG atomically."""
    return write_with(path, lambda tmp: img.save(tmp, format="PNG"))


def plot_comparison(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Bars of test mAP@0.5 / COCO AP per run and validation mAP-vs-epoch curves (``rows`` as
    the compare stage builds them: ``dataset``, ``init``, ``map50``, ``coco_ap``, ``curve``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax_bar, ax_curve = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    labels = [f"{r['dataset']}\n{r['init']}" for r in rows]
    xs = range(len(rows))
    ax_bar.bar([x - 0.2 for x in xs], [r["map50"] or 0 for r in rows], 0.4, label="mAP@0.5")
    ax_bar.bar([x + 0.2 for x in xs], [r["coco_ap"] or 0 for r in rows], 0.4, label="COCO AP")
    ax_bar.set_xticks(list(xs), labels, fontsize=7, rotation=30)
    ax_bar.set_ylim(0, 1)
    ax_bar.set_title("test split")
    ax_bar.legend()
    for r in rows:
        pts = [(e, m) for e, m in r["curve"] if m is not None]
        if pts:
            style = "-" if r["init"] == "scratch" else "--"
            ax_curve.plot(*zip(*pts), style, label=f"{r['dataset']} {r['init']}")
    ax_curve.set_xlabel("epoch")
    ax_curve.set_ylabel("val mAP@0.5")
    ax_curve.set_ylim(0, 1)
    ax_curve.legend(fontsize=7)
    fig.tight_layout()
    return write_with(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_curves(
    series: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
    xlabel: str = "epoch",
) -> Path:
    """Overlaid curves in one chart, written as a PNG atomically.

    ``series``: one mapping per curve with ``label``, ``points`` (``[(x, y), ...]``; points
    whose ``y`` is None are left out, so a curve only joins measured values) and optionally
    ``style`` (a matplotlib format string such as ``"--"``), ``marker`` and ``spread`` (one
    half-width per point, e.g. the std over seeds, drawn as error bars).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for s in series:
        spread = s.get("spread") or [None] * len(s["points"])
        pts = [(x, y, e) for (x, y), e in zip(s["points"], spread) if y is not None]
        if pts:
            xs, ys, es = zip(*pts)
            marker = s.get("marker", "." if len(pts) < 30 else None)
            line = ax.plot(xs, ys, s.get("style", "-"), marker=marker, label=s["label"])
            if s.get("spread"):
                err = [0.0 if e is None else e for e in es]
                ax.errorbar(xs, ys, yerr=err, fmt="none", capsize=3, color=line[0].get_color())
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
